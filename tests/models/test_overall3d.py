"""The post-processing classifier: output shapes, the feature / head split and the registry."""

from __future__ import annotations

import torch

from spinelab.models import create_model
from spinelab.models.overall3d import OverallNet3d


def test_outputs_and_split() -> None:
    model = create_model("test_fracture_overall3d", in_chans=2, vertebrae=True).eval()
    x = torch.rand(3, 2, 12, 16, 8)
    out = model(x)
    assert out["overall"].shape == (3,) and out["vertebra"].shape == (3, 7)
    feats = model.forward_features(x)
    assert feats.shape == (3, model.num_features)
    torch.testing.assert_close(model.forward_head(feats)["overall"], out["overall"])


def test_without_vertebra_head_and_seed_widths() -> None:
    model = create_model("fracture_overall3d", vertebrae=False)
    assert isinstance(model, OverallNet3d) and model.num_features == 128
    assert set(model(torch.rand(1, 2, 16, 16, 16))) == {"overall"}
