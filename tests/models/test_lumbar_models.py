"""Tests for the lumbar architectures: output shapes, masking of absent views, registry names."""

from __future__ import annotations

import pytest
import torch

from spinelab.errors import ConfigError
from spinelab.models import create_model, list_models


def test_lumbar_models_registered() -> None:
    names = list_models("lumbar") + list_models("test_lumbar")
    assert {"lumbar_point_heatmap", "lumbar_roi_grader", "test_lumbar_point_heatmap",
            "test_lumbar_roi_grader"} <= set(names)


def test_point_heatmap_shape() -> None:
    model = create_model("test_lumbar_point_heatmap", in_chans=3, n_points=5, stride=4).eval()
    out = model(torch.rand(2, 3, 64, 64))
    assert out["heatmap"].shape == (2, 5, 16, 16)


def test_point_heatmap_rejects_bad_stride() -> None:
    with pytest.raises(ConfigError, match="stride"):
        create_model("test_lumbar_point_heatmap", stride=3)


def test_roi_grader_shape_and_masked_view() -> None:
    torch.manual_seed(0)
    model = create_model("test_lumbar_roi_grader", in_chans=3).eval()
    sag, axial = torch.rand(2, 25, 3, 32, 32), torch.rand(2, 25, 3, 32, 32)
    mask = torch.ones(2, 25, 2, dtype=torch.bool)
    cond = torch.arange(5).repeat_interleave(5).expand(2, -1)
    level = torch.arange(5).repeat(5).expand(2, -1)
    out = model(sag, axial, mask, cond, level)["logits"]
    assert out.shape == (2, 25, 3)
    mask[..., 1] = False  # the axial view is absent: its pixels must not matter
    a = model(sag, axial, mask, cond, level)["logits"]
    b = model(sag, torch.rand_like(axial), mask, cond, level)["logits"]
    torch.testing.assert_close(a, b)


def test_roi_grader_group_heads_pick_the_condition_group() -> None:
    torch.manual_seed(0)
    model = create_model("test_lumbar_roi_grader", in_chans=3, condition_groups=[1, 2, 1, 2, 0]).eval()
    assert len(model.heads) == 3
    sag = torch.rand(1, 25, 3, 32, 32)
    mask = torch.ones(1, 25, 2, dtype=torch.bool)
    cond = torch.arange(5).repeat_interleave(5)[None]
    level = torch.arange(5).repeat(5)[None]
    out = model(sag, sag, mask, cond, level)["logits"]
    with torch.no_grad():  # zeroing the spinal group's head changes only the spinal rows (condition 4)
        for p in model.heads[0].parameters():
            p.zero_()
    out2 = model(sag, sag, mask, cond, level)["logits"]
    changed = (out - out2).abs().sum(-1)[0] > 0
    assert changed[20:].all() and not changed[:20].any()
    with pytest.raises(ConfigError, match="condition_groups"):
        create_model("test_lumbar_roi_grader", condition_groups=[0, 1])
