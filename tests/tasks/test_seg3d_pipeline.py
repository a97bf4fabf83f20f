"""The ``cervical/seg3d`` training path: ``spinelab train`` with ``route: seg3d`` writes the masks on their CT
grids once, trains stage ``seg`` and scores its held-out fold per vertebra."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from spinelab.cli import app

REPO = Path(__file__).resolve().parents[2]


def _fold_with_a_segmented_study(dataset: Path) -> int:
    from spinelab.data.cervical_labels import find_segmentations
    from spinelab.data.folds import make_dataset_folds

    folds = make_dataset_folds(dataset, k=5, seed=42, task="cervical")
    return int(folds[folds.index.isin(find_segmentations(dataset))].iloc[0])


@pytest.mark.slow
def test_the_tiny_recipe_trains_the_seg_stage_through_the_cli(tiny_cervical_dataset: Path, tmp_path: Path) -> None:
    from spinelab.data.cervical_labels import find_segmentations
    from spinelab.io.dicom import read_series
    from spinelab.io.nifti import read_nifti
    from spinelab.tasks.cervical.seg3d.pipeline import write_masks

    fold = _fold_with_a_segmented_study(tiny_cervical_dataset)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "cervical", "-c", str(REPO / "src/spinelab/configs/cervical/seg3d_tiny.yaml"), "-o", str(run),
        "--fold", str(fold), f"data.dataset_dir={tiny_cervical_dataset}", f"data.cache_dir={tmp_path / 'cache'}",
        "seg.train.epochs=1", "trainer.accelerator=cpu"])
    assert result.exit_code == 0, result.output
    assert "route: seg3d" in (run / "config.yaml").read_text()
    # every segmentation once on its CT's stored grid, source labels kept
    segs = find_segmentations(tiny_cervical_dataset)
    masks = run / "derived" / "masks"
    assert sorted(p.name for p in masks.glob("*.nii.gz")) == sorted(f"{u}.nii.gz" for u in segs)
    uid = sorted(segs)[0]
    ct, mask = read_series(tiny_cervical_dataset / "train_images" / uid), read_nifti(masks / f"{uid}.nii.gz")
    assert mask.shape == ct.shape and np.allclose(mask.affine, ct.affine, atol=1e-4)
    assert set(np.unique(mask.array)) >= set(range(1, 8))
    # held-out Dice per vertebra, in the fold's scores and the CV summary
    scores = json.loads((run / f"seg/fold_{fold}/scores.json").read_text())
    assert {"dice_mean", "dice_C1", "dice_C7", "centroid_mm_max"} <= set(scores) and 0 <= scores["dice_mean"] <= 1
    oof = pd.read_csv(run / f"seg/fold_{fold}/oof.csv")
    assert len(oof) >= 1 and {"StudyInstanceUID", "dice_C4", "centroid_mm_C4"} <= set(oof.columns)
    cv = json.loads((run / "seg/cv_scores.json").read_text())
    assert cv["studies"] == len(oof) and cv["dice_mean"] == pytest.approx(np.nanmean(list(cv["dice"].values())))
    for name in ("folds.csv", "prior.json", "targets.json"):
        assert (run / name).is_file()
    # a second setup keeps what is there
    from spinelab.config.load import read_run_config

    assert write_masks(read_run_config(run), progress=False) == {"written": 0, "kept": len(segs), "failed": []}


def test_a_broken_segmentation_is_recorded_and_left_out(tiny_cervical_dataset: Path, tmp_path: Path) -> None:
    import shutil

    from spinelab.config.load import load_config
    from spinelab.tasks.cervical.seg3d.pipeline import write_masks

    data = tmp_path / "data"
    shutil.copytree(tiny_cervical_dataset, data)
    broken = sorted((data / "segmentations").iterdir())[0]
    broken.write_bytes(b"not a nifti")
    cfg = load_config("cervical", [], ["route=seg3d", f"data.dataset_dir={data}",
                                       f"data.derived_dir={tmp_path / 'derived'}"])
    report = write_masks(cfg, progress=False)
    assert report["written"] == len(list((data / "segmentations").iterdir())) - 1
    (failed,) = report["failed"]
    assert failed["study"] == broken.name.removesuffix(".nii") and "not a readable NIfTI" in failed["error"]
    assert json.loads((tmp_path / "derived/masks/failures.json").read_text()) == report["failed"]
