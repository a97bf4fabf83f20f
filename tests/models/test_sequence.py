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
