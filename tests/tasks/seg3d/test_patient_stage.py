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


def test_painted_vertebrae_leave_the_vertebra_loss_and_the_patient_pooling(tmp_path) -> None:
    from spinelab.tasks.cervical.seg3d.crops import VertebraCrops
    from spinelab.tasks.cervical.seg3d.patient_stage import PatientStage

    crops = _index(tmp_path, [[True, False, True, True, True, True, True]])
    bone = np.full((7, 3, 4, 8, 8), 0.5, np.float32)
    found = np.array([True, False, True, True, True, True, True])
    crops.cache.put("s0", VertebraCrops(bone, found, np.zeros((7, 3), np.int64), np.zeros((7, 4))))
    target = np.array([0, 0, 1, 0, 0, 0, 0, 1], np.float32)
    studies = SimpleNamespace(targets=lambda uid: target)
    item = PatientDataset(studies, crops, ["s0"], train=True, augment=False, fake_prob=1.0)[0]
    # intact and found: painted; C2 not found, C3 fractured: not painted
    assert item["fake"].tolist() == [True, False, False, True, True, True, True]
    assert not PatientDataset(studies, crops, ["s0"], train=False, fake_prob=1.0)[0]["fake"].any()

    stage = PatientStage.__new__(PatientStage)
    seen = {}

    def model(image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        seen["mask"] = mask
        return {"vertebra": torch.zeros(1, 7), "overall": torch.zeros(1)}

    batch = {"image": torch.zeros(1, 7, 3, 4, 8, 8), "mask": torch.from_numpy(found)[None],
             "fake": item["fake"][None], "target": torch.from_numpy(target)[None]}
    stage.forward(model, batch)
    assert seen["mask"][0].tolist() == [False, False, True, False, False, False, False]
    base = stage.loss({"vertebra": torch.zeros(1, 7), "overall": torch.zeros(1)}, batch)
    off = torch.zeros(1, 7)
    off[0, 0] = 9.0  # confidently wrong on the painted C1: not counted
    assert float(stage.loss({"vertebra": off, "overall": torch.zeros(1)}, batch)["loss"]) == pytest.approx(
        float(base["loss"]))


def test_type2_starts_from_the_same_folds_type1_encoder(tmp_path) -> None:
    from spinelab.models import create_model
    from spinelab.tasks.cervical.seg3d.patient_stage import PatientStage

    type1 = create_model("test_seg3d_vertebra_sequence", in_chans=4)
    (tmp_path / "vertebra" / "fold_0").mkdir(parents=True)
    torch.save(type1.state_dict(), tmp_path / "vertebra" / "fold_0" / "model.pt")
    type2 = create_model("test_seg3d_patient_sequence", in_chans=4)
    stage = PatientStage.__new__(PatientStage)
    stage.run_dir = tmp_path
    stage.cfg = SimpleNamespace(patient=SimpleNamespace(init_from_vertebra=True,
                                                         model=SimpleNamespace(pretrained_path=None)))
    stage.initialize(type2, 0)
    for k, v in type1.encoder.state_dict().items():
        assert torch.equal(type2.encoder.state_dict()[k], v), k
    fresh = create_model("test_seg3d_patient_sequence", in_chans=4)
    stage.cfg.patient.init_from_vertebra = False
    before = {k: v.clone() for k, v in fresh.encoder.state_dict().items()}
    stage.initialize(fresh, 0)
    assert all(torch.equal(fresh.encoder.state_dict()[k], v) for k, v in before.items())
