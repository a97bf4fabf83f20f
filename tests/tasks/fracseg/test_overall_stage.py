"""Stage overall on arrays: its input, its dataset, its loss and predictions, and how the route combines it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from spinelab.config.fracseg import FracsegConfig
from spinelab.config.fracseg_post import OverallConfig
from spinelab.io.nifti import write_nifti
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.tasks.cervical.fracseg.overall_stage import (
    OverallDataset,
    OverallStage,
    combine,
    overall_augment,
    overall_input,
)


def test_input_channels_and_size() -> None:
    prob = np.zeros((10, 20, 30), np.float32)
    prob[:, :10] = 1.0
    verts = np.zeros((10, 20, 30), np.uint8)
    verts[5:] = 7
    verts[0, 0, 0] = 8  # T1: not a cervical vertebra
    x = overall_input(prob, verts, (8, 8, 8))
    assert x.shape == (2, 8, 8, 8) and x.dtype == np.float32
    assert x[0, :, :3].min() == pytest.approx(1.0) and x[0, :, 5:].max() == pytest.approx(0.0)
    assert set(np.unique(x[1]).round(6)) == {0.0, 1.0}  # labels / 7, nearest: no blend between vertebrae
    assert x[1, 0, 0, 0] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        overall_input(prob, verts[:5], (8, 8, 8))


def test_dataset_flips_and_targets(tmp_path) -> None:
    prob = np.zeros((6, 6, 6), np.float32)
    prob[..., :2] = 1.0  # the patient's right third
    verts = np.ones((6, 6, 6), np.uint8)
    write_nifti(Volume(prob, np.eye(4)), tmp_path / "s.nii.gz")
    write_nifti(Volume(verts, np.eye(4), is_label=True), tmp_path / "v.nii.gz")
    labels = pd.DataFrame([{"StudyInstanceUID": "s", **dict.fromkeys(CERVICAL_TARGETS, 0), "C2": 1,
                            "patient_overall": 1}]).set_index("StudyInstanceUID")
    pairs = {"s": (tmp_path / "s.nii.gz", tmp_path / "v.nii.gz")}
    plain = OverallDataset(pairs, labels, (6, 6, 6))[0]
    only_flip = OverallConfig(size=(6, 6, 6), flip_prob=1.0, affine_prob=0.0, shift_frac=0.0)
    flipped = OverallDataset(pairs, labels, (6, 6, 6), augment=overall_augment(only_flip), seed=1)[0]
    assert plain["image"][0, ..., 0].min() == 1.0 and flipped["image"][0, ..., -1].min() == 1.0
    assert plain["target"].tolist() == [0, 1, 0, 0, 0, 0, 0, 1]  # CERVICAL_TARGETS order: C1..C7, overall



def _pairs(tmp_path, size: int = 16) -> tuple[dict, pd.DataFrame]:
    prob = np.zeros((size,) * 3, np.float32)
    prob[4:12, 4:12, 4:8] = 0.8
    verts = np.zeros((size,) * 3, np.uint8)
    for k in range(1, 8):
        verts[2 * k - 1: 2 * k + 1, 3:13, 3:13] = k
    write_nifti(Volume(prob, np.eye(4)), tmp_path / "s.nii.gz")
    write_nifti(Volume(verts, np.eye(4), is_label=True), tmp_path / "v.nii.gz")
    labels = pd.DataFrame([{"StudyInstanceUID": "s", **dict.fromkeys(CERVICAL_TARGETS, 0)}]).set_index(
        "StudyInstanceUID")
    return {"s": (tmp_path / "s.nii.gz", tmp_path / "v.nii.gz")}, labels


def test_augmentation_moves_the_map_keeps_labels_exact_and_is_seeded(tmp_path) -> None:
    pairs, labels = _pairs(tmp_path)
    sec = OverallConfig(size=(16, 16, 16), affine_prob=1.0, flip_prob=0.0)  # the seed's rotation, scale, shift
    plain = OverallDataset(pairs, labels, sec.size)[0]["image"]
    draws = [OverallDataset(pairs, labels, sec.size, augment=overall_augment(sec), seed=s)[0]["image"]
             for s in (3, 3, 4)]
    assert all(d.shape == (2, 16, 16, 16) and d.dtype == torch.float32 for d in draws)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])  # same seed, same draw
    assert not torch.equal(draws[0], plain)
    for d in draws:  # nearest for the labels: only the 8 values k / 7, never a blend of two vertebrae
        k = d[1] * 7  # the cache holds float16, so k / 7 comes back to within 1e-3
        assert float((k - k.round()).abs().max()) < 0.01 and len(set(k.round().unique().tolist())) > 2
        assert float(d[0].min()) >= 0.0 and float(d[0].max()) <= 0.8 + 1e-5
    assert overall_augment(OverallConfig(flip_prob=0.0, affine_prob=0.0, shift_frac=0.0)) is None


def test_loss_and_predictions() -> None:
    cfg = FracsegConfig.model_validate({"overall": {"vertebrae": True}})
    stage = OverallStage(cfg, "/nonexistent")
    assert stage.model_kwargs() == {"in_chans": 2, "vertebrae": True}
    target = torch.tensor([[0, 1, 0, 0, 0, 0, 0, 1], [0] * 8], dtype=torch.float32)
    batch = {"target": target, "id": ["a", "b"]}
    good = {"overall": torch.tensor([5.0, -5.0]), "vertebra": (target[:, :7] * 10 - 5)}
    bad = {"overall": torch.tensor([-5.0, 5.0]), "vertebra": (5 - target[:, :7] * 10)}
    assert stage.loss(good, batch)["loss"] < 0.05 < stage.loss(bad, batch)["loss"]
    rows = stage.predictions(good, batch)
    assert list(rows.StudyInstanceUID) == ["a", "b"] and rows.loc[0, "patient_overall"] > 0.99
    assert rows.loc[0, "C2"] > 0.99 and rows.loc[0, "true_C2"] == 1
    assert stage.evaluate(rows)["overall_logloss"] < 0.01


def test_combine_prefers_the_classifier_where_it_predicts() -> None:
    rule = pd.DataFrame({t: [0.1, 0.2] for t in CERVICAL_TARGETS}, index=["a", "b"])
    clf = pd.DataFrame({"patient_overall": [0.9]}, index=["b"])
    out = combine(rule, clf)
    assert out.loc["b", "patient_overall"] == 0.9 and out.loc["a", "patient_overall"] == 0.1
    assert (out.loc["b", list(VERTEBRAE)] == 0.2).all()
    assert combine(rule, None).equals(rule)
