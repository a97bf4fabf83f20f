"""Box pseudo-masks of the fracture segmentation (``spinelab labels cervical DATASET --fracture-masks``).

The organisers gave boxes on some slices of some studies, not masks. For each boxed study: the canonical CT
is cropped to its C1-C7 box plus ``grid.margin_mm`` and put on the route's grid (``crop.crop_grid``); each box of
``derived/fracture_boxes.csv`` (``spinelab labels cervical``: the box on its slice's array index) is painted on
its slice of the canonical grid and moved onto the crop by world position, keeping every crop voxel that covers
it (``CropGrid.labels(pool="max")``: a box one slice thick stays one crop slice thick on a coarser grid); the
result is intersected with the vertebra mask dilated by ``pseudo.dilate_mm``. Each voxel carries the number of
its nearest vertebra (1..7 = C1..C7); with ``pseudo.fractured_only`` only vertebrae labelled fractured in
train.csv keep voxels (a box often grazes a neighbour).

Written to ``<derived>/fracture_masks/<UID>.nii.gz`` (uint8, on the crop grid, with its affine) with
``index.json``: per study its status, ``ok`` when every vertebra labelled fractured got voxels (only those
studies enter the voxel loss), ``incomplete`` (a fractured vertebra without a box: the study keeps its study
labels but stays out of the voxel loss), ``no_vertebra_mask`` or ``failed`` (with the error). The vertebra mask
is the RSNA segmentation on its CT grid (``derived/masks``, written by seg3d's ``write_masks``), else a label map
from ``pseudo.vertebra_masks`` (e.g. ``spinelab segment`` output), else the route's own segmentation of the study
(``derived/segmented_masks``, ``segmented_masks.segment_missing_vertebrae``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.config.fracseg import FracsegConfig, PseudoMaskConfig
from spinelab.errors import InputError, SpinelabError
from spinelab.io.atomic import atomic_write_json
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.fracseg.crop import N_CERVICAL, CropGrid, crop_grid

__all__ = ["PSEUDO_SCHEMA_VERSION", "fracture_masks_dir", "segmented_masks_dir", "vertebra_mask_path",
           "study_vertebrae", "box_volume", "nearest_vertebra", "pseudo_mask", "write_fracture_masks",
           "read_mask_index", "usable_studies", "fractured_vertebrae", "derive_fracture_masks"]

log = logging.getLogger("spinelab")
PSEUDO_SCHEMA_VERSION = 1
_PIXEL_BOX = ["x0", "y0", "x1", "y1"]


def fracture_masks_dir(cfg: FracsegConfig) -> Path:
    """``<derived>/fracture_masks``."""
    derived = cfg.data.derived_dir or Path(cfg.data.dataset_dir) / "derived"
    return Path(derived) / "fracture_masks"


def segmented_masks_dir(cfg: FracsegConfig) -> Path:
    """``<derived>/segmented_masks``: vertebra masks a trained ``seg`` stage made for boxed studies without one."""
    return fracture_masks_dir(cfg).parent / "segmented_masks"


def vertebra_mask_path(cfg: FracsegConfig, uid: str) -> Path | None:
    """The study's vertebra label map: ``derived/masks/<UID>.nii.gz``, else the first of
    ``pseudo.vertebra_masks`` holding ``<UID>.nii.gz`` or ``<UID>/vertebrae.nii.gz``, else
    ``derived/segmented_masks/<UID>.nii.gz``; ``None`` when none has it."""
    from spinelab.tasks.cervical.seg3d.seg_stage import masks_dir

    folders = [masks_dir(cfg), *map(Path, cfg.pseudo.vertebra_masks),  # type: ignore[arg-type]
               segmented_masks_dir(cfg)]
    for folder in folders:
        for path in (folder / f"{uid}.nii.gz", folder / uid / "vertebrae.nii.gz"):
            if path.is_file():
                return path
    return None


def study_vertebrae(path: Path, volume: Volume) -> np.ndarray:
    """The vertebra labels of ``path`` on ``volume``'s grid (by world coordinates; exact on the same lattice)."""
    from spinelab.io.geometry import resample_to
    from spinelab.io.nifti import read_nifti

    labels = read_nifti(path, is_label=True)
    return np.asarray(resample_to(labels, volume, order=0).array)


def fractured_vertebrae(labels: pd.Series) -> set[int]:
    """Vertebra numbers (1..7) labelled fractured in a train.csv row."""
    return {k + 1 for k, v in enumerate(VERTEBRAE) if float(labels.get(v, 0)) > 0.5}


def box_volume(rows: pd.DataFrame, shape: tuple[int, int, int]) -> np.ndarray:
    """Boxes (``index``, pixel ``x0 .. y1`` on a grid of ``shape``) painted on their slices, uint8 0/1: every
    pixel a box touches."""
    out = np.zeros(shape, dtype=np.uint8)
    for rec in rows.itertuples(index=False):
        d = int(rec.index)
        if not 0 <= d < shape[0]:
            continue
        c0, r0 = max(int(np.floor(rec.x0)), 0), max(int(np.floor(rec.y0)), 0)
        c1, r1 = min(int(np.ceil(rec.x1)), shape[2]), min(int(np.ceil(rec.y1)), shape[1])
        if c1 > c0 and r1 > r0:
            out[d, r0:r1, c0:c1] = 1
    return out


def nearest_vertebra(vertebrae: np.ndarray, spacing: tuple[float, float, float], dilate_mm: float
                     ) -> np.ndarray:
    """C1-C7 labels grown by ``dilate_mm`` (each voxel takes its nearest vertebra's number; 0 farther away)."""
    from scipy import ndimage

    cervical = np.where((vertebrae >= 1) & (vertebrae <= N_CERVICAL), vertebrae, 0).astype(np.uint8)
    if dilate_mm <= 0 or not cervical.any():
        return cervical
    dist, nearest = ndimage.distance_transform_edt(cervical == 0, sampling=spacing, return_indices=True)
    grown = cervical[tuple(nearest)]
    grown[dist > dilate_mm] = 0
    return grown


def pseudo_mask(volume: Volume, vertebrae: np.ndarray, boxes: pd.DataFrame, fractured: set[int],
                cfg: FracsegConfig) -> tuple[CropGrid, np.ndarray]:
    """One study's pseudo-mask on its crop.

    Args:
        volume: the canonical CT.
        vertebrae: its vertebra labels on ``volume``'s grid.
        boxes: its ``fracture_boxes.csv`` rows already on ``volume``'s grid (``canonical_label_rows``).
        fractured: the vertebrae labelled fractured (used with ``pseudo.fractured_only``).

    Returns:
        ``(crop, mask)``: ``mask`` uint8 on the crop, each voxel its vertebra's number (0 outside).
    """
    crop = crop_grid(volume, vertebrae, cfg.grid)
    painted = crop.labels(box_volume(boxes, volume.shape), pool="max")
    mask = np.zeros(crop.shape, dtype=np.uint8)
    if painted.any():
        # The dilation only matters near the boxes: grow the vertebrae inside the boxes' reach alone (a whole
        # crop at 0.4 mm holds tens of millions of voxels).
        reach = np.ceil(cfg.pseudo.dilate_mm / np.asarray(crop.spacing)).astype(int) + 1
        hit = [np.flatnonzero(painted.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
        block = tuple(slice(max(int(h[0]) - r, 0), int(h[-1]) + r + 1) for h, r in zip(hit, reach, strict=True))
        grown = nearest_vertebra(crop.labels(vertebrae)[block], crop.spacing, cfg.pseudo.dilate_mm)
        mask[block] = np.where(painted[block] > 0, grown, 0)
    if cfg.pseudo.fractured_only:
        mask[~np.isin(mask, sorted(fractured))] = 0
    return crop, mask


def _settings(cfg: FracsegConfig) -> dict[str, Any]:
    """What the written masks depend on (a change rewrites them)."""
    p: PseudoMaskConfig = cfg.pseudo
    return {"schema_version": PSEUDO_SCHEMA_VERSION, "grid": cfg.grid.model_dump(mode="json"),
            "dilate_mm": p.dilate_mm, "fractured_only": p.fractured_only,
            "vertebra_masks": [str(x) for x in p.vertebra_masks]}


def read_mask_index(folder: Path) -> dict[str, Any]:
    """``index.json`` of a pseudo-mask folder (empty when absent)."""
    path = folder / "index.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read the pseudo-mask index: {err}") from None


def usable_studies(folder: Path) -> list[str]:
    """Studies of a pseudo-mask folder that enter the voxel loss (status ``ok``)."""
    studies = read_mask_index(folder).get("studies", {})
    return sorted(u for u, rec in studies.items() if rec.get("status") == "ok" and (folder / f"{u}.nii.gz").is_file())


def _one_study(cfg: FracsegConfig, uid: str, rows: pd.DataFrame, label_row: pd.Series | None,
               out: Path) -> dict[str, Any]:
    from spinelab.io.cache import load_series
    from spinelab.io.nifti import write_nifti
    from spinelab.tasks.cervical.studies import canonical_label_rows, prepare_cervical_volume

    fractured = fractured_vertebrae(label_row) if label_row is not None else set()
    record: dict[str, Any] = {"fractured": sorted(fractured), "boxes": len(rows)}
    path = vertebra_mask_path(cfg, uid)
    if path is None:
        return {**record, "status": "no_vertebra_mask"}
    ct = prepare_cervical_volume(load_series(f"train_images/{uid}", dataset_dir=cfg.data.dataset_dir,
                                             cache_dir=cfg.data.cache_dir))
    vertebrae = study_vertebrae(path, ct)
    crop, mask = pseudo_mask(ct, vertebrae, canonical_label_rows(rows, ct), fractured, cfg)
    write_nifti(crop.volume(mask, is_label=True), out / f"{uid}.nii.gz")
    covered = sorted(int(v) for v in np.unique(mask) if v)
    complete = bool(fractured) and fractured <= set(covered) if cfg.pseudo.fractured_only else bool(covered)
    return {**record, "status": "ok" if complete else "incomplete", "covered": covered,
            "voxels": int(np.count_nonzero(mask)), "vertebra_mask": str(path.resolve())}


def _stale(cfg: FracsegConfig, uid: str, record: dict[str, Any], out: Path) -> bool:
    """Whether a recorded study must be written again: its mask or its vertebra mask is gone, or it had no
    vertebra mask and now has one."""
    status = record.get("status")
    if status == "no_vertebra_mask":
        return vertebra_mask_path(cfg, uid) is not None
    if status in ("ok", "incomplete"):
        source = record.get("vertebra_mask")
        return not (out / f"{uid}.nii.gz").is_file() or (source is not None and not Path(source).is_file())
    return False


def write_fracture_masks(cfg: FracsegConfig, *, progress: bool = True) -> dict[str, Any]:
    """Write the pseudo-mask of every study with boxes into ``<derived>/fracture_masks`` (see the module).

    Studies already written with the same settings are kept, unless the vertebra mask they were made from is
    gone; a study recorded without a vertebra mask is tried again once one exists; changed settings rewrite
    every mask. A study whose CT or vertebra mask cannot be used is recorded (``failed``) and left out.

    Returns:
        The index: ``{"settings": ..., "studies": {uid: record}}``.

    Raises:
        InputError: ``fracture_boxes.csv`` is missing (run ``spinelab labels cervical`` first) or unreadable.
    """
    from spinelab.data.cervical_layout import read_cervical_labels
    from spinelab.data.prepare import make_writable_folder
    from spinelab.infer.batch import progress_bar

    out = fracture_masks_dir(cfg)
    boxes_csv = out.parent / "fracture_boxes.csv"
    if not boxes_csv.is_file():
        raise InputError(boxes_csv, "fracture boxes not found; run `spinelab labels cervical DATASET_DIR`")
    try:
        boxes = pd.read_csv(boxes_csv, dtype={"StudyInstanceUID": str, "vertebra": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise InputError(boxes_csv, f"cannot read: {err}") from None
    labels = read_cervical_labels(Path(cfg.data.dataset_dir) / "train.csv",
                                  drop=cfg.data.drop_studies).set_index("StudyInstanceUID")
    settings = _settings(cfg)
    index = read_mask_index(out)
    studies: dict[str, Any] = index.get("studies", {}) if index.get("settings") == settings else {}
    uids = sorted(u for u in boxes["StudyInstanceUID"].unique() if u in labels.index)
    todo = [u for u in uids if u not in studies or _stale(cfg, u, studies[u], out)]
    if todo or not index:
        make_writable_folder(out)
    with progress_bar() as bar:
        task = bar.add_task("fracture pseudo-masks", total=len(todo), visible=progress and bool(todo))
        for uid in todo:
            rows = boxes[boxes["StudyInstanceUID"] == uid]
            try:
                studies[uid] = _one_study(cfg, uid, rows, labels.loc[uid], out)
            except SpinelabError as err:
                studies[uid] = {"status": "failed", "error": str(err)}
                log.warning("fracture pseudo-mask of %s left out: %s", uid, err)
            bar.advance(task)
    result = {"settings": settings, "studies": {u: studies[u] for u in sorted(studies)}}
    if todo or index != result:
        atomic_write_json(out / "index.json", result)
    return result


def derive_fracture_masks(dataset_dir: str | Path, *, out: Path | None = None, cache_dir: Path | None = None,
                          cfg: FracsegConfig | None = None, vertebra_model: str | Path | None = None,
                          progress: bool = True) -> Path:
    """``spinelab labels cervical DATASET --fracture-masks``: the vertebra masks on their CT grids
    (``<out>/masks``, seg3d's ``write_masks``) and the box pseudo-masks (``<out>/fracture_masks``) with the grid
    of ``cfg`` (default: the route's defaults, the seed's grid). With ``vertebra_model`` (a run with a trained
    ``seg`` stage) the boxed studies without a vertebra mask are segmented first (``<out>/segmented_masks``,
    ``segmented_masks.segment_missing_vertebrae``). ``out`` defaults to ``DATASET/derived`` and must already
    hold ``fracture_boxes.csv`` (the CLI derives the labels first).

    Returns:
        The ``index.json`` written.
    """
    from spinelab.config.schema import DataConfig
    from spinelab.tasks.cervical.seg3d.pipeline import write_masks

    base = cfg or FracsegConfig()
    data = DataConfig(dataset_dir=Path(dataset_dir), derived_dir=Path(out) if out else Path(dataset_dir) / "derived",
                      cache_dir=cache_dir)
    cfg = base.model_copy(update={"data": data})
    write_masks(cfg, progress=progress)  # type: ignore[arg-type]
    write_fracture_masks(cfg, progress=progress)
    if vertebra_model is not None:
        from spinelab.tasks.cervical.fracseg.segmented_masks import segment_missing_vertebrae

        segment_missing_vertebrae(cfg, vertebra_model, progress=progress)
    return fracture_masks_dir(cfg) / "index.json"
