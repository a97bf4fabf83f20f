"""Synthetic RSNA 2024 lumbar MRI datasets in the exact Kaggle layout (``spinelab synth lumbar``).

Each study is one body (``lumbar_anatomy``) sampled on the grids of its series: Sagittal T1, Sagittal T2/STIR
(about 15 % rendered with STIR contrast) and Axial T2, written with ``write_series`` and their own affines, so
a point in one series maps to the others through the DICOM headers. Files written (Kaggle names first)::

    train.csv                       study_id + 25 labels (real column order), blanks as in the real file
    train_label_coordinates.csv     study_id,series_id,instance_number,condition,level,x,y (title case)
    train_series_descriptions.csv   study_id,series_id,series_description
    train_images/<study>/<series>/<instance>.dcm
    test_series_descriptions.csv, test_images/..., sample_submission.csv (row_id,normal_mild,moderate,severe)
    test_labels.csv                 synthetic-only: train.csv format for the test studies
    test_label_coordinates.csv      synthetic-only: coordinates of the test studies
    synthetic_truth/<study>.json    synthetic-only: grades, world (LPS mm) points, series affines
    synthetic_dataset.json          synthetic-only: generator options; generation_failures.json if any failed

Geometry choices (documented because a pipeline may depend on them):

* Sagittal: 15-17 slices of 3.5-4.0 mm along patient left-right (instance 1 on the patient's right as in
  most real series, reversed in 10 %), in-plane ``size`` x ``size`` over a 260-300 mm field of view,
  columns towards posterior, rows towards the feet, a few degrees of random rotation.
* Axial: one straight stack per series, tilted towards the mean disc angle, 3.6-4.4 mm spacing, instance 1
  most cranial, covering L1/L2 to L5/S1. About 10 % of studies split the axial block into an upper and a lower
  series, and about 10 % have a second Sagittal T2/STIR series (labels sit on the first).
* Coordinates sit on the slice nearest the true point, at its in-plane projection (x = column, y = row).
* CSVs are sorted like the real ones: by study id, series by id, coordinates by series and instance.
  Study ids have 7-10 digits, series ids 10.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spinelab.data.synthetic.lumbar_anatomy import (
    LumbarAnatomy,
    anatomy_landmarks,
    render_lumbar,
    sample_anatomy,
)
from spinelab.data.synthetic.lumbar_grades import sample_lumbar_grades
from spinelab.errors import ConfigError, InputError
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.io.dicom_write import write_series
from spinelab.io.volume import Volume
from spinelab.registry import (
    LUMBAR_CONDITION_TITLES,
    LUMBAR_CONDITIONS,
    LUMBAR_GRADE_NAMES,
    LUMBAR_GRADES,
    LUMBAR_LEVEL_TITLES,
    LUMBAR_LEVELS,
    lumbar_row_ids,
)

__all__ = [
    "TRAIN_CSV_CONDITIONS",
    "train_csv_columns",
    "generate_lumbar_dataset",
    "read_lumbar_truth",
    "instance_point_to_world",
]

#: Condition order of the real train.csv columns (the registry order is the sample-submission order).
TRAIN_CSV_CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
COORD_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, made deterministic with entropy sources


def train_csv_columns() -> list[str]:
    """Columns of the real train.csv: ``study_id`` then 25 labels, spinal canal first."""
    return ["study_id", *[f"{c}_{lv}" for c in TRAIN_CSV_CONDITIONS for lv in LUMBAR_LEVELS]]


@dataclass
class _StudyTask:
    study_id: int
    split: str
    seed: np.random.SeedSequence
    grades: np.ndarray  # (5, 5)
    labelled: np.ndarray  # (5, 5) bool
    size: int
    out_dir: Path


@dataclass
class _SeriesPlan:
    series_id: int
    description: str
    contrast: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    role: str  # 'sag_t1', 'sag_t2', 'sag_t2_extra', 'axial', 'axial_upper', 'axial_lower'


# --- grids --------------------------------------------------------------------------------------------
def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A small random rotation (yaw, pitch, roll each within +-max_deg)."""
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


def _affine(center: np.ndarray, d_dir: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray,
            shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, 0] = d_dir * spacing[0]
    aff[:3, 1] = row_dir * spacing[1]
    aff[:3, 2] = col_dir * spacing[2]
    half = (np.array(shape, dtype=np.float64) - 1) / 2
    aff[:3, 3] = center - aff[:3, :3] @ half
    return aff


def _sagittal_plan(rng: np.random.Generator, landmarks: dict[str, Any],
                   size: int) -> tuple[np.ndarray, tuple]:
    center_disc = landmarks["discs"]["L3/L4"]
    n = int(rng.integers(15, 18))
    spacing = float(rng.uniform(3.5, 4.0))
    pixel = float(rng.uniform(260.0, 300.0)) / size
    rot = _rotation(rng, 3.0)
    # As in most real series, instance 1 is the patient's right (slices step towards +x); 10 % run reversed.
    d_dir = rot @ np.array([1.0, 0, 0]) * (1.0 if rng.random() < 0.9 else -1.0)
    center = center_disc + np.array([rng.uniform(-3, 3), 25.0 + rng.uniform(-12, 12), rng.uniform(-20, 15)])
    center[0] = landmarks["midline_x"] + rng.uniform(-3, 3)
    shape = (n, size, size)
    aff = _affine(center, d_dir, rot @ np.array([0, 0, -1.0]), rot @ np.array([0, 1.0, 0]), shape,
                  (spacing, pixel, pixel))
    return aff, shape


def _axial_plan(rng: np.random.Generator, landmarks: dict[str, Any], levels: list[str],
                size: int) -> tuple[np.ndarray, tuple]:
    """A straight axial stack covering the discs of ``levels`` (registry level names), instance 1 cranial."""
    pts = np.array([landmarks["points"][("spinal_canal_stenosis", lv)] for lv in levels])
    # Tilt the stack towards the mean disc plane: the normal follows the spine's tangent direction.
    top, bottom = pts[0], pts[-1]
    axis = top - bottom
    axis[0] = 0.0
    axis = axis / np.linalg.norm(axis) if len(levels) > 1 else np.array([0, 0, 1.0])
    tilt = np.arctan2(axis[1], axis[2]) * rng.uniform(0.4, 1.0)
    normal = np.array([0.0, np.sin(tilt), np.cos(tilt)])  # towards the head
    posterior = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    rot = _rotation(rng, 2.0)
    normal, posterior, left = rot @ normal, rot @ posterior, rot @ np.array([1.0, 0, 0])
    spacing = float(rng.uniform(3.6, 4.4))
    margin = 12.0
    proj = pts @ normal
    n = int(np.ceil((proj.max() - proj.min() + 2 * margin) / spacing)) + 1
    mid = pts.mean(axis=0)
    center = mid + normal * ((proj.max() + proj.min()) / 2 - mid @ normal)
    center = center + posterior * (rng.uniform(-25, -5)) + left * rng.uniform(-4, 4)
    pixel = float(rng.uniform(170.0, 210.0)) / size
    shape = (n, size, size)
    return _affine(center, -normal, posterior, left, shape, (spacing, pixel, pixel)), shape


# --- rendering ----------------------------------------------------------------------------------------
def _render_series(anat: LumbarAnatomy, plan: _SeriesPlan, rng: np.random.Generator) -> np.ndarray:
    """Sample the anatomy on the series grid, add a coil bias field and Rician noise: ``(D, H, W)`` uint16."""
    D, H, W = plan.shape
    aff = plan.affine.astype(np.float32)
    world = (aff[:3, 3] + np.arange(D, dtype=np.float32)[:, None, None, None] * aff[:3, 0]
             + np.arange(H, dtype=np.float32)[None, :, None, None] * aff[:3, 1]
             + np.arange(W, dtype=np.float32)[None, None, :, None] * aff[:3, 2]).reshape(-1, 3)
    edge = max(0.4, 0.7 * float(np.linalg.norm(plan.affine[:3, 1])))
    img = render_lumbar(anat, world, contrast=plan.contrast, edge=edge).reshape(D, H, W)
    # Surface-coil shading: brighter towards the back, smooth in-plane variation.
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    c = rng.uniform(-0.15, 0.15, 4)
    bias = 1.0 + c[0] * xx + c[1] * yy + c[2] * xx * yy + c[3] * (xx**2 + yy**2)
    gain = rng.uniform(0.6, 1.6)
    img = img * (gain * bias[None]).astype(np.float32)
    sigma = rng.uniform(0.015, 0.035) * 1000.0 * gain
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    img += n1
    np.square(img, out=img)
    np.square(n2, out=n2)
    img += n2
    np.sqrt(img, out=img)
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def _unique_ids(rng: np.random.Generator, n: int, *, low: int) -> list[int]:
    """``n`` distinct integers of 7-10 digits (like the real study and series ids), in draw order."""
    out: list[int] = []
    while len(out) < n:
        value = int(rng.integers(low, 4_294_967_295))
        if value not in out:
            out.append(value)
    return out


def _uid(*parts: object) -> str:
    return generate_uid(prefix=_UID_ROOT, entropy_srcs=[str(p) for p in parts])


# --- one study -----------------------------------------------------------------------------------------
def _make_study(task: _StudyTask) -> dict[str, Any]:
    """Render and write one study; return its CSV rows and truth."""
    rng = np.random.default_rng(task.seed)
    anat = sample_anatomy(rng, task.grades)
    lm = anatomy_landmarks(anat)
    lm["midline_x"] = float(anat.offset[0])
    ids = iter(_unique_ids(rng, 6, low=1_000_000_000))  # 10 digits: numeric order == name order
    plans: list[_SeriesPlan] = []
    aff, shape = _sagittal_plan(rng, lm, task.size)
    plans.append(_SeriesPlan(next(ids), "Sagittal T1", "T1", aff, shape, "sag_t1"))
    t2_contrast = "STIR" if rng.random() < 0.15 else "T2"
    aff, shape = _sagittal_plan(rng, lm, task.size)
    plans.append(_SeriesPlan(next(ids), "Sagittal T2/STIR", t2_contrast, aff, shape, "sag_t2"))
    if rng.random() < 0.10:
        aff, shape = _sagittal_plan(rng, lm, task.size)
        plans.append(_SeriesPlan(next(ids), "Sagittal T2/STIR", t2_contrast, aff, shape, "sag_t2_extra"))
    if rng.random() < 0.10:
        for role, levels in (("axial_upper", LUMBAR_LEVELS[:3]), ("axial_lower", LUMBAR_LEVELS[2:])):
            aff, shape = _axial_plan(rng, lm, list(levels), task.size)
            plans.append(_SeriesPlan(next(ids), "Axial T2", "T2", aff, shape, role))
    else:
        aff, shape = _axial_plan(rng, lm, list(LUMBAR_LEVELS), task.size)
        plans.append(_SeriesPlan(next(ids), "Axial T2", "T2", aff, shape, "axial"))
    rng.shuffle(plans)  # series numbers (acquisition order) do not follow the kind

    study_dir = task.out_dir / f"{task.split}_images" / str(task.study_id)
    study_uid = _uid("study", task.study_id)
    for number, plan in enumerate(plans, start=1):
        pixels = _render_series(anat, plan, rng)
        write_series(Volume(pixels, plan.affine), study_dir / str(plan.series_id), modality="MR",
                     study_uid=study_uid, series_uid=_uid("series", task.study_id, plan.series_id),
                     series_description=plan.description, series_number=number, patient_id=str(task.study_id),
                     bits_stored=12)

    coords = _coordinates(task, plans, lm)
    label_row: dict[str, object] = {"study_id": task.study_id}
    for ci, cond in enumerate(LUMBAR_CONDITIONS):
        for li, level in enumerate(LUMBAR_LEVELS):
            ok = bool(task.labelled[ci, li])
            label_row[f"{cond}_{level}"] = LUMBAR_GRADE_NAMES[int(task.grades[ci, li])] if ok else ""
    truth = {
        "study_id": task.study_id,
        "split": task.split,
        "points": [
            {"condition": cond, "level": level, "world": lm["points"][(cond, level)],
             "grade": int(task.grades[ci, li]), "labelled": bool(task.labelled[ci, li])}
            for ci, cond in enumerate(LUMBAR_CONDITIONS) for li, level in enumerate(LUMBAR_LEVELS)
        ],
        "discs": lm["discs"],
        "vertebrae": lm["vertebrae"],
        "series": [{"series_id": p.series_id, "series_description": p.description, "contrast": p.contrast,
                    "role": p.role, "shape": list(p.shape), "affine": p.affine} for p in plans],
    }
    atomic_write_json(task.out_dir / "synthetic_truth" / f"{task.study_id}.json", truth)
    return {
        "study_id": task.study_id,
        "split": task.split,
        "labels": label_row,
        "coords": coords,
        "series": [{"study_id": task.study_id, "series_id": p.series_id, "series_description": p.description}
                   for p in plans],
    }


def _coordinates(task: _StudyTask, plans: list[_SeriesPlan], lm: dict[str, Any]) -> list[dict[str, object]]:
    """Put each labelled point on the nearest slice of the series a reader would annotate."""
    rows = []
    by_role = {p.role: p for p in plans}
    for ci, cond in enumerate(LUMBAR_CONDITIONS):
        for li, level in enumerate(LUMBAR_LEVELS):
            if not task.labelled[ci, li]:
                continue
            if cond == "spinal_canal_stenosis":
                candidates = [by_role["sag_t2"]]
            elif "foraminal" in cond:
                candidates = [by_role["sag_t1"]]
            else:
                candidates = [by_role[r] for r in ("axial", "axial_lower", "axial_upper") if r in by_role]
            world = np.asarray(lm["points"][(cond, level)])
            for plan in candidates:
                d, h, w = np.linalg.solve(plan.affine, np.append(world, 1.0))[:3]
                k = int(np.rint(d))
                if 0 <= k < plan.shape[0] and 0 <= h <= plan.shape[1] - 1 and 0 <= w <= plan.shape[2] - 1:
                    rows.append({"study_id": task.study_id, "series_id": plan.series_id,
                                 "instance_number": k + 1, "condition": LUMBAR_CONDITION_TITLES[cond],
                                 "level": LUMBAR_LEVEL_TITLES[level],
                                 "x": round(float(w), 6), "y": round(float(h), 6)})
                    break
    return rows


# --- the dataset ---------------------------------------------------------------------------------------
def generate_lumbar_dataset(
    out_dir: str | Path,
    *,
    studies: int = 40,
    test_studies: int = 4,
    size: int = 256,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Write a synthetic RSNA 2024 lumbar dataset in the Kaggle layout.

    Args:
        out_dir: dataset folder (created; existing files with the same names are replaced).
        studies: number of training studies.
        test_studies: number of test studies (images without labels, plus the synthetic-only label files).
        size: in-plane size of every series in pixels (``size`` x ``size``).
        seed: master seed; each study draws from its own child seed, so the output does not depend on
            ``workers``.
        workers: worker processes (1 = in-process).
        progress: show a rich progress bar.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: an option is out of range.
    """
    if studies < 1 or test_studies < 0:
        raise ConfigError(f"synth lumbar: need studies >= 1 and test_studies >= 0, "
                          f"got {studies}, {test_studies}")
    if size < 32:
        raise ConfigError(f"synth lumbar: size must be at least 32 pixels, got {size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng(seed)
    total = studies + test_studies
    study_ids = _unique_ids(master, total, low=1_000_000)
    grades, labelled = sample_lumbar_grades(master, total)
    children = np.random.SeedSequence(seed).spawn(total)
    tasks = [_StudyTask(int(study_ids[i]), "train" if i < studies else "test", children[i], grades[i],
                        labelled[i], size, out) for i in range(total)]

    results: list[dict[str, Any]] = []
    failures: list[dict[str, object]] = []
    columns = [TextColumn("synth lumbar"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("studies", total=total)
        if workers <= 1:
            for task in tasks:
                _collect(task, _run_one(task), results, failures)
                bar.advance(job)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for task, res in zip(tasks, pool.map(_run_one, tasks), strict=True):
                    _collect(task, res, results, failures)
                    bar.advance(job)
    _write_tables(out, results)
    atomic_write_json(out / "synthetic_dataset.json", {
        "generator": "spinelab.data.synthetic.lumbar", "studies": studies, "test_studies": test_studies,
        "size": size, "seed": seed, "failed": len(failures)})
    if failures:
        atomic_write_json(out / "generation_failures.json", failures)
    return out


def _run_one(task: _StudyTask) -> dict[str, Any] | str:
    try:
        return _make_study(task)
    except Exception as err:  # a failing study is recorded; the run goes on
        return f"{type(err).__name__}: {err}"


def _collect(task: _StudyTask, res: dict[str, Any] | str, results: list, failures: list) -> None:
    if isinstance(res, str):
        failures.append({"study_id": task.study_id, "split": task.split, "error": res})
    else:
        results.append(res)


def _write_tables(out: Path, results: list[dict[str, Any]]) -> None:
    # The real CSVs are sorted by study id, and series by id within a study.
    results = sorted(results, key=lambda r: r["study_id"])
    for split in ("train", "test"):
        rows = [r for r in results if r["split"] == split]
        labels = pd.DataFrame([r["labels"] for r in rows], columns=train_csv_columns())
        coords = pd.DataFrame([c for r in rows for c in r["coords"]], columns=COORD_COLUMNS)
        coords = coords.sort_values(["study_id", "series_id", "instance_number"], kind="stable")
        series = pd.DataFrame([s for r in rows for s in sorted(r["series"], key=lambda s: s["series_id"])],
                              columns=["study_id", "series_id", "series_description"])
        atomic_write_csv(out / f"{split}_series_descriptions.csv", series)
        if split == "train":
            atomic_write_csv(out / "train.csv", labels)
            atomic_write_csv(out / "train_label_coordinates.csv", coords)
        else:
            atomic_write_csv(out / "test_labels.csv", labels)
            atomic_write_csv(out / "test_label_coordinates.csv", coords)
            sub = pd.DataFrame({"row_id": [rid for r in rows for rid in lumbar_row_ids(r["study_id"])]})
            for grade in LUMBAR_GRADES:
                sub[grade] = 1.0 / 3.0
            atomic_write_csv(out / "sample_submission.csv", sub)


# --- reading the truth back ----------------------------------------------------------------------------
def read_lumbar_truth(dataset_dir: str | Path, study_id: int | str) -> dict[str, Any]:
    """Load ``synthetic_truth/<study_id>.json`` with world points as arrays.

    Returns:
        The truth dict; ``points`` becomes ``{(condition, level): {"world": (3,) array, "grade": int,
        "labelled": bool}}`` and every series ``affine`` a 4x4 array.

    Raises:
        InputError: the file is missing or not valid JSON.
    """
    path = Path(dataset_dir) / "synthetic_truth" / f"{study_id}.json"
    if not path.is_file():
        raise InputError(path, "no synthetic truth for this study (not a spinelab synthetic dataset?)")
    try:
        truth = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err})") from err
    truth["points"] = {(p["condition"], p["level"]): {"world": np.asarray(p["world"], dtype=np.float64),
                                                      "grade": p["grade"], "labelled": p["labelled"]}
                       for p in truth["points"]}
    for s in truth["series"]:
        s["affine"] = np.asarray(s["affine"], dtype=np.float64)
    return truth


def instance_point_to_world(dicom_path: str | Path, x: float, y: float) -> np.ndarray:
    """World (LPS mm) position of pixel ``(x = column, y = row)`` of one DICOM instance.

    Uses ImagePositionPatient, ImageOrientationPatient and PixelSpacing (row spacing first), i.e. the way a
    coordinate row of ``train_label_coordinates.csv`` is placed in the patient.

    Raises:
        InputError: the file cannot be read or lacks the geometry tags.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(dicom_path, stop_before_pixels=True)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as err:
        raise InputError(dicom_path, f"cannot read the image geometry ({err})") from err
    return ipp + iop[:3] * col_spacing * x + iop[3:] * row_spacing * y
