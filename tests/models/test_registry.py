"""The registry: what each builder takes is read from its signature, and a key it does not take is a
ConfigError naming the model and the key."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from spinelab.errors import ConfigError
from spinelab.models import create_model
from spinelab.models.registry import (
    _ARGUMENTS,
    _REGISTRY,
    accepted_args,
    check_model_args,
    model_arguments,
    register_model,
)
from spinelab.models.segmentation import SegUNet


@pytest.fixture
def scratch_registry() -> Any:
    """Builders registered by a test are removed afterwards, so the real registry stays as the zoo made it."""
    model_arguments("test_vertebra_seg3d_unet")  # the zoo is loaded before the snapshot
    registry, arguments = dict(_REGISTRY), dict(_ARGUMENTS)
    yield
    for live, saved in ((_REGISTRY, registry), (_ARGUMENTS, arguments)):
        live.clear()
        live.update(saved)


def test_arguments_come_from_the_builder_and_the_class_it_names() -> None:
    takes = model_arguments("vertebra_seg3d_unet")
    assert {"spatial_dims", "in_chans", "channels", "strides", "n_classes"} <= takes
    assert "backbone" not in takes and "self" not in takes
    # a backbone builder: the class's arguments plus the builder's own checksum argument
    assert {"backbone", "in_chans", "hidden", "pretrained_path", "pretrained_sha256"} <= model_arguments(
        "cervical_slice_localizer")


def test_a_key_the_builder_does_not_take_names_the_model_and_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model 'vertebra_seg3d_unet' takes no argument 'backbone' \(it takes: "):
        create_model("vertebra_seg3d_unet", backbone="resnet18")
    with pytest.raises(ConfigError, match="model 'test_lumbar_roi_grader' takes no argument 'strides'"):
        check_model_args("test_lumbar_roi_grader", {"strides": (2, 2)})
    check_model_args("test_lumbar_roi_grader", {"strides": None, "hidden": 8})  # unset keys are not "set"
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        check_model_args("nope", {})


def test_accepted_args_keep_only_what_the_builder_takes() -> None:
    offered = {"in_chans": 3, "n_points": 5, "overall": "learned"}
    assert accepted_args("test_vertebra_seg3d_unet", offered) == {"in_chans": 3}
    assert accepted_args("test_lumbar_point_heatmap", offered) == {"in_chans": 3, "n_points": 5}


def test_register_model_bare_and_with_takes(scratch_registry: None) -> None:
    @register_model
    def scratch_open(**kwargs: Any) -> nn.Module:
        return nn.Identity()

    @register_model
    def scratch_named(width: int = 2) -> nn.Module:
        return nn.Linear(width, 1)

    @register_model(takes=SegUNet)
    def scratch_unet(**kwargs: Any) -> nn.Module:
        return SegUNet(**kwargs)

    assert model_arguments("scratch_open") is None  # a bare **kwargs takes anything
    check_model_args("scratch_open", {"anything": 1})
    assert model_arguments("scratch_named") == {"width"}
    assert create_model("scratch_named", width=3).in_features == 3
    with pytest.raises(ConfigError, match="'scratch_named' takes no argument 'depth'"):
        create_model("scratch_named", depth=3)
    assert "channels" in model_arguments("scratch_unet")
    with pytest.raises(ValueError, match="registered twice"):
        register_model(scratch_named)
