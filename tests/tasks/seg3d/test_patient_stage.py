"""Stage ``patient`` (type 2): the seed's loss l1 + l2 / 2 and the study items."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spinelab.tasks.cervical.seg3d.patient_stage import PatientDataset, patient_loss
from spinelab.tasks.cervical.seg3d.vertebra_stage import weighted_bce
from tests.tasks.seg3d.test_vertebra_stage import _index


def test_loss_is_l1_plus_half_l2_over_the_found_vertebrae() -> None:
    torch.manual_seed(0)
    outputs = {"vertebra": torch.randn(2, 7), "overall": torch.randn(2)}
    target = (torch.rand(2, 8) > 0.5).float()
    found = torch.ones(2, 7, dtype=torch.bool)
    found[1, 3] = False
    terms = patient_loss(outputs, target, found)
    l1 = weighted_bce(outputs["vertebra"], target[:, :7], 1.0, 2.0, keep=found)
    l2 = weighted_bce(outputs["overall"], target[:, 7], 7.0, 14.0)
    assert float(terms["loss"]) == pytest.approx(float(l1 + l2 / 2))
    changed = {**outputs, "vertebra": outputs["vertebra"].clone()}
    changed["vertebra"][1, 3] = 50.0  # a vertebra not found does not count
    assert float(patient_loss(changed, target, found)["loss"]) == pytest.approx(float(terms["loss"]))


def test_items_are_whole_studies_with_the_found_mask(tmp_path) -> None:
    crops = _index(tmp_path, [[True, False, True, True, True, True, True]])
    studies = SimpleNamespace(targets=lambda uid: np.arange(8, dtype=np.float32) / 10)
    item = PatientDataset(studies, crops, ["s0"], train=False)[0]
    assert item["image"].shape == (7, 3, 4, 8, 8)
    assert item["mask"].tolist() == [True, False, True, True, True, True, True]
    assert item["target"].shape == (8,) and item["uid"] == "s0"
