"""The masks step: which mask each training study's crops come from, reuse of cached crops, a failing study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spinelab.errors import InputError
from spinelab.tasks.cervical.seg3d import masks
from spinelab.train.run_folder import read_run_config


def _truth_cfg(run: Path):
    cfg = read_run_config(run)
    return cfg.model_copy(update={"crops": cfg.crops.model_copy(update={"masks": "truth"})})


def test_truth_masks_crop_only_the_segmented_studies_all_vertebrae_found(tiny_seg3d_run: Path, tmp_path: Path) -> None:
    cfg = _truth_cfg(tiny_seg3d_run)
    index = json.loads(masks.write_training_crops(cfg, tmp_path, progress=False).read_text())
    segmented = {p.name.removesuffix(".nii.gz") for p in (tiny_seg3d_run / "derived" / "masks").glob("*.nii.gz")}
    assert index["masks"] == "truth" and set(index["studies"]) == segmented and not index["failed"]
    assert all(e["source"] == "truth" and all(e["found"]) for e in index["studies"].values())


def test_cached_crops_are_kept_and_a_failing_study_is_left_out(tiny_seg3d_run: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _truth_cfg(tiny_seg3d_run)
    first = json.loads(masks.write_training_crops(cfg, tmp_path, progress=False).read_text())
    bad = sorted(first["studies"])[0]
    (tmp_path / "crops" / f"{bad}.json").unlink()  # this one is made again, the others are read

    def crop_once(volume, labels, settings):
        raise AssertionError("a cached study was cropped again")

    def unreadable(cfg, uid, volume):
        raise InputError(Path(f"{uid}.nii.gz"), "cannot be read")

    monkeypatch.setattr(masks, "vertebra_crops", crop_once)
    monkeypatch.setattr(masks, "truth_labels", unreadable)
    again = json.loads(masks.write_training_crops(cfg, tmp_path, progress=False).read_text())
    assert set(again["studies"]) == set(first["studies"]) - {bad}
    assert "cannot be read" in again["failed"][bad]
