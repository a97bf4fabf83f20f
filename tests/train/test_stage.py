"""Stage.build_model: the model section's keys (``model.kwargs`` included) are checked against the builder's
signature, and what the stage offers reaches only builders that take it, so 2D and 3D builders both fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from spinelab.config.load import load_config
from spinelab.errors import ConfigError
from spinelab.models.segmentation import SegUNet
from spinelab.train.stage import Stage

TINY = Path(__file__).resolve().parents[2] / "src/spinelab/configs/lumbar/tiny.yaml"


class OfferingStage(Stage):
    """A stage that offers every model the input channels and a point count, as the lumbar stage 1 does."""

    name = "stage1"

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": 2, "n_points": 4}

    datasets = forward = loss = predictions = None  # not used: only the model is built here


def _stage(tmp_path: Path, *overrides: str) -> OfferingStage:
    return OfferingStage(load_config("lumbar", overrides=list(overrides)), tmp_path)


def test_a_3d_builder_gets_its_kwargs_and_only_the_offered_keys_it_takes(tmp_path: Path) -> None:
    stage = _stage(tmp_path, "stage1.model.name=test_vertebra_seg3d_unet",
                   "stage1.model.kwargs={spatial_dims: 3, channels: [4, 8, 16], strides: [2, 2], n_classes: 3}",
                   "stage1.model.drop_rate=0.2")
    assert stage.model_args() == {"drop_rate": 0.2, "spatial_dims": 3, "channels": [4, 8, 16], "strides": [2, 2],
                                  "n_classes": 3, "in_chans": 2}  # n_points: not a SegUNet argument
    model = stage.build_model()
    assert isinstance(model, SegUNet) and model.n_classes == 3
    assert model.eval()(torch.rand(1, 2, 8, 8, 8))["mask"].shape == (1, 3, 8, 8, 8)


def test_a_2d_builder_in_the_same_stage_gets_the_offered_keys(tmp_path: Path) -> None:
    model = _stage(tmp_path, "stage1.model.name=test_lumbar_point_heatmap", "stage1.model.hidden=8").build_model()
    assert model.eval()(torch.rand(1, 2, 32, 32))["heatmap"].shape == (1, 4, 8, 8)


@pytest.mark.parametrize(("overrides", "match"), [
    (["stage1.model.name=test_vertebra_seg3d_unet", "stage1.model.kwargs={depth: 4}"],
     "model 'test_vertebra_seg3d_unet' takes no argument 'depth'"),
    (["stage1.model.name=test_vertebra_seg3d_unet", "stage1.model.backbone=resnet18"],
     "model 'test_vertebra_seg3d_unet' takes no argument 'backbone'"),
    (["stage1.model.name=test_lumbar_point_heatmap", "stage1.model.kwargs={in_chans: 3}"],
     "model.kwargs.in_chans is set by the stage1 stage"),
])
def test_keys_the_builder_does_not_take_are_refused_before_building(tmp_path: Path, overrides: list[str],
                                                                     match: str) -> None:
    stage = _stage(tmp_path, *overrides)
    with pytest.raises(ConfigError, match=match):
        stage.model_args()
    with pytest.raises(ConfigError, match=match):
        stage.build_model()


def test_kwargs_may_not_repeat_a_named_field_and_round_trip_through_the_run_config(tmp_path: Path) -> None:
    from spinelab.config.load import read_run_config, save_config

    with pytest.raises(ConfigError, match=r"stage1\.model.*set model\.hidden itself, not model\.kwargs\.hidden"):
        load_config("lumbar", [TINY], overrides=["stage1.model.kwargs={hidden: 8}"])
    cfg = load_config("lumbar", [TINY], overrides=["stage1.model.kwargs={channels: [4, 8]}"])
    save_config(cfg, tmp_path / "config.yaml")
    assert read_run_config(tmp_path).stage1.model.kwargs == {"channels": [4, 8]}
    assert load_config("lumbar").stage1.model.kwargs == {}  # recipes without it load as before
