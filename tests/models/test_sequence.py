"""The sequence route's networks: the slice model's CNN and GRU split as inference windows them; the study head."""

from __future__ import annotations

import numpy as np
import torch

from spinelab.models import create_model
from spinelab.tasks.cervical.sequence.inputs import study_embeddings, windowed_outputs


def test_windowing_the_cnn_features_gives_the_model_s_own_outputs() -> None:
    torch.manual_seed(0)
    model = create_model("test_sequence_slice_model").eval()
    x = torch.rand(1, 6, 3, 32, 32)
    with torch.no_grad():
        direct = {k: torch.sigmoid(v)[0].numpy() for k, v in model(x).items()}
    feats = study_embeddings(model, x[0].numpy(), batch=4)  # two chunks
    assert feats.shape == (6, model.num_features)
    one = windowed_outputs(model, feats, length=8, stride=4)  # one window holds the whole study
    for k in ("ratio", "fracture"):
        np.testing.assert_allclose(one[k], direct[k], atol=1e-5)
    # two overlapping windows of 4: the middle slices are the mean of both windows' outputs
    two = windowed_outputs(model, feats, length=4, stride=2)
    with torch.no_grad():
        first = torch.sigmoid(model(x[:, :4])["fracture"])[0].numpy()
        second = torch.sigmoid(model(x[:, 2:])["fracture"])[0].numpy()
    np.testing.assert_allclose(two["fracture"][:2], first[:2], atol=1e-5)
    np.testing.assert_allclose(two["fracture"][2:4], (first[2:] + second[:2]) / 2, atol=1e-5)
    np.testing.assert_allclose(two["fracture"][4:], second[2:], atol=1e-5)


def test_the_study_head_gives_seven_vertebrae_and_the_patient() -> None:
    head = create_model("test_sequence_study_head", in_features=10, prior=0.2).eval()
    with torch.no_grad():
        out = head(torch.zeros(3, 12, 10), torch.ones(3, 12, dtype=torch.bool))
    assert out["vertebra"].shape == (3, 7) and out["overall"].shape == (3,)
    assert out["attention"].shape == (3, 12, 8)
    torch.testing.assert_close(out["attention"].sum(1), torch.ones(3, 8))


def _steps_with_curves(fracture: np.ndarray, in_features: int = 10) -> torch.Tensor:
    """``(1, T, in_features + 14)``: random embeddings, the given fracture logits, zero ratio logits."""
    t = fracture.shape[0]
    emb = np.random.default_rng(1).normal(size=(t, in_features))
    return torch.from_numpy(np.concatenate([emb, fracture, np.zeros((t, 7))], axis=1).astype(np.float32))[None]


def test_a_head_with_curves_starts_from_each_vertebra_s_highest_fracture_logit() -> None:
    torch.manual_seed(0)
    head = create_model("test_sequence_study_head", in_features=10, curve_features=14).eval()
    fracture = np.full((6, 7), -4.0)
    fracture[2, 3] = 1.5  # C4's strongest slice
    fracture[4, 0] = -1.0
    fracture[5, 6] = 9.0  # a padded step: masked out below
    x, mask = _steps_with_curves(fracture), torch.tensor([[True] * 5 + [False]])
    with torch.no_grad():
        out = head(x, mask)
    expected = np.full(7, -4.0)
    expected[3], expected[0] = 1.5, -1.0
    np.testing.assert_allclose(out["vertebra"][0].numpy(), expected, atol=1e-6)
    assert abs(float(out["overall"][0]) - 1.5) < 1e-6  # the highest vertebra
    # the embeddings reach the logits once the attention branch has weights (it starts at zero)
    with torch.no_grad():
        head.weight.normal_()
        moved = head(x, mask)
    assert not torch.allclose(moved["vertebra"], out["vertebra"])


def test_a_head_with_curves_learns_from_the_curves() -> None:
    torch.manual_seed(0)
    head = create_model("test_sequence_study_head", in_features=10, curve_features=14)
    x = _steps_with_curves(np.zeros((6, 7)))
    out = head(x, torch.ones(1, 6, dtype=torch.bool))
    (out["vertebra"].sum() + out["overall"].sum()).backward()
    assert head.evidence_scale.grad is not None and head.weight.grad is not None
    assert float(head.weight.grad.abs().sum()) > 0  # the attention branch gets a gradient from the first step
