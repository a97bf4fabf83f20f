"""Every registered model, 2D and 3D, seed-sized and tiny: forward, backward, and the
forward_features/forward_head contract (no network: tests/models/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spinelab.errors import ConfigError, InputError
from spinelab.models import create_model, list_models
from spinelab.models.backbones import create_backbone
from spinelab.models.registry import accepted_args


def _grader_inputs() -> tuple[tuple, dict]:
    cond = torch.arange(5).repeat_interleave(5).expand(2, -1)
    level = torch.arange(5).repeat(5).expand(2, -1)
    mask = torch.ones(2, 25, 2, dtype=torch.bool)
    mask[1, :, 1] = False  # the second study has no axial view
    return (torch.rand(2, 25, 3, 32, 32), torch.rand(2, 25, 3, 32, 32), mask), {"condition": cond, "level": level}


# Input builders per model family (the name without ``test_``): ``(args, kwargs)`` with
# forward(*args, **kwargs) == forward_head(forward_features(*args), **kwargs).
INPUTS = {
    "cervical_slice_localizer": lambda: ((torch.rand(2, 5, 3, 32, 32), torch.rand(2, 5)), {}),
    "cervical_fracture_classifier": lambda: ((torch.rand(2, 7, 2, 3, 32, 32),),
                                             {"mask": torch.ones(2, 7, dtype=torch.bool)}),
    "cervical_frame_classifier": lambda: ((torch.rand(4, 3, 32, 32),), {}),
    "lumbar_point_heatmap": lambda: ((torch.rand(2, 3, 64, 64),), {}),
    "lumbar_roi_grader": _grader_inputs,
    "vertebra_seg3d_unet": lambda: ((torch.rand(2, 1, 8, 16, 12),), {}),
    "vertebra_seg3d_segresnet": lambda: ((torch.rand(2, 1, 8, 16, 16),), {}),
    "vertebra_seg3d_timm": lambda: ((torch.rand(2, 1, 32, 32, 64),), {}),
    "seg3d_vertebra_sequence": lambda: ((torch.rand(2, 4, 6, 32, 32),), {}),
    "seg3d_patient_sequence": lambda: ((torch.rand(2, 7, 3, 6, 32, 32),),
                                       {"mask": torch.tensor([[True] * 7, [True] * 5 + [False] * 2])}),
    "fracture_dynunet": lambda: ((torch.rand(2, 1, 16, 16, 16),), {}),
    "fracture_overall3d": lambda: ((torch.rand(2, 2, 8, 8, 8),), {}),
    "sequence_slice_model": lambda: ((torch.rand(2, 5, 3, 32, 32),), {}),
    "sequence_study_head": lambda: ((torch.rand(2, 6, 512),),
                                    {"mask": torch.tensor([[True] * 6, [True] * 4 + [False] * 2])}),
}
# Small settings for the seed-sized models (the ``test_*`` ones are small already); each model gets
# the keys it takes.
SMALL = {"backbone": "test_resnet", "hidden": 16, "channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1,
         "init_filters": 8, "decoder_channels": (16, 16, 8, 8), "pools": 2, "features": 8, "deep_levels": 1}


def _family(name: str) -> str:
    return name.removeprefix("test_")


def test_registry_lists_seed_and_test_models() -> None:
    names = list_models()
    assert {"cervical_slice_localizer", "cervical_fracture_classifier", "vertebra_seg3d_unet"} <= set(names)
    assert list_models("test_cervical") == ["test_cervical_fracture_classifier", "test_cervical_frame_classifier",
                                            "test_cervical_slice_localizer"]
    # every seed-sized model has a tiny twin for CPU tests, and every family an input here
    assert {n for n in names if not n.startswith("test_")} == {_family(n) for n in names if n.startswith("test_")}
    assert {_family(n) for n in names} == set(INPUTS)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_feature_head_split(name: str) -> None:
    torch.manual_seed(0)
    small = {} if name.startswith("test_") else accepted_args(name, SMALL)
    model = create_model(name, **small).eval()
    args, kwargs = INPUTS[_family(name)]()
    out = model(*args, **kwargs)
    assert out and all(torch.isfinite(v).all() for v in out.values())
    # forward == forward_head(forward_features) (timm's contract)
    feats = model.forward_features(*args)
    head = model.forward_head(feats, **kwargs)
    assert head.keys() == out.keys()
    for key in out:
        torch.testing.assert_close(head[key], out[key])
    model.train()
    loss = sum(v.float().mean() for v in model(*args, **kwargs).values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_output_shapes() -> None:
    loc = create_model("test_cervical_slice_localizer")(torch.rand(3, 6, 3, 32, 32))
    assert loc["ratio"].shape == (3, 6, 7) and loc["box"].shape == (3, 6, 4) and loc["has_box"].shape == (3, 6)
    assert ((loc["box"] >= 0) & (loc["box"] <= 1)).all()
    frac = create_model("test_cervical_fracture_classifier", overall="noisy_or")(torch.rand(2, 7, 2, 3, 32, 32))
    assert frac["vertebra"].shape == (2, 7) and frac["overall"].shape == (2,)
    # noisy-OR: the patient probability is at least the largest vertebra probability
    p_v, p_o = torch.sigmoid(frac["vertebra"]), torch.sigmoid(frac["overall"])
    assert (p_o >= p_v.max(dim=1).values - 1e-4).all()
    frame = create_model("test_cervical_frame_classifier", prior=0.2).eval()
    step = frame(torch.rand(5, 3, 32, 32))["step"]
    assert step.shape == (5,)
    assert torch.sigmoid(frame.head.bias).item() == pytest.approx(0.2)  # balanced batches start near the prior


def test_unknown_names_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(ConfigError, match="unknown timm backbone"):
        create_backbone("not_a_backbone")


def test_local_checkpoint_loads_and_missing_one_is_named(tmp_path: Path) -> None:
    src = create_backbone("test_resnet", in_chans=3)
    ckpt = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), ckpt)
    # 3-channel weights go into a 6-channel stem (adapted), every other tensor copied exactly
    dst = create_backbone("test_resnet", in_chans=6, pretrained_path=ckpt)
    same = [k for k, v in src.state_dict().items() if v.ndim != 4 and torch.equal(v, dst.state_dict()[k])]
    assert len(same) > 10
    with pytest.raises(InputError, match="missing.pth.*never downloads"):
        create_backbone("test_resnet", pretrained_path=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match="bad.pth"):
        create_backbone("test_resnet", pretrained_path=bad)
