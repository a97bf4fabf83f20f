"""Stage ``fracture_seg`` and its rounds through ``spinelab.train``: the run folder's files, round 2's labels
(thresholded out-of-fold maps on the vertebrae labelled fractured), a killed round that resumes, a killed label
step that resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spinelab import api
from spinelab.errors import InputError
from spinelab.io.nifti import read_nifti
from spinelab.tasks.cervical.fracseg import fracture_stage
from spinelab.tasks.cervical.fracseg.fracture_stage import (
    FractureSegStage,
    fracture_dice,
    labels_dir,
    oof_maps_dir,
    round_cases,
    write_round_labels,
)
from spinelab.train.run_folder import read_run_config, read_training_log


def test_training_writes_every_round_and_its_held_out_dice(fracseg_run: Path) -> None:
    for stage in ("seg", "fracture_seg", "fracture_seg_r2"):
        assert (fracseg_run / stage / "fold_0" / "model.pt").is_file(), stage
    for stage in ("fracture_seg", "fracture_seg_r2"):
        scores = json.loads((fracseg_run / stage / "cv_scores.json").read_text())
        oof = pd.read_csv(fracseg_run / stage / "oof.csv")
        assert scores["boxed_studies"] == (oof["true_voxels"] > 0).sum() > 0
        assert 0.0 <= scores["dice"] <= 1.0 and scores["dice_error"] == pytest.approx(1 - scores["dice"])
        assert (oof["true_voxels"] == 0).any()  # the negatives are validated too
    # Every round validates on the same held-out studies and box pseudo-masks.
    a, b = (pd.read_csv(fracseg_run / s / "oof.csv") for s in ("fracture_seg", "fracture_seg_r2"))
    assert list(a["StudyInstanceUID"]) == list(b["StudyInstanceUID"])
    assert list(a["true_voxels"]) == list(b["true_voxels"])


def test_round_two_labels_are_thresholded_oof_maps_on_fractured_vertebrae(fracseg_run: Path) -> None:
    cfg = read_run_config(fracseg_run)
    index = json.loads((labels_dir(fracseg_run, 2) / "index.json").read_text())
    labels = pd.read_csv(Path(cfg.data.dataset_dir) / "train.csv").set_index("StudyInstanceUID")
    folds = pd.read_csv(fracseg_run / "folds.csv").set_index("StudyInstanceUID")["fold"]
    assert set(index["studies"]) == set(labels.index[labels["patient_overall"] == 1])
    from_oof = 0
    for uid, rec in index["studies"].items():
        fractured = {k for k in range(1, 8) if labels.loc[uid, f"C{k}"] == 1}
        if folds[uid] == 0:  # held out by the one trained fold: its map is out-of-fold
            assert rec["source"] == "oof" and rec["fold"] == 0
            prob = read_nifti(oof_maps_dir(fracseg_run, 1) / f"{uid}.nii.gz")
            assert prob.array.min() >= 0 and prob.array.max() <= 1
            from_oof += 1
            if rec["status"] == "ok":
                lab = read_nifti(labels_dir(fracseg_run, 2) / f"{uid}.nii.gz", is_label=True)
                assert np.allclose(lab.affine, prob.affine) and lab.shape == prob.shape
                on = lab.array > 0
                assert (prob.array[on] > cfg.threshold).all()
                assert set(np.unique(lab.array[on])) == fractured
            else:
                assert rec["status"] == "dropped" and not set(rec["covered"]) >= fractured
        else:  # its fold's model was not trained: the box pseudo-mask stands in
            assert rec.get("source") in ("boxes", None)
    assert from_oof > 0


def test_a_killed_round_resumes(fracseg_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(fracseg_run, run, ignore=shutil.ignore_patterns("fracture_seg_r2"))
    cfg = read_run_config(run).model_copy(deep=True)  # the prepared data of the run, two epochs
    cfg.fracture_seg.train.epochs = 2
    stage = FractureSegStage(cfg, run, round=2)
    write_round_labels(cfg, run, 2, progress=False)
    train_ids = [u for u, f in pd.read_csv(run / "folds.csv").values if f != 0]
    steps_per_epoch = -(-len(round_cases(cfg, run, 2, train_ids, train=True)) * 2 // 2)
    original, calls = FractureSegStage.loss, {"n": 0}

    def dying(self, outputs, batch):  # noqa: ANN001, ANN202
        calls["n"] += torch.is_grad_enabled()  # training steps only (validation runs without gradients)
        if self.name == "fracture_seg_r2" and calls["n"] == steps_per_epoch + 1:
            raise RuntimeError("simulated kill")
        return original(self, outputs, batch)

    monkeypatch.setattr(FractureSegStage, "loss", dying)
    with pytest.raises(RuntimeError, match="simulated kill"):
        api.train(cfg, run_dir=run, fold="0", stage=stage.name, progress=False)
    fold = run / "fracture_seg_r2" / "fold_0"
    assert not (fold / "model.pt").is_file()
    assert torch.load(fold / "checkpoint_last.ckpt", weights_only=False)["epoch"] == 0  # one epoch finished
    monkeypatch.setattr(FractureSegStage, "loss", original)
    api.train(cfg, run_dir=run, fold="0", stage=stage.name, resume=True, progress=False)
    scores = json.loads((fold / "scores.json").read_text())
    assert scores["epochs"] == 2 and (fold / "model.pt").is_file()
    assert scores["global_step"] == 2 * steps_per_epoch  # the first epoch was not trained again
    log = read_training_log(fold)
    assert log["epoch"].min() == 0 and log["epoch"].max() == 1
    assert not (run / "fracture_seg").joinpath("fold_1").exists()  # round 1 was left as it was


def test_a_killed_label_step_keeps_what_it_wrote(fracseg_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(fracseg_run, run, ignore=shutil.ignore_patterns("fracture_seg_r2"))
    cfg = read_run_config(run)
    from spinelab.tasks.cervical.fracseg import fracture_map

    real, seen = fracture_map.crop_probability, []

    def once(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if seen:
            raise RuntimeError("simulated kill")
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fracture_map, "crop_probability", once)
    with pytest.raises(RuntimeError, match="simulated kill"):
        write_round_labels(cfg, run, 2, progress=False)
    first = json.loads((labels_dir(run, 2) / "index.json").read_text())["studies"]
    assert any(r.get("source") == "oof" for r in first.values())
    monkeypatch.setattr(fracture_map, "crop_probability", real)
    calls = []
    monkeypatch.setattr(fracture_map, "crop_probability", lambda *a, **k: calls.append(1) or real(*a, **k))
    done = write_round_labels(cfg, run, 2, progress=False)["studies"]
    oof_done_before = sum(r.get("source") == "oof" for r in first.values())
    assert len(calls) == sum(r.get("source") == "oof" for r in done.values()) - oof_done_before


def test_round_two_without_cross_validated_round_one_is_refused(fracseg_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "fracture_seg" / "full").mkdir(parents=True)
    shutil.copy(fracseg_run / "fracture_seg" / "fold_0" / "model.pt", run / "fracture_seg" / "full" / "model.pt")
    with pytest.raises(InputError, match="cross-validated folds"):
        write_round_labels(read_run_config(fracseg_run), run, 2, progress=False)


def test_fracture_dice() -> None:
    a = np.zeros((4, 4, 4), dtype=bool)
    b = a.copy()
    assert np.isnan(fracture_dice(a, b))
    a[0, 0, :2], b[0, 0, 1:3] = True, True
    assert fracture_dice(a, b) == pytest.approx(0.5)
    assert fracture_stage.round_metrics(pd.DataFrame({"dice": [0.5, np.nan], "true_voxels": [3, 0],
                                                      "pred_voxels": [2, 4], "voxels": [64, 64]}))[
        "negative_fp_share"] == pytest.approx(4 / 64)


def test_the_dataset_keeps_only_cache_studies_crops(monkeypatch: pytest.MonkeyPatch) -> None:
    from spinelab.config.fracseg import FracsegConfig
    from spinelab.tasks.cervical.fracseg.fracture_stage import FracCase, FractureDataset

    made: list[str] = []

    def fake(case: FracCase, cfg: FracsegConfig) -> dict:
        made.append(case.id)
        return {"image": np.zeros((1, 2, 2, 2), np.float32), "mask": np.zeros((1, 2, 2, 2), np.uint8),
                "vert": np.zeros((1, 2, 2, 2), np.uint8), "spacing": np.ones(3)}

    monkeypatch.setattr(fracture_stage, "case_arrays", fake)
    cfg = FracsegConfig.model_validate({"fracture_seg": {"cache_studies": 2}})
    ds = FractureDataset([FracCase(c, None) for c in "abc"], cfg, train=False)
    for i in (0, 1, 0, 2, 0, 1):
        ds.arrays(i)
    assert made == ["a", "b", "c", "b"]  # "a" stayed (used last before "c"), "b" was dropped for "c"
    assert len(ds._arrays) == 2
