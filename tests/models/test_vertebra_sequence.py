"""The 1st-place type-1 and type-2 classifiers: shapes, what each head sees, the starting rate."""

from __future__ import annotations

import torch

from spinelab.models import create_model


def test_type1_gives_per_slice_and_vertebra_logits_at_the_prior() -> None:
    torch.manual_seed(0)
    model = create_model("test_seg3d_vertebra_sequence", in_chans=6, prior=0.1).eval()
    out = model(torch.rand(3, 15, 6, 32, 32))
    assert out["slice"].shape == (3, 15) and out["vertebra"].shape == (3,)
    assert torch.allclose(model.vertebra_head.bias, torch.logit(torch.tensor([0.1])))


def test_type2_vertebra_head_sees_only_its_vertebra_and_the_patient_head_sees_all() -> None:
    torch.manual_seed(0)
    model = create_model("test_seg3d_patient_sequence", in_chans=6).eval()
    x = torch.rand(1, 7, 4, 6, 32, 32)
    mask = torch.ones(1, 7, dtype=torch.bool)
    with torch.no_grad():
        a = model(x, mask=mask)
        y = x.clone()
        y[0, 3] = torch.rand_like(y[0, 3])
        b = model(y, mask=mask)
    assert a["vertebra"].shape == (1, 7) and a["overall"].shape == (1,)
    changed = (a["vertebra"] - b["vertebra"]).abs()[0] > 1e-6
    assert changed.tolist() == [False, False, False, True, False, False, False]
    assert not torch.allclose(a["overall"], b["overall"])


def test_type2_with_nothing_found_still_gives_a_finite_overall() -> None:
    model = create_model("test_seg3d_patient_sequence", in_chans=6).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 7, 3, 6, 32, 32), mask=torch.zeros(2, 7, dtype=torch.bool))
    assert torch.isfinite(out["overall"]).all()
