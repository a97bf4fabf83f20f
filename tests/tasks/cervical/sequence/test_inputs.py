"""How a study becomes the study head's steps: long studies resampled, short ones padded and masked; windows."""

from __future__ import annotations

import numpy as np
import torch

from spinelab.models import create_model
from spinelab.tasks.cervical.sequence.inputs import (
    CURVE_FEATURES,
    fit_steps,
    head_steps,
    study_positions,
    window_starts,
)


def test_a_study_longer_than_max_steps_is_resampled_to_it() -> None:
    emb = np.repeat(np.arange(50, dtype=np.float32)[:, None], 4, axis=1)  # step i holds the value i
    out, mask = fit_steps(emb, 10)
    assert out.shape == (10, 4) and mask.all()
    np.testing.assert_allclose(out[:, 0], np.linspace(0, 49, 10), atol=1e-5)  # evenly spaced, ends kept
    assert out[0, 0] == 0 and out[-1, 0] == 49


def test_a_shorter_study_is_padded_and_masked() -> None:
    emb = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    out, mask = fit_steps(emb, 8)
    assert out.shape == (8, 4) and mask.tolist() == [True] * 3 + [False] * 5
    np.testing.assert_array_equal(out[:3], emb)
    assert (out[3:] == 0).all()


def test_the_study_head_ignores_what_the_mask_leaves_out() -> None:
    torch.manual_seed(0)
    head = create_model("test_sequence_study_head", in_features=4).eval()
    emb, mask = fit_steps(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32), 9)
    x, m = torch.from_numpy(emb)[None], torch.from_numpy(mask)[None]
    noisy = x.clone()
    noisy[:, 5:] = 100.0  # garbage in the padding
    with torch.no_grad():
        a, b = head(x, m), head(noisy, m)
        unmasked = head(noisy, torch.ones_like(m))
    torch.testing.assert_close(a["vertebra"], b["vertebra"])
    torch.testing.assert_close(a["overall"], b["overall"])
    assert float(a["attention"][0, 5:].abs().sum()) == 0.0  # no attention on padded steps
    assert not torch.allclose(unmasked["vertebra"], a["vertebra"])  # the mask is what kept it out


def test_windows_cover_every_slice_and_end_on_the_last() -> None:
    assert window_starts(5, 8, 4) == [0]
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    starts = window_starts(22, 8, 5)
    assert starts == [0, 5, 10, 14] and starts[-1] + 8 == 22
    assert study_positions((3, 12), 2).tolist() == [3, 5, 7, 9, 11]


def test_head_steps_append_the_curves_as_logits() -> None:
    feats = np.ones((4, 3), np.float32)
    fracture = np.array([[0.5] * 7, [0.9] * 7, [0.1] * 7, [0.0] * 7])
    ratio = np.full((4, 7), 0.5)
    steps = head_steps(feats, {"fracture": fracture, "ratio": ratio})
    assert steps.shape == (4, 3 + CURVE_FEATURES) and steps.dtype == np.float32
    np.testing.assert_array_equal(steps[:, :3], feats)
    np.testing.assert_allclose(steps[:3, 3], [0.0, np.log(9), -np.log(9)], atol=1e-5)
    assert np.isfinite(steps).all() and steps[3, 3] < -13  # a zero probability is clipped, not -inf
    np.testing.assert_allclose(steps[:, 10:], 0.0, atol=1e-6)  # ratio logits after the fracture logits
    assert head_steps(feats, None) is not None and head_steps(feats, None).shape == (4, 3)
