"""The volume segmentation network: 3D and 2D shapes, its feature/head split, argument checks."""

from __future__ import annotations

import pytest
import torch

from spinelab.errors import ConfigError
from spinelab.models import create_model
from spinelab.models.segmentation import SegUNet


def test_3d_unet_keeps_the_volume_shape_and_gives_features_for_a_new_head() -> None:
    torch.manual_seed(0)
    model = create_model("test_vertebra_seg3d_unet", in_chans=2, n_classes=3).eval()
    x = torch.rand(1, 2, 8, 12, 16)
    feats = model.forward_features(x)
    assert feats.shape == (1, model.num_features, 8, 12, 16)
    assert model(x)["mask"].shape == (1, 3, 8, 12, 16)
    assert any(isinstance(m, torch.nn.Conv3d) for m in model.modules())


def test_2d_twin_and_default_classes() -> None:
    model = SegUNet(spatial_dims=2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    assert model(torch.rand(2, 1, 16, 16))["mask"].shape == (2, 8, 16, 16)  # background + C1-C7
    assert not any(isinstance(m, torch.nn.Conv3d) for m in model.modules())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"channels": (4, 8, 16), "strides": (2,)}, "one stride fewer than channels"),
    ({"channels": (4,), "strides": ()}, "at least 2 channels"),
])
def test_bad_shapes_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SegUNet(**kwargs)
