"""The cervical slice models: the fracture classifier's outputs start at the training rates."""

from __future__ import annotations

import pytest
import torch

from spinelab.models import create_model


def _classifier() -> torch.nn.Module:
    return create_model("cervical_fracture_classifier", backbone="resnet18", hidden=16).eval()


def test_set_prior_starts_every_output_at_its_rate() -> None:
    model = _classifier()
    rates = [0.01, 0.2, 0.05, 0.07, 0.1, 0.15, 0.25, 0.5]
    model.set_prior(rates)
    with torch.no_grad():
        model.vertebra_head.weight.zero_()  # leave only the biases: the outputs are then the rates
        model.overall_head.weight.zero_()
        out = model(torch.randn(1, 7, 2, 3, 32, 32))
    got = torch.sigmoid(torch.cat([out["vertebra"][0], out["overall"]])).tolist()
    assert got == pytest.approx(rates, abs=1e-6)


def test_set_prior_clips_a_rate_of_zero_and_wants_eight_rates() -> None:
    model = _classifier()
    model.set_prior([0.0] * 7 + [1.0])
    assert torch.sigmoid(model.vertebra_bias).tolist() == pytest.approx([0.01] * 7, abs=1e-6)
    assert torch.sigmoid(model.overall_head.bias).item() == pytest.approx(0.99, abs=1e-6)
    with pytest.raises(ValueError, match="8 rates"):
        model.set_prior([0.1] * 7)


def test_weights_without_level_offsets_load_with_zero_offsets() -> None:
    model = _classifier()
    model.set_prior([0.3] * 8)
    state = {k: v for k, v in _classifier().state_dict().items() if k != "vertebra_bias"}
    model.load_state_dict(state)
    assert model.vertebra_bias.abs().max().item() == 0.0
