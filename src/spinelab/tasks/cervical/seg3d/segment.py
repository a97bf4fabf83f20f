"""Vertebra segmentation at inference: ``Segmenter`` (a run folder's ``seg`` models, loaded once) and the
``spinelab segment`` writer (``segment_studies``: ``vertebrae.nii.gz``, ``vertebrae.json``, ``preview.png``).

One study goes: the canonical CT (``prepare_cervical_volume``) -> the network's grid (``inputs.seg_input``, the
function training uses) -> MONAI sliding windows with Gaussian weighting (``Runtime.sliding_window``), each
fold on the grid and on its left-right mirror (``infer.tta.flip_outputs``; a mirror changes no vertebra label),
softmax averaged -> argmax -> each label's largest connected part (``vertebrae.keep_largest_components``, on
the network's grid with its affine: cheap, and the duplicate rule measures millimetres there too; a dropped
part's voxels become background) -> the canonical grid (``SegInput.probabilities_to_labels``: the
probabilities interpolated linearly onto each CT voxel, then argmax) -> the stored grid of the input
(``resample_to``: exact transposes and flips) -> per-vertebra statistics and the vertebra check.

Nothing here imports Lightning or the training loop: the ``seg`` stage only builds its model from the run's
``config.yaml`` (``SegStage.build_model``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinelab import __version__
from spinelab.config.seg3d import Seg3dSegConfig
from spinelab.errors import ConfigError, InputError, SpinelabError
from spinelab.infer.batch import progress_bar, status_counts, weights_sha256
from spinelab.infer.checks import CT_MAX_P1_HU, InputCheck, StudyRefusedError, check_cervical_input
from spinelab.infer.runtime import Runtime
from spinelab.infer.studies import find_input_studies, read_study_volume
from spinelab.infer.tta import flip_outputs
from spinelab.io.atomic import atomic_write_json
from spinelab.io.geometry import resample_to
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.seg3d.inputs import SegInput, seg_input
from spinelab.tasks.cervical.seg3d.seg_stage import SegStage
from spinelab.tasks.cervical.seg3d.vertebrae import (
    LABEL_NAMES,
    VertebraIssue,
    VertebraStats,
    check_vertebrae,
    keep_largest_components,
    vertebra_stats,
)
from spinelab.tasks.cervical.studies import prepare_cervical_volume
from spinelab.train.run_folder import fold_dir, load_stage_models, read_run_config, select_folds

__all__ = ["Segmenter", "grid_probabilities", "SegmentResult", "segment_studies", "SEGMENT_SCHEMA_VERSION",
           "MASK_FILE", "JSON_FILE", "PREVIEW_FILE", "CONVENTIONS"]

log = logging.getLogger("spinelab")

#: Version of the ``vertebrae.json`` and ``manifest.json`` layouts of ``spinelab segment``.
SEGMENT_SCHEMA_VERSION = 1
MASK_FILE, JSON_FILE, PREVIEW_FILE, MANIFEST_FILE = "vertebrae.nii.gz", "vertebrae.json", "preview.png", "manifest.json"
STAGE = "seg"
#: What the numbers of ``vertebrae.json`` mean (written into every file).
CONVENTIONS = {
    "labels": "vertebrae.nii.gz values: 0 background, 1..7 = C1..C7, 8 = T1 (the RSNA 2022 segmentation values)",
    "grid": "vertebrae.nii.gz is on the input's own grid (shape and affine of the DICOM series as SimpleITK reads "
            "it, or of the input NIfTI)",
    "box_ijk": "inclusive voxel indices in vertebrae.nii.gz's (i, j, k) order, as nibabel and SimpleITK index it "
               "(a DICOM series: i = column, j = row, k = slice along the slice normal)",
    "slices": "start_index/end_index: inclusive k range; slice_numbers: those slices' DICOM file names without "
              "suffix (RSNA slice numbers), null for a NIfTI input",
    "world": "centroid_lps_mm and box_lps_mm are patient coordinates in mm, DICOM LPS (x to the patient's left, "
             "y posterior, z to the head); box_lps_mm spans the voxels' edges",
}


def grid_probabilities(models: Sequence[torch.nn.Module], x: torch.Tensor, seg: Seg3dSegConfig, runtime: Runtime,
                       *, tta: bool) -> torch.Tensor:
    """Class probabilities ``(K, d, h, w)`` of an image ``(1, C, d, h, w)`` on the network's grid: Gaussian
    sliding windows of ``seg.roi``, averaged over the models and (with ``tta``) their left-right mirrors."""
    total: list[torch.Tensor] = []

    def forward(model: torch.nn.Module, inp: tuple[torch.Tensor, bool]) -> None:
        image, mirrored = inp
        logits = runtime.sliding_window(model, image, seg.roi, sw_batch_size=seg.sw_batch_size,
                                        overlap=seg.sw_overlap, mode="gaussian")["mask"]
        probs = torch.softmax(logits[0], dim=0)
        probs = probs.flip(-1) if mirrored else probs  # a mirrored input's map, mirrored back
        if total:  # a running sum: one volume of probabilities in memory, however many folds
            total[0] += probs
        else:
            total.append(probs)

    flip_outputs(models, (x, False), forward, tta=tta, mirror=lambda inp: (inp[0].flip(-1), True))
    return total[0] / (len(models) * (2 if tta else 1))


@dataclass
class SegmentResult:
    """One segmented study.

    Args:
        labels: the label map on the input's stored grid (uint8; 0 background, 1..7 = C1..C7, 8 = T1).
        vertebrae: statistics of each vertebra found, in label order.
        issues: what the vertebra check found (duplicates, missing, order, gaps, volumes).
        input_warnings: the input rules' warnings (``infer.checks``).
        facts: what the input rules measured (modality, shape, spacing, extent).
    """

    labels: Volume
    vertebrae: dict[str, VertebraStats]
    issues: list[VertebraIssue] = field(default_factory=list)
    input_warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """Every warning: the input's first, then the vertebra check's."""
        return [*self.input_warnings, *(str(i) for i in self.issues)]

    def to_json(self, study: str | None = None, model: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``vertebrae.json`` content."""
        return {"schema_version": SEGMENT_SCHEMA_VERSION, "study": study,
                "status": "warning" if self.warnings else "ok",
                "vertebrae": {name: s.to_json() for name, s in self.vertebrae.items()},
                "missing": [v for v in VERTEBRAE if v not in self.vertebrae],
                "check": {"passed": not self.issues, "issues": [i.to_json() for i in self.issues]},
                "warnings": self.warnings, "input": self.facts, "conventions": CONVENTIONS, "model": model or {}}


class Segmenter:
    """A run folder's ``seg`` models, loaded once; ``segment(volume)`` per study.

    Args:
        run_dir: a run folder of the ``cervical/seg3d`` route with a trained ``seg`` stage.
        folds: folds to average (default every trained fold; the full-data model when only it exists).
        runtime: device / precision / compile settings.
        tta: average each fold with its left-right mirrored input.

    Raises:
        ConfigError: the run has no ``seg`` section (another route).
        InputError: no trained ``seg`` weights, or weights that do not fit the config.
    """

    def __init__(self, run_dir: str | Path, *, folds: list[int | None] | None = None, runtime: Runtime | None = None,
                 tta: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = read_run_config(self.run_dir)
        if getattr(self.cfg, STAGE, None) is None:
            raise ConfigError(f"{self.run_dir}: a run of route {getattr(self.cfg, 'route', None) or 'slices'} has no "
                              f"{STAGE} stage; spinelab segment needs a cervical/seg3d run")
        self.runtime = runtime or Runtime()
        self.tta = tta
        self.folds = select_folds(self.run_dir, STAGE, folds)
        self.models = load_stage_models(SegStage(self.cfg, self.run_dir), self.folds)
        self.weights = weights_sha256(self.run_dir, [fold_dir(self.run_dir, STAGE, f) / "model.pt" for f in self.folds])
        # A cervical/fracseg run trains its own vertebra stage: then the fracture map comes along.
        from spinelab.tasks.cervical.fracseg.fracture_map import FractureMapper, has_fracture_stage

        self.fracture = (FractureMapper(self.run_dir, folds=folds, runtime=self.runtime, tta=tta)
                         if has_fracture_stage(self.run_dir) else None)

    @property
    def model_info(self) -> dict[str, Any]:
        """The run, folds, options and weights' SHA-256 a segmentation was made with."""
        return {"run_dir": str(self.run_dir), "experiment": self.cfg.experiment, "folds": {STAGE: self.folds},
                "tta": self.tta, "precision": self.runtime.precision, "spinelab": __version__,
                "weights_sha256": self.weights}

    @property
    def names(self) -> dict[int, str]:
        """Class value -> vertebra name for the classes the models output."""
        return {k: v for k, v in LABEL_NAMES.items() if k < self.cfg.seg.n_classes}

    def probabilities(self, canonical: Volume) -> tuple[SegInput, torch.Tensor]:
        """Class probabilities ``(K, d, h, w)`` on the network's grid, averaged over folds and mirrors."""
        grid = seg_input(canonical, self.cfg.seg)
        x = torch.from_numpy(grid.image)[None]
        return grid, grid_probabilities(self.models, x, self.cfg.seg, self.runtime, tta=self.tta)

    def input_check(self, volume: Volume) -> InputCheck:
        """The cervical input rules, as far as they concern a segmentation: a non-CT image or a single slice is
        refused; a scan too short for all of C1-C7 is segmented with a warning (what it holds is still useful)."""
        check = check_cervical_input(volume)
        modality = str(volume.meta.get("modality") or "").upper()
        not_ct = bool(modality and modality != "CT") or check.facts.get("percentile_1", -1000.0) > CT_MAX_P1_HU
        if not not_ct and volume.shape[0] > 1 and check.refusals:
            check.warnings = [*(f"{r} (segmented anyway)" for r in check.refusals), *check.warnings]
            check.refusals = []
        return check

    def segment(self, volume: Volume) -> SegmentResult:
        """Segment one CT (HU, any orientation) onto its own stored grid (``prepare_cervical_volume(
        result.labels)`` puts the labels on the canonical grid the models saw, as for the CT).

        Raises:
            StudyRefusedError: not a CT in HU, or a single slice.
        """
        return self.labels_from_probabilities(volume, *self.checked_probabilities(volume))

    def checked_probabilities(self, volume: Volume) -> tuple[Volume, SegInput, torch.Tensor, InputCheck]:
        """The first half of ``segment``: the input check (refusals raised), the canonical volume, the network's
        grid and its class probabilities there; ``labels_from_probabilities`` takes them as they come.

        Raises:
            StudyRefusedError: not a CT in HU, or a single slice.
        """
        check = self.input_check(volume)
        check.raise_if_refused()
        canonical = prepare_cervical_volume(volume)
        grid, probs = self.probabilities(canonical)
        return canonical, grid, probs, check

    def labels_from_probabilities(self, volume: Volume, canonical: Volume, grid: SegInput, probs: torch.Tensor,
                                  check: InputCheck) -> SegmentResult:
        """What ``segment`` makes of ``probabilities(canonical)``: each label's largest part on the network's
        grid, the probabilities taken back linearly onto ``volume``'s grid, the vertebra check (``probs`` is
        changed in place)."""
        argmax = probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
        kept, duplicates = keep_largest_components(Volume(argmax, grid.affine, is_label=True))  # on the small grid
        dropped = torch.from_numpy(np.asarray(kept.array) != argmax).to(probs.device)
        probs[:, dropped] = 0.0
        probs[0, dropped] = 1.0
        # kept is the argmax of the probabilities as changed here (ties go to the first class in both)
        kept_labels = torch.from_numpy(np.ascontiguousarray(kept.array, dtype=np.uint8))
        on_canonical = canonical.with_array(grid.probabilities_to_labels(probs, kept_labels), is_label=True)
        labels = resample_to(on_canonical, volume)  # the canonical grid is the stored one transposed and flipped
        # the canonical grid's meta (its axis map above all) does not describe the stored grid
        labels.meta = {"source": volume.meta.get("source"), "warnings": []}
        stats = vertebra_stats(labels)
        issues = duplicates + check_vertebrae(stats, expected=VERTEBRAE)
        return SegmentResult(labels=labels, vertebrae=stats, issues=issues, input_warnings=check.warnings,
                             facts=check.facts)


# --- spinelab segment: one folder of outputs per study ------------------------------------------------
def _write_outputs(segmenter: Segmenter, volume: Volume, result: SegmentResult, out_dir: Path,
                   study: str) -> dict[str, Any]:
    """``vertebrae.nii.gz`` and ``preview.png``, then ``vertebrae.json`` (each atomic; the JSON last)."""
    from spinelab.io.nifti import write_nifti
    from spinelab.report.segmentation import write_segmentation_preview

    write_nifti(result.labels, out_dir / MASK_FILE)
    write_segmentation_preview(volume, result.labels, out_dir / PREVIEW_FILE, names=segmenter.names, title=study,
                               warnings=result.warnings)
    outputs = {"mask": MASK_FILE, "preview": PREVIEW_FILE}
    if segmenter.fracture is not None:  # a fracseg run: the fracture probability on the same grid
        from spinelab.tasks.cervical.fracseg.fracture_map import FRACTURE_FILE

        write_nifti(segmenter.fracture.map(volume, result.labels).on(volume), out_dir / FRACTURE_FILE)
        outputs["fracture_prob"] = FRACTURE_FILE
    return {**result.to_json(study, segmenter.model_info), "outputs": outputs}


def _segment_one(segmenter: Segmenter, study: str, path: Path, out_dir: Path, series: str | None) -> dict[str, Any]:
    """Segment one study into ``out_dir``; a refusal or failure is recorded in its JSON, stale outputs removed."""
    start = time.perf_counter()
    try:
        volume = read_study_volume(path, series=series)
        result = segmenter.segment(volume)
        record = _write_outputs(segmenter, volume, result, out_dir, study)
        for w in result.warnings:
            log.warning("%s: %s", study, w)
    except StudyRefusedError as err:
        log.warning("study %s refused: %s", study, err)
        record = {"status": "refused", "reasons": err.reasons, "warnings": err.warnings, "input": err.facts}
    except (SpinelabError, OSError) as err:
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | IsADirectoryError):
            raise  # disk full, read-only output: every later study would fail the same way
        log.warning("study %s failed: %s", study, err)
        record = {"status": "failed", "error": str(err)}
    except Exception as err:  # a long run survives any bad study; the trace goes into its JSON
        log.warning("study %s failed: %s: %s", study, type(err).__name__, err)
        record = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc(limit=5)}
    if record["status"] in ("refused", "failed"):
        for name in (MASK_FILE, PREVIEW_FILE, "fracture_prob.nii.gz"):  # never leave an older run's outputs
            (out_dir / name).unlink(missing_ok=True)
        record = {"schema_version": SEGMENT_SCHEMA_VERSION, "study": study, **record, "model": segmenter.model_info}
    record["source"] = str(path)
    record["seconds"] = round(time.perf_counter() - start, 3)
    atomic_write_json(out_dir / JSON_FILE, record)
    return record


def segment_studies(segmenter: Segmenter | Callable[[], Segmenter], input: str | Path, out: str | Path, *,
                    series: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Segment one study (outputs in ``out``) or every study of a dataset or folder (``out/<study id>/``, and
    ``out/manifest.json`` listing them with their status).

    Args:
        segmenter: built once, or a function that builds it after the input was found (a bad path is refused
            before any model is loaded).
        input: a DICOM study folder, a DICOM or NIfTI file, a folder of those, or a Kaggle-layout dataset.
        series: the SeriesInstanceUID or SeriesDescription to read where a study holds several series.

    Returns:
        ``{"studies": n, "counts": {status: n}, "results": [vertebrae.json dicts], "manifest": path or None,
        "folders": [output folder per study]}``.

    Raises:
        InputError: ``input`` does not exist or holds no study.
    """
    input, out = Path(input), Path(out)
    split, studies = find_input_studies(input, nested=False)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if callable(segmenter) and not isinstance(segmenter, Segmenter):
        segmenter = segmenter()
    single = split in ("file", "study")
    results, folders = [], []
    with progress_bar() as bar:
        task = bar.add_task("segment", total=len(studies), visible=progress)
        for study, path in studies:
            folder = out if single else out / study
            results.append(_segment_one(segmenter, study, path, folder, series))
            folders.append(folder)
            bar.advance(task)
    counts = status_counts(results)
    manifest = None
    if not single:
        manifest = atomic_write_json(out / MANIFEST_FILE, {
            "schema_version": SEGMENT_SCHEMA_VERSION, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "input": str(input), "model": segmenter.model_info, "counts": counts,
            "studies": [{"study": r["study"], "folder": f.relative_to(out).as_posix(), "status": r["status"],
                         **({"error": r["error"]} if "error" in r else {})}
                        for r, f in zip(results, folders, strict=True)]})
    return {"studies": len(results), "counts": counts, "results": results, "manifest": manifest, "folders": folders}
