"""Training targets derived from the RSNA 2022 segmentations and fracture boxes (per-slice tables).

For every training study with a segmentation (``segmentations/<UID>.nii[.gz]``), the label map is put on the
CT grid **by world coordinates** (``io.geometry.resample_to``: the NIfTI header places the sagittal
segmentation on the axial DICOM, so studies stored head-to-feet and feet-to-head need no special case, unlike
the seeds' hard-coded ``[:, ::-1, ::-1].transpose(2, 1, 0)`` recipes). Rows follow the CT array index ``d`` of
``read_series`` (slices sorted along the slice normal), with the DICOM file stem beside it.

Outputs (in ``DATASET_DIR/derived/`` by default):

* ``slice_labels.csv``: ``StudyInstanceUID, index, slice_number, x0, y0, x1, y1, nx0, ny0, nx1, ny1, C1..C7``.
  ``x0, y0`` is the first column / row holding any of C1-C7 on that slice and ``x1, y1`` is one past the last
  (so ``x1 - x0`` is the box width in pixels); empty when the slice holds none. ``nx*`` = ``x* / width`` and
  ``ny*`` = ``y* / height``. ``C<k>`` = pixels of vertebra k on the slice / its maximum over the study's
  slices (darraghdog's "vertebra ratio" target; 0 when the vertebra is absent).
* ``fracture_boxes.csv``: one row per ``train_bounding_boxes.csv`` row whose slice was found:
  ``StudyInstanceUID, slice_number, index, x0, y0, x1, y1, nx0, ny0, nx1, ny1, vertebra, overlap`` where
  ``vertebra`` is the C1-C7 label covering most pixels inside the box on that slice (empty without a
  segmentation or without overlap) and ``overlap`` that pixel count.
* ``label_failures.json``: studies that failed, with the stage (``ct``: missing or unreadable DICOM, the study
  is skipped; ``segmentation``: unreadable or non-overlapping segmentation, the study gets no slice labels but
  its boxes are still mapped), box rows whose slice is not in the series, and per-study warnings.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.data.study_ids import check_folder_ids
from spinelab.errors import InputError, SpinelabError
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE

__all__ = [
    "SLICE_COLUMNS",
    "BOX_COLUMNS",
    "derive_cervical_labels",
    "slice_labels_for_study",
    "fracture_boxes_for_study",
    "vertebra_label_map",
    "find_segmentations",
]

SLICE_COLUMNS: list[str] = [
    "StudyInstanceUID",
    "index",
    "slice_number",
    "x0",
    "y0",
    "x1",
    "y1",
    "nx0",
    "ny0",
    "nx1",
    "ny1",
    *VERTEBRAE,
]
BOX_COLUMNS: list[str] = [
    "StudyInstanceUID",
    "slice_number",
    "index",
    "x0",
    "y0",
    "x1",
    "y1",
    "nx0",
    "ny0",
    "nx1",
    "ny1",
    "vertebra",
    "overlap",
]
_N_CERVICAL = len(VERTEBRAE)  # labels 1..7 in the RSNA 2022 segmentations; 8-19 (T1-T12) are ignored
# Below this fraction of C1-C7 voxels surviving the move onto the CT grid, the segmentation is reported as
# not matching its CT (a wrong header would typically lose most of them or all).
_MIN_KEPT_FRACTION = 0.95


def vertebra_label_map(seg_on_ct: Volume) -> np.ndarray:
    """``uint8`` ``(D, H, W)`` with 1..7 for C1..C7 and 0 elsewhere (thoracic labels dropped)."""
    arr = np.asarray(seg_on_ct.array)
    cervical = (arr >= 1) & (arr <= _N_CERVICAL)
    return np.where(cervical, arr, 0).astype(np.uint8)


def _boxes_from_mask(rows_any: np.ndarray, cols_any: np.ndarray) -> np.ndarray:
    """Per-slice ``x0, y0, x1, y1`` (float, NaN when empty) from ``(D, H)`` and ``(D, W)`` occupancy."""
    h, w = rows_any.shape[1], cols_any.shape[1]
    has = rows_any.any(axis=1)
    y0 = rows_any.argmax(axis=1)
    y1 = h - rows_any[:, ::-1].argmax(axis=1)
    x0 = cols_any.argmax(axis=1)
    x1 = w - cols_any[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.float64)
    boxes[~has] = np.nan
    return boxes


def slice_labels_for_study(study_uid: str, ct: Volume, seg_on_ct: Volume) -> pd.DataFrame:
    """The ``slice_labels.csv`` rows of one study.

    Args:
        study_uid: the StudyInstanceUID written in every row.
        ct: the CT as read by ``read_series`` (its ``slice_ids`` give ``slice_number``).
        seg_on_ct: the segmentation already on the CT grid (same shape), RSNA 2022 label values.

    Returns:
        Frame with ``SLICE_COLUMNS``, one row per CT slice in array order.

    Raises:
        ValueError: the two grids differ in shape.
    """
    if seg_on_ct.shape != ct.shape:
        raise ValueError(f"segmentation grid {seg_on_ct.shape} differs from the CT grid {ct.shape}")
    labels = vertebra_label_map(seg_on_ct)
    depth, height, width = labels.shape
    # One bincount per slice keeps memory at one slice (a study is ~512 x 512 x 300 voxels).
    counts = np.stack([np.bincount(labels[d].ravel(), minlength=_N_CERVICAL + 1)[1:] for d in range(depth)])
    peak = counts.max(axis=0)
    ratios = np.divide(counts, peak, out=np.zeros(counts.shape, dtype=np.float64), where=peak > 0)
    mask = labels > 0
    boxes = _boxes_from_mask(mask.any(axis=2), mask.any(axis=1))
    slice_ids = ct.slice_ids if ct.slice_ids is not None else [str(d) for d in range(depth)]
    frame = pd.DataFrame(
        {"StudyInstanceUID": study_uid, "index": np.arange(depth), "slice_number": slice_ids}
    )
    for j, name in enumerate(("x0", "y0", "x1", "y1")):
        frame[name] = pd.array(boxes[:, j], dtype="Float64").astype("Int64")
    for j, name in enumerate(("nx0", "ny0", "nx1", "ny1")):
        frame[name] = boxes[:, j] / (width if j % 2 == 0 else height)
    for j, name in enumerate(VERTEBRAE):
        frame[name] = ratios[:, j]
    return frame[SLICE_COLUMNS]


def fracture_boxes_for_study(
    study_uid: str, boxes: pd.DataFrame, ct: Volume, labels: np.ndarray | None
) -> tuple[pd.DataFrame, list[str]]:
    """Map one study's ``train_bounding_boxes.csv`` rows onto the CT array.

    Args:
        study_uid: the study.
        boxes: its rows (``x, y, width, height, slice_number``; pixels of the DICOM image).
        ct: the CT (``slice_ids`` are the file stems that ``slice_number`` refers to).
        labels: ``vertebra_label_map`` of the segmentation on the CT grid, or ``None``.

    Returns:
        ``(frame with BOX_COLUMNS, slice numbers that are not in the series)``.
    """
    depth, height, width = ct.shape
    index_of = {str(s): d for d, s in enumerate(ct.slice_ids or [str(d) for d in range(depth)])}
    rows: list[dict[str, Any]] = []
    unmatched: list[str] = []
    for rec in boxes.itertuples(index=False):
        number = _slice_key(rec.slice_number)
        if number not in index_of:
            unmatched.append(number)
            continue
        d = index_of[number]
        x0, y0 = float(rec.x), float(rec.y)
        x1, y1 = x0 + float(rec.width), y0 + float(rec.height)
        vertebra, overlap = "", 0
        if labels is not None:
            # Whole pixels touched by the box, clipped to the image.
            c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
            c1, r1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
            if c1 > c0 and r1 > r0:
                hist = np.bincount(labels[d, r0:r1, c0:c1].ravel(), minlength=_N_CERVICAL + 1)[1:]
                if hist.max() > 0:
                    vertebra, overlap = VERTEBRAE[int(hist.argmax())], int(hist.max())
        rows.append(
            {
                "StudyInstanceUID": study_uid,
                "slice_number": number,
                "index": d,
                "x0": x0,
                "y0": y0,
                "x1": x1,
                "y1": y1,
                "nx0": x0 / width,
                "ny0": y0 / height,
                "nx1": x1 / width,
                "ny1": y1 / height,
                "vertebra": vertebra,
                "overlap": overlap,
            }
        )
    return pd.DataFrame(rows, columns=BOX_COLUMNS), unmatched


def _slice_key(value: Any) -> str:
    """``slice_number`` as the file stem string: 101, 101.0 and '101' all give '101'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def find_segmentations(dataset_dir: str | Path) -> dict[str, Path]:
    """``{StudyInstanceUID: path}`` of every ``segmentations/<UID>.nii`` or ``.nii.gz`` (empty if none)."""
    folder = Path(dataset_dir) / "segmentations"
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith("."):
            continue
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                found[name[: -len(suffix)]] = path
    return found


def _read_boxes(dataset_dir: Path) -> pd.DataFrame | None:
    path = dataset_dir / "train_bounding_boxes.csv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"StudyInstanceUID": str, "slice_number": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot parse CSV: {err}") from err
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
    need = ["StudyInstanceUID", "x", "y", "width", "height", "slice_number"]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise InputError(path, f"columns missing: {missing}")
    check_folder_ids(frame["StudyInstanceUID"], csv=path, column="StudyInstanceUID")
    return frame


def _seg_on_ct(seg_path: Path, ct: Volume) -> tuple[Volume, list[str]]:
    """Read a segmentation and put it on the CT grid; check that C1-C7 survived the move."""
    from spinelab.io.geometry import resample_to
    from spinelab.io.nifti import read_nifti

    seg = read_nifti(seg_path, is_label=True)
    before = int(np.count_nonzero((seg.array >= 1) & (seg.array <= _N_CERVICAL)))
    on_ct = resample_to(seg, ct, order=0)
    after = int(np.count_nonzero((on_ct.array >= 1) & (on_ct.array <= _N_CERVICAL)))
    warns: list[str] = []
    if on_ct.meta.get("resample") != "exact":
        warns.append(f"segmentation lattice differs from the CT lattice: {on_ct.meta.get('resample')}")
    if before == 0:
        warns.append("segmentation holds no C1-C7 voxel")
    elif after == 0:
        raise InputError(
            seg_path,
            "segmentation does not overlap its CT (no C1-C7 voxel left on the CT grid); "
            "check the NIfTI header",
        )
    elif on_ct.meta.get("resample") == "exact" and after < _MIN_KEPT_FRACTION * before:
        warns.append(f"only {after / before:.1%} of the C1-C7 voxels fall inside the CT field of view")
    return on_ct, warns


def derive_cervical_labels(
    dataset_dir: str | Path, *, out: Path | None = None, cache_dir: Path | None = None, progress: bool = True
) -> list[Path]:
    """Write ``slice_labels.csv``, ``fracture_boxes.csv`` and ``label_failures.json`` for an RSNA 2022 set.

    Args:
        dataset_dir: RSNA 2022 layout (``train_images/<UID>/<slice_number>.dcm``, ``segmentations/``,
            ``train_bounding_boxes.csv``).
        out: output folder; default ``DATASET_DIR/derived``.
        cache_dir: a volume cache (``spinelab cache build``); series found there are memory-mapped instead of
            decoded (cache path ``train_images/<UID>``).
        progress: show a rich progress bar.

    Returns:
        The three paths written (atomically), CSVs first.

    Raises:
        InputError: ``dataset_dir`` missing, or ``train_bounding_boxes.csv`` unreadable. Problems of single
            studies are recorded in ``label_failures.json`` instead.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from spinelab.data.prepare import make_writable_folder
    from spinelab.io.cache import load_series

    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise InputError(dataset_dir, "dataset folder does not exist")
    default_out = out is None
    out = dataset_dir / "derived" if out is None else Path(out)
    hint = " (a read-only dataset? pass --out)" if default_out else ""
    try:  # before the work: a read-only place fails now, not after every study was read
        make_writable_folder(out)
    except InputError as err:
        raise InputError(err.path, f"{err.problem}{hint}") from None
    segs = find_segmentations(dataset_dir)
    boxes = _read_boxes(dataset_dir)
    box_studies = [] if boxes is None else sorted(boxes["StudyInstanceUID"].unique())
    studies = sorted(set(segs) | set(box_studies))
    failures: list[dict[str, str]] = []
    warnings_out: list[dict[str, str]] = []
    unmatched_out: list[dict[str, str]] = []
    slice_frames: list[pd.DataFrame] = []
    box_frames: list[pd.DataFrame] = []
    columns = (TextColumn("labels"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("labels", total=len(studies))
        for uid in studies:
            stage = "ct"
            try:
                ct = load_series(f"train_images/{uid}", dataset_dir=dataset_dir, cache_dir=cache_dir)
                labels = None
                if uid in segs:
                    stage = "segmentation"
                    try:
                        seg, warns = _seg_on_ct(segs[uid], ct)
                        warnings_out += [{"study": uid, "warning": w} for w in warns]
                        slice_frames.append(slice_labels_for_study(uid, ct, seg))
                        if uid in box_studies:
                            labels = vertebra_label_map(seg)
                    except SpinelabError as err:
                        # The boxes of this study can still be mapped, only without a vertebra.
                        failures.append({"study": uid, "stage": stage, "error": str(err)})
                if boxes is not None and uid in box_studies:
                    stage = "boxes"
                    frame, unmatched = fracture_boxes_for_study(
                        uid, boxes[boxes["StudyInstanceUID"] == uid], ct, labels
                    )
                    box_frames.append(frame)
                    unmatched_out += [{"study": uid, "slice_number": s} for s in unmatched]
            except SpinelabError as err:
                failures.append({"study": uid, "stage": stage, "error": str(err)})
            except Exception as err:  # noqa: BLE001 - one bad study must not stop the run; it is recorded
                failures.append({"study": uid, "stage": stage, "error": f"{type(err).__name__}: {err}"})
            bar.advance(task)
    if boxes is None:
        warnings_out.append(
            {"study": "", "warning": "no train_bounding_boxes.csv: fracture_boxes.csv is empty"}
        )
    slice_table = (
        pd.concat(slice_frames, ignore_index=True) if slice_frames else pd.DataFrame(columns=SLICE_COLUMNS)
    )
    box_table = pd.concat(box_frames, ignore_index=True) if box_frames else pd.DataFrame(columns=BOX_COLUMNS)
    try:
        return _write_label_tables(out, slice_table, box_table, {
            "dataset_dir": str(dataset_dir),
            "finished": _dt.datetime.now().isoformat(timespec="seconds"),
            "n_studies": len(studies),
            "n_segmentations": len(segs),
            "failed": failures,
            "unmatched_box_slices": unmatched_out,
            "warnings": warnings_out,
        })
    except OSError as err:
        raise InputError(err.filename or out, f"cannot write: {err.strerror or err}{hint}") from None


def _write_label_tables(out: Path, slice_table: pd.DataFrame, box_table: pd.DataFrame,
                        report: dict[str, Any]) -> list[Path]:
    """The three outputs of ``derive_cervical_labels`` (atomically; CSVs first)."""
    return [
        atomic_write_csv(out / "slice_labels.csv", slice_table),
        atomic_write_csv(out / "fracture_boxes.csv", box_table),
        atomic_write_json(out / "label_failures.json", report),
    ]
