"""Slice-level fracture labels of the 3rd place (step ``labels``): stage-1 ratio x study label, boxes where given.

For every training study, stage 1 (the slice route's localiser) predicts each slice's vertebra ratios, out of
fold for the studies it trained on (the model of the fold that held the study out) and with the ensemble of its
folds for the others, as the seed did. A slice's fracture pseudo-label for vertebra v is its ratio of v times the
study's label of v; where fracture boxes exist (``derived/fracture_boxes.csv``) a slice with a box of v is a
positive of v and the other slices of a fractured vertebra keep the pseudo-label. The stage-1 ranges give the
study's z-range (first to last slice with a vertebra, plus ``labels.z_margin_mm``), which limits the slices the
later stages see.

Written per study to ``RUN/slice_labels/<uid>.npz`` (``ratio``, ``fracture`` ``(D, 7)`` float16 on the canonical
grid, ``z_range``) with ``index.json`` (the key: stage-1 weights and settings); studies done with the same key
are kept, so a killed step resumes (from its last save, every 16 studies). ``localization.json`` holds the stage-1
summaries, as in the slice route.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.io.atomic import atomic_path, atomic_write_json
from spinelab.registry import VERTEBRAE

__all__ = ["pseudo_labels", "z_range", "write_slice_labels", "read_slice_labels", "labels_dir"]

log = logging.getLogger("spinelab")
#: studies between two saves of ``index.json`` and ``localization.json`` (each save rewrites both files whole)
_SAVE_EVERY = 16


def labels_dir(run_dir: str | Path) -> Path:
    """Where the per-study slice labels live."""
    return Path(run_dir) / "slice_labels"


def pseudo_labels(ratio: np.ndarray, labels: np.ndarray, boxes: dict[str, set[int]] | None = None) -> np.ndarray:
    """Per-slice fracture targets ``(D, 7)`` in [0, 1].

    Args:
        ratio: ``(D, 7)`` stage-1 vertebra ratios per slice (canonical grid).
        labels: the study's targets in registry order (C1..C7 first).
        boxes: fracture-box slices per vertebra on the same grid (``canonical_fracture_slices``); the key ``""``
            holds boxes not attributed to a vertebra, given to the fractured vertebra with the highest ratio
            on that slice.
    """
    ratio = np.clip(np.asarray(ratio, dtype=np.float32), 0.0, 1.0)
    lab = (np.asarray(labels[:len(VERTEBRAE)], dtype=np.float32) > 0.5).astype(np.float32)
    out = ratio * lab[None, :]
    depth = ratio.shape[0]
    for j, v in enumerate(VERTEBRAE):
        if lab[j] and boxes and boxes.get(v):
            idx = [d for d in boxes[v] if 0 <= d < depth]
            out[idx, j] = 1.0
    loose = [d for d in (boxes or {}).get("", set()) if 0 <= d < depth]
    if loose and lab.any():
        fractured = np.flatnonzero(lab)
        for d in loose:
            out[d, fractured[int(np.argmax(ratio[d, fractured]))]] = 1.0
    return out


def z_range(summary: dict[str, Any], depth: int, spacing_z: float, margin_mm: float) -> tuple[int, int]:
    """First and last slice (inclusive) of the study's vertebrae (stage-1 ranges) widened by ``margin_mm``."""
    ranges = [r for r in summary["ranges"].values() if r is not None]
    if not ranges:
        return 0, depth - 1
    pad = int(round(margin_mm / max(float(spacing_z), 1e-3)))
    lo = min(r[0] for r in ranges) - pad
    hi = max(r[1] for r in ranges) + pad
    return max(0, int(lo)), min(depth - 1, int(hi))


def _key(cfg: Any, run_dir: Path, folds: list[int | None]) -> str:
    """Stage-1 weights and the settings the labels depend on."""
    from spinelab.train.run_folder import fold_dir, model_sha256

    parts = {"stage1": {str(f): model_sha256(fold_dir(run_dir, "stage1", f) / "model.pt") for f in folds},
             "stage1_cfg": cfg.stage1.model_dump(mode="json", exclude={"train"}),
             "labels": cfg.labels.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def write_slice_labels(cfg: Any, run_dir: Path, context: Any = None, progress: bool = True) -> Path:
    """The ``labels`` step: out-of-fold stage-1 ratios, pseudo-labels and z-ranges of every training study."""
    from spinelab.infer.batch import progress_bar
    from spinelab.infer.runtime import Runtime
    from spinelab.tasks.cervical.localization import LocalizerStage
    from spinelab.tasks.cervical.pipeline import localize_out_of_fold
    from spinelab.tasks.cervical.studies import CervicalStudies, canonical_fracture_slices
    from spinelab.train.run_folder import load_stage_models, trained_folds

    run_dir = Path(run_dir)
    studies = CervicalStudies(cfg)
    s1 = LocalizerStage(cfg, run_dir)
    folds = trained_folds(run_dir, s1.name)
    models = dict(zip(folds, load_stage_models(s1, folds), strict=True))
    key = _key(cfg, run_dir, folds)
    out = labels_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if index.get("key") != key:
        index = {"key": key, "studies": {}}
    loc_path = run_dir / "localization.json"
    loc = json.loads(loc_path.read_text()) if loc_path.is_file() and index["studies"] else {}
    segmented = set(studies.segmented_ids())
    runtime = Runtime(device="auto", precision="fp32", channels_last=False)
    done = 0
    with progress_bar() as bar:
        task = bar.add_task("slice labels (stage 1)", total=len(studies.labels), visible=progress)
        for uid in studies.labels.index:
            if uid in index["studies"] and uid in loc and (out / f"{uid}.npz").is_file():
                bar.advance(task)
                continue
            vol, pred, summary = localize_out_of_fold(studies, uid, models, segmented, runtime)
            boxes = (canonical_fracture_slices(studies.fracture_slices.get(uid), vol)
                     if cfg.labels.use_boxes else None)
            frac = pseudo_labels(pred["ratio"], studies.targets(uid), boxes)
            z0, z1 = z_range(summary, vol.shape[0], vol.spacing[0], cfg.labels.z_margin_mm)
            with atomic_path(out / f"{uid}.npz", suffix=".npz") as tmp, open(tmp, "wb") as fh:
                np.savez(fh, ratio=pred["ratio"].astype(np.float16), fracture=frac.astype(np.float16),
                         z_range=np.array([z0, z1], np.int64))
            loc[uid] = summary
            index["studies"][uid] = {"z_range": [z0, z1], "boxes": bool(boxes), "depth": int(vol.shape[0])}
            done += 1
            if done % _SAVE_EVERY == 0:  # a killed step keeps what it finished (up to the last save)
                atomic_write_json(loc_path, loc)
                atomic_write_json(index_path, index)
            bar.advance(task)
    atomic_write_json(loc_path, loc)
    atomic_write_json(index_path, index)
    return index_path


def read_slice_labels(run_dir: str | Path, uid: str) -> dict[str, np.ndarray]:
    """One study's ``ratio``, ``fracture`` (float32 ``(D, 7)``) and ``z_range`` (2,) from the ``labels`` step.

    Raises:
        InputError: the study has no labels (run the ``labels`` step, i.e. train stage ``slices``).
    """
    from spinelab.errors import InputError

    path = labels_dir(run_dir) / f"{uid}.npz"
    if not path.is_file():
        raise InputError(path, "slice labels not found; train stage1 then the slices stage")
    with np.load(path) as f:
        return {"ratio": f["ratio"].astype(np.float32), "fracture": f["fracture"].astype(np.float32),
                "z_range": f["z_range"].astype(np.int64)}
