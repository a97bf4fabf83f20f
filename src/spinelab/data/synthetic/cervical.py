"""Synthetic RSNA 2022 cervical-spine fracture dataset, written exactly in the Kaggle layout.

Layout (as the Kaggle download, seed-systems.md section 3.1)::

    train.csv                     StudyInstanceUID,patient_overall,C1,...,C7
    train_bounding_boxes.csv      StudyInstanceUID,x,y,width,height,slice_number
    segmentations/<UID>.nii       labels 1-7 = C1-C7, 8.. = T1..; uint8; aligned only through world coords
    train_images/<UID>/<n>.dcm    axial CT, n = InstanceNumber = file stem, starting at 1
    test_images/<UID>/<n>.dcm
    test.csv                      row_id,StudyInstanceUID,prediction_type (+ one study without images)
    sample_submission.csv         row_id,fractured

Synthetic-only extras: ``test_labels.csv`` (train.csv format for the test studies, so demos can evaluate)
and ``synthetic_truth.json`` (per-study geometry, vertebra centres in LPS mm, fractures, transfer syntax).

Each study is generated from its own seed derived from the master seed, so a process pool writes the same
bytes of pixel data as a serial run.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.data.synthetic.cervical_anatomy import PhantomSpec, sample_phantom
from spinelab.data.synthetic.cervical_render import render_phantom
from spinelab.errors import ConfigError
from spinelab.io.atomic import atomic_path, atomic_write_csv, atomic_write_json
from spinelab.io.dicom_write import write_series
from spinelab.io.volume import LPS_TO_RAS, Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE, cervical_row_ids

__all__ = [
    "CERVICAL_PREVALENCE",
    "OVERALL_PREVALENCE",
    "TRANSFER_SYNTAX_MIX",
    "draw_cervical_labels",
    "generate_cervical_dataset",
    "generate_cervical_study",
    "plan_cervical_dataset",
]

#: Per-vertebra fracture prevalence of the real RSNA 2022 train set (2019 studies).
CERVICAL_PREVALENCE: dict[str, float] = {"C1": 0.072, "C2": 0.141, "C3": 0.036, "C4": 0.053, "C5": 0.080,
                                         "C6": 0.137, "C7": 0.195}
#: Share of studies with at least one fracture in the real train set.
OVERALL_PREVALENCE: float = 0.476
#: Per-study storage: (name for ``write_series``, probability). Uncompressed is split between the two
#: little-endian syntaxes seen in the real headers; 4.70 and 4.90 are the "some are JPEG" files.
TRANSFER_SYNTAX_MIX: tuple[tuple[str, float], ...] = (("explicit", 0.35), ("implicit", 0.25),
                                                     ("jpeg_lossless", 0.25), ("jpeg2000", 0.15))
#: Share of studies stored feet to head (real: 197 of 2019).
FEET_FIRST_FRACTION: float = 0.1
_UID_ROOT = "1.2.826.0.1.3680043"


# --- labels -----------------------------------------------------------------------------------------------
def _conditional_rates() -> np.ndarray:
    """Independent per-vertebra rates q that, conditioned on at least one fracture, give the real marginals.

    With m_k = P(C_k | positive) we need q_k = m_k * P0 where P0 = 1 - prod(1 - q_k); P0 is the non-zero
    root of ``P0 = 1 - prod(1 - m_k * P0)``, found by bisection.
    """
    m = np.array([CERVICAL_PREVALENCE[v] for v in VERTEBRAE]) / OVERALL_PREVALENCE
    lo, hi = 1e-6, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 1.0 - np.prod(1.0 - m * mid) - mid > 0:
            lo = mid
        else:
            hi = mid
    return m * lo


def draw_cervical_labels(n: int, rng: np.random.Generator, *, positive: bool | None = None) -> np.ndarray:
    """Draw per-study fracture labels with the real RSNA 2022 marginals.

    "Patient fractured" is drawn with p = 0.476; a positive study gets independent per-vertebra draws
    conditioned on at least one fracture (rejection sampling), with rates chosen so that every vertebra's
    marginal prevalence matches ``CERVICAL_PREVALENCE``.

    Args:
        n: number of studies.
        rng: random generator.
        positive: force every study positive (True) or negative (False); default draws it.

    Returns:
        ``(n, 8)`` int array, columns ``C1..C7, patient_overall`` (``registry.CERVICAL_TARGETS`` order).
    """
    q = _conditional_rates()
    out = np.zeros((n, len(CERVICAL_TARGETS)), dtype=np.int64)
    for i in range(n):
        pos = bool(rng.random() < OVERALL_PREVALENCE) if positive is None else positive
        if pos:
            while True:
                draw = rng.random(len(VERTEBRAE)) < q
                if draw.any():
                    break
            out[i, : len(VERTEBRAE)] = draw
    out[:, -1] = out[:, : len(VERTEBRAE)].max(axis=1)
    return out


# --- one study ----------------------------------------------------------------------------------------
def _study_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 2022, index]))


def generate_cervical_study(
    out_root: str | Path,
    *,
    uid: str,
    split: str,
    labels: dict[str, int],
    size: int,
    seed: int,
    index: int,
    write_segmentation: bool,
    transfer_syntax: str = "explicit",
    feet_first: bool = False,
    slices: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Render and write one study (DICOM series, optional segmentation); return its records.

    Args:
        out_root: dataset folder.
        uid: StudyInstanceUID.
        split: ``"train"`` or ``"test"`` (image folder ``<split>_images``).
        labels: ``{"C1": 0/1, ...}``.
        size: in-plane pixels.
        seed, index: master seed and study index; together they fix every random draw of the study.
        write_segmentation: also write ``segmentations/<uid>.nii``.
        transfer_syntax: a ``dicom_write.TRANSFER_SYNTAXES`` name for every slice of the study.
        feet_first: store slice 1 as the most caudal slice (IPP z increasing with the slice number).
        slices: optional ``(min, max)`` slice count.

    Returns:
        ``{"uid", "boxes": [(x, y, w, h, slice_number), ...], "truth": {...}}``.
    """
    rng = _study_rng(seed, index)
    spec = sample_phantom(rng, fractured={v: bool(labels[v]) for v in VERTEBRAE}, size=size, slices=slices)
    syntax = transfer_syntax
    result = render_phantom(spec)
    K = spec.shape[0]
    # File order: head first (slice 1 = most cranial, z decreasing) unless stored feet first.
    order = np.arange(K) if feet_first else np.arange(K)[::-1]
    asc = spec.affine
    file_affine = asc.copy()
    if not feet_first:
        file_affine[:3, 0] = -asc[:3, 0]
        file_affine[:3, 3] = asc[:3, 3] + (K - 1) * asc[:3, 0]
    volume = Volume(result.hu[order], file_affine)
    root = Path(out_root)
    image_dir = root / f"{split}_images" / uid
    slice_numbers = [int(i) + 1 for i in range(K)]
    write_series(volume, image_dir, file_names=[f"{n}.dcm" for n in slice_numbers], transfer_syntax=syntax,
                 modality="CT", study_uid=uid, series_uid=f"{uid}.1.{index + 1}",
                 instance_numbers=slice_numbers,
                 series_description="CSPINE BONE 1.0", patient_id=uid.rsplit(".", 1)[-1],
                 slice_thickness=spec.dz)
    # Bounding boxes of every slice the fracture cleft crosses (pixel units of that slice).
    boxes = []
    pad = 3
    H, W = spec.shape[1:]
    file_index_of_k = {int(k): int(d) for d, k in enumerate(order)}
    for label, mask in sorted(result.fracture_mask.items()):
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            rows = np.flatnonzero(mask[k].any(axis=1))
            cols = np.flatnonzero(mask[k].any(axis=0))
            y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + pad, H - 1)
            x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + pad, W - 1)
            boxes.append({"x": float(x0), "y": float(y0), "width": float(x1 - x0 + 1),
                          "height": float(y1 - y0 + 1), "label": int(label),
                          "slice_number": slice_numbers[file_index_of_k[int(k)]]})
    if write_segmentation:
        _write_segmentation(root / "segmentations" / f"{uid}.nii", result.labels, asc)
    truth = _truth(spec, syntax=syntax, feet_first=feet_first, file_affine=file_affine, split=split)
    return {"uid": uid, "boxes": boxes, "truth": truth}


def _write_segmentation(path: Path, labels: np.ndarray, asc_affine: np.ndarray) -> None:
    """Write labels as the real RSNA 2022 NIfTIs are: array ``(W, H, K)``, rows flipped, slices caudal first.

    The seeds load them with ``get_fdata()[:, ::-1, ::-1].transpose(2, 1, 0)`` to get head-first
    ``(slice, row, column)``; here the affine is exact, so world coordinates agree with the DICOM grid.
    """
    import nibabel as nib

    K, H, W = labels.shape
    data = np.ascontiguousarray(labels.transpose(2, 1, 0)[:, ::-1, :])  # (i=w, j=H-1-h, k)
    # NIfTI index (i, j, k) -> ascending-grid index (k, H-1-j, i) -> LPS -> RAS.
    perm = np.zeros((4, 4))
    perm[0, 2] = 1.0
    perm[1, 1] = -1.0
    perm[1, 3] = H - 1
    perm[2, 0] = 1.0
    perm[3, 3] = 1.0
    affine = LPS_TO_RAS @ asc_affine @ perm
    img = nib.Nifti1Image(data.astype(np.uint8), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=".nii") as tmp:
        nib.save(img, str(tmp))


def _truth(spec: PhantomSpec, *, syntax: str, feet_first: bool, file_affine: np.ndarray,
           split: str) -> dict[str, Any]:
    return {
        "split": split,
        "transfer_syntax": syntax,
        "feet_first": feet_first,
        "shape": list(spec.shape),
        "pixel_spacing": spec.pixel,
        "slice_spacing": spec.dz,
        "file_affine_lps": file_affine.tolist(),
        "vertebrae": {v.level: {"label": v.label, "center_lps": [float(c) for c in v.center],
                                "fractures": [asdict(f) for f in v.fractures]}
                      for v in spec.vertebrae},
    }


def _run_study(job: dict[str, Any]) -> dict[str, Any]:
    """Process-pool entry point (module level so it pickles)."""
    return generate_cervical_study(**job)


# --- dataset ----------------------------------------------------------------------------------------------
def _assign_labels(studies: int, test_studies: int, rng: np.random.Generator) -> np.ndarray:
    """Labels for train then test studies; small sets are patched so each holds positives and negatives."""
    labels = draw_cervical_labels(studies + test_studies, rng)
    for lo, hi in ((0, studies), (studies, studies + test_studies)):
        n = hi - lo
        if n >= 1 and not labels[lo:hi, -1].any():
            labels[lo] = draw_cervical_labels(1, rng, positive=True)[0]
        if n >= 2 and labels[lo:hi, -1].all():
            labels[hi - 1] = 0
    return labels


def plan_cervical_dataset(
    out_dir: str | Path,
    *,
    studies: int = 40,
    test_studies: int = 4,
    size: int = 256,
    seed: int = 0,
    seg_fraction: float = 0.5,
    slices: tuple[int, int] | None = None,
) -> tuple[list[dict[str, Any]], np.ndarray, str]:
    """Every dataset-level draw, without rendering: one job per study, the labels and the missing test UID.

    Args:
        out_dir, studies, test_studies, size, seed, seg_fraction, slices: as ``generate_cervical_dataset``.

    Returns:
        ``(jobs, labels, missing_uid)``: ``jobs[i]`` holds the keyword arguments of
        ``generate_cervical_study`` (train studies first), ``labels`` is ``(studies + test_studies, 8)``
        in ``CERVICAL_TARGETS`` order, and ``missing_uid`` is the test.csv study with no images.

    Raises:
        ConfigError: an option is out of range.
    """
    if studies < 1 or test_studies < 0:
        raise ConfigError(f"studies must be >= 1 and test_studies >= 0, got {studies} and {test_studies}")
    if size < 32:
        raise ConfigError(f"size must be at least 32 pixels, got {size}")
    if not 0.0 <= seg_fraction <= 1.0:
        raise ConfigError(f"seg_fraction must be in [0, 1], got {seg_fraction}")
    if slices is not None and not (2 <= slices[0] <= slices[1]):
        raise ConfigError(f"slices must be (min, max) with 2 <= min <= max, got {slices}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2022]))
    total = studies + test_studies
    numbers = rng.choice(np.arange(1000, 33000), size=total + 1, replace=False)
    uids = [f"{_UID_ROOT}.{int(n)}" for n in numbers]
    labels = _assign_labels(studies, test_studies, rng)
    n_seg = int(round(seg_fraction * studies))
    seg_set = set(rng.choice(studies, size=n_seg, replace=False).tolist()) if n_seg else set()
    syntax_names = [name for name, _ in TRANSFER_SYNTAX_MIX]
    syntaxes = rng.choice(syntax_names, size=total, p=[p for _, p in TRANSFER_SYNTAX_MIX])
    feet_first = rng.random(total) < FEET_FIRST_FRACTION
    jobs = []
    for i in range(total):
        jobs.append({"out_root": str(out_dir), "uid": uids[i], "split": "train" if i < studies else "test",
                     "labels": dict(zip(VERTEBRAE, (int(x) for x in labels[i, :7]), strict=True)),
                     "size": size, "seed": seed, "index": i, "write_segmentation": i in seg_set,
                     "transfer_syntax": str(syntaxes[i]), "feet_first": bool(feet_first[i]),
                     "slices": slices})
    return jobs, labels, uids[total]


def generate_cervical_dataset(
    out_dir: str | Path,
    *,
    studies: int = 40,
    test_studies: int = 4,
    size: int = 256,
    seed: int = 0,
    workers: int = 2,
    seg_fraction: float = 0.5,
    slices: tuple[int, int] | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthetic RSNA 2022 dataset in the exact Kaggle layout.

    Args:
        out_dir: dataset folder (created; existing files with the same names are replaced).
        studies: number of training studies.
        test_studies: number of test studies (plus one test.csv study without images, as in Kaggle).
        size: slice size in pixels (rows = columns).
        seed: master seed; each study derives its own seed from it.
        workers: worker processes (<= 1 runs serially; output is identical).
        seg_fraction: share of training studies that get ``segmentations/<UID>.nii``.
        slices: ``(min, max)`` slices per study; default follows realistic slice spacing (~60-160 at 256 px).
        progress: show a rich progress bar.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: an option is out of range.
    """
    out = Path(out_dir)
    jobs, labels, missing_uid = plan_cervical_dataset(out, studies=studies, test_studies=test_studies,
                                                      size=size, seed=seed, seg_fraction=seg_fraction,
                                                      slices=slices)
    out.mkdir(parents=True, exist_ok=True)
    results, failures = _run_jobs(jobs, workers=workers, progress=progress)
    _write_csvs(out, jobs, labels, results, missing_uid=missing_uid, studies=studies)
    truth = {"seed": seed, "size": size, "generator": "spinelab.data.synthetic.cervical",
             "missing_test_study": missing_uid, "failures": failures,
             "studies": {job["uid"]: results[job["uid"]]["truth"]
                         | {"labels": dict(zip(CERVICAL_TARGETS, map(int, labels[i]), strict=True)),
                            "segmentation": job["write_segmentation"]}
                         for i, job in enumerate(jobs) if job["uid"] in results}}
    atomic_write_json(out / "synthetic_truth.json", truth)
    if failures:
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]synth cervical: {len(failures)} studies failed and were left "
                                   f"out; see {out / 'synthetic_truth.json'}[/]")
    return out


def _run_jobs(jobs: list[dict[str, Any]], *, workers: int,
              progress: bool) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """Run study jobs serially or in a process pool; a failing study is recorded and skipped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, str]] = []
    bar = Progress(TextColumn("synth cervical"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   disable=not progress)
    if workers <= 1 or len(jobs) == 1:
        with bar:
            task = bar.add_task("studies", total=len(jobs))
            for job in jobs:
                try:
                    results[job["uid"]] = _run_study(job)
                except Exception as err:  # noqa: BLE001 - record the study and go on
                    failures.append({"uid": job["uid"], "error": f"{type(err).__name__}: {err}"})
                bar.advance(task)
    else:
        # Fork where available (no __main__ guard needed in user scripts); every job is submitted before the
        # progress bar starts its refresh thread, so no worker is forked while that thread holds a lock.
        methods = get_all_start_methods()
        context = get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            futures = {pool.submit(_run_study, job): job["uid"] for job in jobs}
            with bar:
                task = bar.add_task("studies", total=len(jobs))
                for fut in as_completed(futures):
                    try:
                        results[futures[fut]] = fut.result()
                    except Exception as err:  # noqa: BLE001 - record the study and go on
                        failures.append({"uid": futures[fut], "error": f"{type(err).__name__}: {err}"})
                    bar.advance(task)
    failures.sort(key=lambda f: f["uid"])
    return results, failures


def _write_csvs(out: Path, jobs: list[dict[str, Any]], labels: np.ndarray, results: dict[str, dict[str, Any]],
                *, missing_uid: str, studies: int) -> None:
    """train.csv, train_bounding_boxes.csv, test.csv, sample_submission.csv and test_labels.csv."""
    label_cols = ["StudyInstanceUID", "patient_overall", *VERTEBRAE]
    train_rows, test_rows, box_rows, test_csv = [], [], [], []
    for i, job in enumerate(jobs):
        uid = job["uid"]
        if uid not in results:
            continue
        row = {"StudyInstanceUID": uid, "patient_overall": int(labels[i, -1]),
               **{v: int(labels[i, k]) for k, v in enumerate(VERTEBRAE)}}
        if i < studies:
            train_rows.append(row)
            for box in results[uid]["boxes"]:
                box_rows.append({"StudyInstanceUID": uid, **{k: box[k] for k in
                                                             ("x", "y", "width", "height", "slice_number")}})
        else:
            test_rows.append(row)
            test_csv += [{"row_id": rid, "StudyInstanceUID": uid, "prediction_type": t}
                         for rid, t in zip(cervical_row_ids(uid), CERVICAL_TARGETS, strict=True)]
    # Kaggle's test.csv names studies that are not in test_images; keep one such study.
    test_csv += [{"row_id": rid, "StudyInstanceUID": missing_uid, "prediction_type": t}
                 for rid, t in zip(cervical_row_ids(missing_uid), CERVICAL_TARGETS, strict=True)]
    atomic_write_csv(out / "train.csv", pd.DataFrame(train_rows, columns=label_cols))
    atomic_write_csv(out / "train_bounding_boxes.csv",
                     pd.DataFrame(box_rows, columns=["StudyInstanceUID", "x", "y", "width", "height",
                                                     "slice_number"]))
    atomic_write_csv(out / "test.csv", pd.DataFrame(test_csv, columns=["row_id", "StudyInstanceUID",
                                                                       "prediction_type"]))
    atomic_write_csv(out / "sample_submission.csv",
                     pd.DataFrame({"row_id": [r["row_id"] for r in test_csv], "fractured": 0.5}))
    atomic_write_csv(out / "test_labels.csv", pd.DataFrame(test_rows, columns=label_cols))
