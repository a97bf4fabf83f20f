"""The seg3d route's predictor (the 1st place's inference): segment C1-C7, crop every vertebra (15 x (5 + mask)),
run type 1 (per vertebra) and type 2 (per study), average the two types and the folds, clamp.

Results carry the slice route's keys (``probabilities``, ``vertebra_ranges``, ``crop_box``,
``missing_vertebrae``, ``warnings``, ``input``, ``conventions``, ``model``), so the submission, the evaluation
and the report treat both routes alike; ``vertebrae`` adds each vertebra's crop box and ``mask_sections`` the
mask on the sagittal and coronal planes the report draws.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinelab import __version__
from spinelab.errors import InputError
from spinelab.infer.batch import SCHEMA_VERSION, weights_sha256
from spinelab.infer.checks import InputCheck, check_cervical_input
from spinelab.infer.result import StudyResult
from spinelab.infer.runtime import Runtime
from spinelab.infer.tta import flip_outputs
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.tasks.cervical.predict import CONVENTIONS
from spinelab.tasks.cervical.seg3d.crops import VertebraCrops, describe_crops, vertebra_crops
from spinelab.tasks.cervical.seg3d.patient_stage import PatientStage
from spinelab.tasks.cervical.seg3d.vertebra_stage import VertebraStage
from spinelab.tasks.cervical.studies import prepare_cervical_volume
from spinelab.tasks.cervical.study_predictor import CervicalStudyPredictor
from spinelab.train.run_folder import (
    fold_weight_files,
    load_stage_models,
    read_prior,
    read_run_config,
    select_folds,
    trained_folds,
)

__all__ = ["Seg3dPredictor", "ensemble_types", "type1_overall", "mask_sections"]

log = logging.getLogger("spinelab")

CLASSIFIER_STAGES = ("vertebra", "patient")


def type1_overall(vertebra: np.ndarray) -> float:
    """Type 1 scores vertebrae only: ``patient_overall`` is the probability that any of them is fractured."""
    return float(1.0 - np.prod(1.0 - np.asarray(vertebra, dtype=np.float64)))


def ensemble_types(type1: np.ndarray | None, type2: np.ndarray | None, weight: float) -> np.ndarray:
    """The two types' ``(8,)`` probabilities (``CERVICAL_TARGETS`` order) averaged, type 2 with ``weight``;
    either alone when the other is ``None``; clamped to [1e-4, 1 - 1e-4] as the slice route's are."""
    if type1 is None and type2 is None:
        raise ValueError("neither classifier type gave probabilities")
    if type1 is None or type2 is None:
        out = type2 if type1 is None else type1
    else:
        out = weight * np.asarray(type2) + (1 - weight) * np.asarray(type1)
    return np.clip(np.asarray(out, dtype=np.float64), 1e-4, 1 - 1e-4)


def _rle(values: np.ndarray) -> list[int]:
    """Run-length code of a flat uint8 array: ``[value, count, value, count, ...]``."""
    if values.size == 0:
        return []
    change = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.concatenate([starts, [values.size]]))
    return np.stack([values[starts], counts], 1).ravel().astype(int).tolist()


def mask_sections(labels: np.ndarray, box: list[float]) -> dict[str, Any]:
    """The label map on the sagittal (column) and coronal (row) planes through the crop box's centre, run-length
    coded row by row (``[value, count, ...]`` over the plane's ``shape``), for the report's picture."""
    depth, height, width = labels.shape
    cx = int(np.clip((box[0] + box[2]) / 2, 0, width - 1))
    cy = int(np.clip((box[1] + box[3]) / 2, 0, height - 1))
    sag, cor = np.asarray(labels[:, :, cx], np.uint8), np.asarray(labels[:, cy, :], np.uint8)
    return {"sagittal": {"column": cx, "shape": list(sag.shape), "rle": _rle(sag.ravel())},
            "coronal": {"row": cy, "shape": list(cor.shape), "rle": _rle(cor.ravel())}}


class Seg3dPredictor(CervicalStudyPredictor):
    """Loads a seg3d run folder's segmentation and classifier models once; predicts studies.

    Args:
        run_dir: folder written by ``spinelab train cervical`` with a seg3d recipe.
        folds: folds to ensemble in every stage (default every trained fold).
        runtime: device / precision settings.
        tta: average left-right flipped inputs (segmentation and both classifiers).
        strict: refuse a study on any input or vertebra-check warning.
    """

    def __init__(self, run_dir: str | Path, *, folds: list[int | None] | None = None,
                 runtime: Runtime | None = None, tta: bool = True, strict: bool = False) -> None:
        from spinelab.tasks.cervical.seg3d.segment import Segmenter

        self.run_dir = Path(run_dir)
        self.cfg = read_run_config(self.run_dir)
        self.runtime = runtime or Runtime()
        self.tta, self.strict = tta, strict
        self.segmenter = Segmenter(self.run_dir, folds=folds, runtime=self.runtime, tta=tta)
        self.folds: dict[str, list[int | None]] = {"seg": list(self.segmenter.folds)}
        self.models: dict[str, list[torch.nn.Module]] = {}
        for stage in (VertebraStage(self.cfg, self.run_dir), PatientStage(self.cfg, self.run_dir)):
            if trained_folds(self.run_dir, stage.name):
                self.folds[stage.name] = select_folds(self.run_dir, stage.name, folds)
                self.models[stage.name] = load_stage_models(stage, self.folds[stage.name])
        if not self.models:
            raise InputError(self.run_dir, "no trained classifier (vertebra or patient stage); "
                                           "run `spinelab train cervical --stage vertebra`")
        self.weights = weights_sha256(self.run_dir, fold_weight_files(self.run_dir, self.folds))
        self.prior = read_prior(self.run_dir, dict.fromkeys(CERVICAL_TARGETS, 0.5))

    @property
    def model_info(self) -> dict[str, Any]:
        """The run, folds, options and weights' SHA-256 a result was made with."""
        return {"run_dir": str(self.run_dir), "experiment": self.cfg.experiment, "route": "seg3d",
                "folds": self.folds, "tta": self.tta, "precision": self.runtime.precision, "strict": self.strict,
                "spinelab": __version__, "weights_sha256": self.weights}

    def classify(self, crops: VertebraCrops) -> dict[str, np.ndarray | None]:
        """Both types' ``(8,)`` probabilities (``None`` for a type that is not trained), averaged over folds
        and flips. A vertebra the segmentation missed takes the training prior in type 1 (it has no crops) and
        stays out of type 2's patient pooling."""
        found = torch.from_numpy(crops.found)
        x = torch.from_numpy(crops.images)
        out: dict[str, np.ndarray | None] = {"type1": None, "type2": None}
        if "vertebra" in self.models:
            def one(model: torch.nn.Module, inp: torch.Tensor) -> np.ndarray:
                return torch.sigmoid(self.runtime.run(model, inp)["vertebra"].float()).cpu().numpy()

            vert = np.array([self.prior[v] for v in VERTEBRAE], dtype=np.float64)
            if found.any():
                vert[crops.found] = np.mean(flip_outputs(self.models["vertebra"], x[found], one, tta=self.tta), axis=0)
            out["type1"] = np.append(vert, type1_overall(vert))
        if "patient" in self.models:
            mask = found[None]

            def both(model: torch.nn.Module, inp: torch.Tensor) -> np.ndarray:
                o = self.runtime.run(model, inp, mask=mask)
                return torch.sigmoid(torch.cat([o["vertebra"], o["overall"][:, None]], 1).float())[0].cpu().numpy()

            out["type2"] = np.mean(flip_outputs(self.models["patient"], x[None], both, tta=self.tta), axis=0)
        return out

    def predict_volume(self, volume: Volume, study_id: str | None = None) -> StudyResult:
        """Probabilities for C1-C7 and the patient, plus what the segmentation found.

        The input rules run first, the vertebra check on the segmentation after it (``infer.checks``; its
        warnings are the study's).

        Raises:
            StudyRefusedError: the study fails an input rule (any warning too with ``strict``).
        """
        check = check_cervical_input(volume)
        check.raise_if_refused(self.strict)
        seg = self.segmenter.segment(volume)  # labels on the stored grid, largest parts, the vertebra check
        volume = prepare_cervical_volume(volume)
        labels = np.asarray(prepare_cervical_volume(seg.labels).array)  # the CT's move: the same grid
        crops = vertebra_crops(volume, labels, self.cfg.crops)
        missing = [v for v, ok in zip(VERTEBRAE, crops.found, strict=True) if not ok]
        after = InputCheck(warnings=[str(i) for i in seg.issues], facts=check.facts)
        after.raise_if_refused(self.strict)
        types = self.classify(crops)
        probs = ensemble_types(types["type1"], types["type2"], self.cfg.patient.ensemble_weight)
        warnings = check.warnings + after.warnings
        for w in warnings:
            log.warning("%s: %s", study_id or "study", w)
        vertebrae = describe_crops(crops, volume)
        ranges = {v: {k: d[k] for k in ("start_index", "end_index", "slice_numbers")} for v, d in vertebrae.items()}
        box = _union_box(crops, volume)
        result = StudyResult(
            schema_version=SCHEMA_VERSION,
            study=study_id,
            status="warning" if warnings else "ok",
            probabilities={t: float(p) for t, p in zip(CERVICAL_TARGETS, probs, strict=True)},
            vertebra_ranges=ranges,
            crop_box=box,
            missing_vertebrae=missing,
            vertebrae=vertebrae,
            type_probabilities={k: None if v is None else dict(zip(CERVICAL_TARGETS, map(float, v), strict=True))
                               for k, v in types.items()},
            mask_sections=mask_sections(labels, box),
            warnings=warnings,
            input=check.facts,
            conventions=CONVENTIONS,
            model=self.model_info,
        )
        # the mask itself, for the DICOM SEG (``infer.dicom_results``); labels 1..7 = C1..C7, 8 = T1
        result.attachments.update(labels=seg.labels, series_uid=volume.meta.get("series_uid"))
        return result


def _union_box(crops: VertebraCrops, volume: Volume) -> list[float]:
    """The box around every found vertebra's crop box, inside the image (the whole image when none was found)."""
    height, width = volume.shape[1:]
    if not crops.found.any():
        return [0.0, 0.0, float(width), float(height)]
    b = crops.boxes[crops.found]
    box = [max(0.0, b[:, 0].min()), max(0.0, b[:, 1].min()), min(float(width), b[:, 2].max()),
           min(float(height), b[:, 3].max())]
    return [round(float(v), 1) for v in box]
