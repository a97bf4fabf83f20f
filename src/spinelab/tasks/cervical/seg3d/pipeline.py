"""How the ``cervical/seg3d`` route trains (``TRAINING``, run by ``tasks.route.train_route``): cache, folds and
derived labels as the slice route prepares them, the segmentation masks on their CT grids (``derived/masks``),
then stage ``seg``, the out-of-fold masks and crops of the training studies, the classifier stages ``vertebra``
and ``patient``, and the cross-validated scores (``seg/cv_scores.json``, ``cv_scores.json``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.config.seg3d import Seg3dConfig
from spinelab.errors import InputError, SpinelabError
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.tasks.route import Step, Training

__all__ = ["TRAINING", "write_masks", "write_seg_scores", "seg_stages", "write_crops", "frames_stages",
           "vertebra_stages", "patient_stages"]

log = logging.getLogger("spinelab")
SEG_SCORES_SCHEMA_VERSION = 1


def write_masks(cfg: Seg3dConfig, *, progress: bool = True) -> dict[str, Any]:
    """Put every ``segmentations/<UID>.nii`` of the dataset on its CT's stored grid by world coordinates and
    write it once as ``<derived>/masks/<UID>.nii.gz`` (source labels kept; the label scheme applies when
    read). Studies already written are skipped; a study whose CT or segmentation cannot be used is recorded
    in ``masks/failures.json`` and left out.

    Returns:
        ``{"written": n, "kept": n, "failed": [{study, error}, ...]}``.
    """
    from spinelab.data.cervical_labels import _seg_on_ct, find_segmentations
    from spinelab.data.prepare import make_writable_folder
    from spinelab.infer.batch import progress_bar
    from spinelab.io.cache import load_series
    from spinelab.io.nifti import write_nifti
    from spinelab.tasks.cervical.seg3d.seg_stage import masks_dir

    segs = find_segmentations(cfg.data.dataset_dir)
    out = masks_dir(cfg)
    failed: list[dict[str, str]] = []
    written = kept = 0
    todo = {u: p for u, p in segs.items() if not (out / f"{u}.nii.gz").is_file()}
    kept = len(segs) - len(todo)
    if todo:
        make_writable_folder(out)
    with progress_bar() as bar:
        task = bar.add_task("segmentation masks", total=len(todo), visible=progress and bool(todo))
        for uid, path in todo.items():
            try:
                ct = load_series(f"train_images/{uid}", dataset_dir=cfg.data.dataset_dir,
                                 cache_dir=cfg.data.cache_dir)
                on_ct, _ = _seg_on_ct(path, ct)
                labels = np.asarray(on_ct.array)
                write_nifti(on_ct.with_array(labels.astype(np.uint8) if labels.max() < 256 else labels,
                                             slice_ids=None), out / f"{uid}.nii.gz")
                written += 1
            except SpinelabError as err:
                failed.append({"study": uid, "error": str(err)})
            bar.advance(task)
    if todo:
        atomic_write_json(out / "failures.json", failed)
    for f in failed:
        log.warning("segmentation of %s left out: %s", f["study"], f["error"])
    return {"written": written, "kept": kept, "failed": failed}


def _setup(cfg: Seg3dConfig, run_dir: Path, progress: bool) -> tuple[Seg3dConfig, None]:
    """Data prepared (as the slice route: cache, folds, derived labels), the masks written; folds.csv,
    targets.json and prior.json (the fallback of a failed study) in the run folder."""
    from spinelab.tasks.cervical.pipeline import prepare_cervical_data, write_cervical_run_files

    cfg = prepare_cervical_data(cfg, run_dir, progress=progress)  # type: ignore[arg-type]
    write_masks(cfg, progress=progress)
    write_cervical_run_files(cfg, run_dir)
    return cfg, None


def write_seg_scores(run_dir: Path) -> dict[str, Any]:
    """Concatenate the ``seg`` folds' held-out rows (``seg/oof.csv``) and write ``seg/cv_scores.json``: mean
    Dice over C1-C7, per-vertebra Dice and centroid distances (mm), per fold."""
    frames = [pd.read_csv(p) for p in sorted((run_dir / "seg").glob("fold_*/oof.csv"))]
    frames = [f for f in frames if len(f)]
    if not frames:
        return {}
    oof = pd.concat(frames, ignore_index=True)
    atomic_write_csv(run_dir / "seg" / "oof.csv", oof)
    names = [f"C{k}" for k in range(1, 8)]
    per = {v: float(oof[f"dice_{v}"].mean()) for v in names}
    dist = oof[[f"centroid_mm_{v}" for v in names]].to_numpy(dtype=float)
    folds = sorted((run_dir / "seg").glob("fold_*/scores.json"))
    scores: dict[str, Any] = {
        "schema_version": SEG_SCORES_SCHEMA_VERSION, "studies": len(oof),
        "dice_mean": float(np.nanmean(list(per.values()))), "dice": per,
        "centroid_mm_mean": {v: float(oof[f"centroid_mm_{v}"].mean()) for v in names},
        "centroid_mm_max": float(np.nanmax(dist)) if np.isfinite(dist).any() else None,
        "folds": {p.parent.name: json.loads(p.read_text()) for p in folds},
    }
    atomic_write_json(run_dir / "seg" / "cv_scores.json", scores)
    return scores


def _finish(cfg: Seg3dConfig, run_dir: Path, context: Any, stage: str, folds: list[int | None],
            progress: bool) -> None:
    if stage in ("all", "seg"):
        write_seg_scores(run_dir)
    if stage in ("all", "vertebra", "patient"):
        from spinelab.tasks.cervical.seg3d.cv_scores import write_seg3d_cv_scores

        write_seg3d_cv_scores(cfg, run_dir)


def seg_stages(cfg: Seg3dConfig, run_dir: Path, context: Any = None) -> list[Any]:
    """The ``seg`` step's stage (imported on use: the stage pulls in MONAI's transforms)."""
    from spinelab.tasks.cervical.seg3d.seg_stage import SegStage

    if not Path(cfg.data.dataset_dir).is_dir():
        raise InputError(cfg.data.dataset_dir, "dataset folder does not exist")
    return [SegStage(cfg, run_dir)]


def write_crops(cfg: Seg3dConfig, run_dir: Path, context: Any = None, progress: bool = True) -> Path:
    """Out-of-fold masks and the crops of every training study (``tasks.cervical.seg3d.masks``)."""
    from spinelab.tasks.cervical.seg3d.masks import write_training_crops

    return write_training_crops(cfg, run_dir, context, progress)


def frames_stages(cfg: Seg3dConfig, run_dir: Path, context: Any = None) -> list[Any]:
    """The optional ``frames`` step's stage: type 1's CNN on balanced single crops (``frames.enabled``)."""
    from spinelab.tasks.cervical.seg3d.frames_stage import CropFrameStage

    return [CropFrameStage(cfg, run_dir)]


def vertebra_stages(cfg: Seg3dConfig, run_dir: Path, context: Any = None) -> list[Any]:
    """The ``vertebra`` step's stage (type 1)."""
    from spinelab.tasks.cervical.seg3d.vertebra_stage import VertebraStage

    return [VertebraStage(cfg, run_dir)]


def patient_stages(cfg: Seg3dConfig, run_dir: Path, context: Any = None) -> list[Any]:
    """The ``patient`` step's stage (type 2)."""
    from spinelab.tasks.cervical.seg3d.patient_stage import PatientStage

    return [PatientStage(cfg, run_dir)]


#: Stage ``seg``; the out-of-fold masks and crops of every training study (for the classifiers); the optional
#: frame pre-training of type 1's CNN on single crops (``frames``); the 1st place's type 1 (``vertebra``) and
#: type 2 (``patient``); then the segmentation and classifier CV scores.
TRAINING = Training(
    setup=_setup,
    steps=(
        Step("seg", stages=seg_stages),
        Step("masks", run=write_crops, needed_by=("frames", "vertebra", "patient")),
        Step("frames", stages=frames_stages, optional=lambda cfg: cfg.frames.enabled),
        Step("vertebra", stages=vertebra_stages),
        Step("patient", stages=patient_stages),
    ),
    finish=_finish,
)
