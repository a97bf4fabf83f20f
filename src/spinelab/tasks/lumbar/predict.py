"""Lumbar inference: ``LumbarPredictor`` (the points route's predictor: load once, predict many), the task's
submission and metric (``OUTPUT``, for ``infer.batch.predict_dataset``) and the one-study function
``predict_lumbar``."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spinelab import __version__
from spinelab.errors import InputError
from spinelab.infer.batch import weights_sha256
from spinelab.infer.checks import InputCheck, check_lumbar_series
from spinelab.infer.result import SCHEMA_VERSION, StudyResult
from spinelab.infer.runtime import Runtime, run_inference_options
from spinelab.infer.tta import flip_outputs
from spinelab.io.atomic import atomic_write_json
from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_GRADES, LUMBAR_LEVELS, lumbar_columns
from spinelab.tasks.lumbar.grading import FLIP_ORDER, GradingStage, flip_items, grading_inputs
from spinelab.tasks.lumbar.localize import localize_study
from spinelab.tasks.lumbar.points import AxialPointStage, SagT1PointStage, SagT2PointStage, read_geometry
from spinelab.tasks.lumbar.studies import LumbarStudy, load_study, read_descriptions
from spinelab.tasks.route import TaskOutput
from spinelab.train.run_folder import (
    fold_weight_files,
    load_stage_models,
    read_prior,
    read_run_config,
    select_folds,
)

__all__ = ["LumbarPredictor", "predict_lumbar", "OUTPUT", "evaluate_lumbar_predictions",
           "point_errors", "sagittal_variants"]

log = logging.getLogger("spinelab")
STAGES = (SagT2PointStage, SagT1PointStage, AxialPointStage, GradingStage)
#: What the points of a study JSON mean (written into every result as ``conventions``).
CONVENTIONS = {
    "points": "x/y: column/row in pixels of the slice as stored, pixel centres at integers (Kaggle's "
              "coordinates convention); slice_index: array index after spinelab's slice order (sagittal right to "
              "left, axial head to feet); instance_number: that slice's DICOM InstanceNumber; world: LPS mm",
    "axial_level_slices": "the axial slice nearest each disc level, with the same keys as points",
}


class LumbarPredictor:
    """Loads a run folder's stage-1 and stage-2 models once; predicts studies.

    Args:
        run_dir: folder written by ``spinelab train lumbar``.
        folds: folds to ensemble (default every trained fold; the full-data model when only it exists).
        runtime: device / precision / compile settings.
        tta: average with left-right mirrored inputs (labels swapped back).
        strict: refuse a study on any input warning (``infer.checks``), not only on a refusal rule.
    """

    def __init__(self, run_dir: str | Path, *, folds: list[int | None] | None = None,
                 runtime: Runtime | None = None, tta: bool = True, strict: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = read_run_config(self.run_dir)
        self.runtime = runtime or Runtime()
        self.tta, self.strict = tta, strict
        stages = [cls(self.cfg, self.run_dir) for cls in STAGES]
        self.folds = {s.name: select_folds(self.run_dir, s.name, folds) for s in stages}
        self.models = {s.name: load_stage_models(s, self.folds[s.name]) for s in stages}
        self.weights = weights_sha256(self.run_dir, fold_weight_files(self.run_dir, self.folds))
        self.geometry = read_geometry(self.run_dir)
        self.prior = np.asarray(read_prior(self.run_dir, np.full((len(lumbar_columns()), 3), 1 / 3)))

    @property
    def model_info(self) -> dict[str, Any]:
        """The run, folds, options and weights' SHA-256 a result was made with."""
        return {"run_dir": str(self.run_dir), "experiment": self.cfg.experiment, "folds": self.folds,
                "tta": self.tta, "precision": self.runtime.precision, "strict": self.strict,
                "spinelab": __version__, "weights_sha256": self.weights}

    def check(self, study: LumbarStudy) -> InputCheck:
        """The input rules over every series of ``study`` (modality MR, the plane of each kind)."""
        out = InputCheck(facts={"series": {}})
        for kind in study.series:
            for name, vol in zip(study.series_ids[kind], study.series[kind], strict=True):
                c = check_lumbar_series(vol, kind, name)
                out.refusals += c.refusals
                out.warnings += c.warnings
                out.facts["series"][name] = {"kind": kind, **c.facts}
        if study.inferred:
            out.facts["kinds_inferred"] = dict(study.inferred)
        return out

    def grade(self, study: LumbarStudy, anchors: dict[str, np.ndarray]) -> np.ndarray:
        """Stage-2 probabilities ``(25, 3)`` (lumbar_columns order), averaged over folds and the mirror, and
        with ``series_policy: all`` over every sagittal series of a kind (crops at the same world points)."""
        def forward(model: torch.nn.Module, inp: dict[str, np.ndarray]) -> np.ndarray:
            t = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in inp.items()}
            logits = self.runtime.run(model, t["sag"], t["axial"], t["mask"], t["condition"], t["level"])
            return torch.softmax(logits["logits"], -1)[0].cpu().numpy()

        outs = []
        for view in sagittal_variants(study) if self.cfg.stage2.series_policy == "all" else [study]:
            # the mirror swaps the left and right items; swapping the outputs back is the same permutation
            outs += flip_outputs(self.models["stage2"], grading_inputs(view, anchors, self.cfg), forward,
                                 tta=self.tta, mirror=flip_items, unmirror=lambda p: p[FLIP_ORDER])
        probs = np.clip(np.mean(outs, axis=0), 1e-4, 1.0)
        return probs / probs.sum(-1, keepdims=True)

    def predict_loaded(self, study: LumbarStudy, *, truth: dict[tuple[str, str], np.ndarray] | None = None
                       ) -> StudyResult:
        """Points and grades of an already loaded study (``truth``: world points, for the error in mm).

        Raises:
            StudyRefusedError: the study fails an input rule (any warning too with ``strict``).
        """
        check = self.check(study)
        check.raise_if_refused(self.strict)
        loc = localize_study(study, {k: v for k, v in self.models.items() if k != "stage2"}, self.cfg,
                             self.geometry, runtime=self.runtime, tta=self.tta)
        probs = self.grade(study, loc["anchors"])
        grades = {col: dict(zip(LUMBAR_GRADES, (round(float(v), 6) for v in p), strict=True))
                  for col, p in zip(lumbar_columns(), probs, strict=True)}
        warnings = check.warnings + loc["warnings"]
        result: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "study": study.study_id, "status": "warning" if warnings else "ok", "grades": grades,
            "points": loc["points"], "axial_level_slices": loc["axial_slices"],
            "series": {k: v for k, v in study.series_ids.items()}, "missing_series": study.missing,
            "warnings": warnings, "input": check.facts, "conventions": CONVENTIONS, "model": self.model_info,
        }
        if truth:
            result["point_error_mm"] = point_errors(loc["raw"], truth)
        for w in warnings:
            log.warning("%s: %s", study.study_id, w)
        return StudyResult.model_validate(result)

    def predict_study(self, study_dir: str | Path, study_id: str | None = None, *,
                      descriptions: pd.DataFrame | None = None) -> StudyResult:
        """Read a study folder (one folder per series) and predict it."""
        study = load_study(study_dir, descriptions=descriptions, policy=self.cfg.stage2.series_policy)
        if study_id is not None:
            study.study_id = study_id
        return self.predict_loaded(study)

    def for_dataset(self, input: Path, split: str) -> Any:
        """The per-study function of ``predict_dataset``: with a Kaggle layout, the series descriptions pick the
        series and the labelled coordinates give each study's point error in mm."""
        descriptions = read_descriptions(input, split) if split in ("train", "test") else None
        truth_points = _truth_points(input, split)

        def one(sid: str, path: Path) -> StudyResult:
            study = load_study(path, descriptions=descriptions, policy=self.cfg.stage2.series_policy)
            return self.predict_loaded(study, truth=truth_points(study) if truth_points else None)

        return one

    def fallback(self, study_id: str, error: str) -> StudyResult:
        """A valid prediction for a study that could not be processed: the training prior."""
        grades = {col: dict(zip(LUMBAR_GRADES, map(float, p), strict=True))
                  for col, p in zip(lumbar_columns(), self.prior, strict=True)}
        return StudyResult(schema_version=SCHEMA_VERSION, study=study_id, grades=grades, status="failed",
                           error=error, warnings=[f"prediction failed, prior used: {error}"], model=self.model_info)


def sagittal_variants(study: LumbarStudy) -> list[LumbarStudy]:
    """One view of ``study`` per sagittal series when it has several of a kind (the i-th of each kind)."""
    n = max(len(study.series.get("sag_t1") or []), len(study.series.get("sag_t2") or []), 1)
    out = []
    for i in range(n):
        series, ids = dict(study.series), dict(study.series_ids)
        for kind in ("sag_t1", "sag_t2"):
            if len(study.series.get(kind) or []) > 1:
                j = i % len(study.series[kind])
                series[kind], ids[kind] = [study.series[kind][j]], [study.series_ids[kind][j]]
        out.append(replace(study, series=series, series_ids=ids))
    return out


def point_errors(pred: dict[str, np.ndarray], truth: dict[tuple[str, str], np.ndarray]) -> dict[str, dict]:
    """World distance (mm) between predicted and labelled points: ``{condition: {level: mm}}``."""
    out: dict[str, dict] = {}
    for cond in LUMBAR_CONDITIONS:
        if cond not in pred:
            continue
        row = {}
        for li, level in enumerate(LUMBAR_LEVELS):
            t = truth.get((cond, level))
            p = pred[cond][li]
            if t is not None and np.all(np.isfinite(p)):
                row[level] = round(float(np.linalg.norm(p - t)), 2)
        out[cond] = row
    return out


def summarize_point_errors(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean point error in mm per condition group and per level over studies."""
    rows = [{"group": c.split("_", 1)[1] if c.startswith(("left", "right")) else c, "level": lv, "mm": mm}
            for r in results for c, levels in (r.get("point_error_mm") or {}).items()
            for lv, mm in levels.items()]
    if not rows:
        return {}
    df = pd.DataFrame(rows)
    return {"mean_mm": round(float(df.mm.mean()), 2), "median_mm": round(float(df.mm.median()), 2),
            "by_group": {g: round(float(v), 2) for g, v in df.groupby("group").mm.mean().items()},
            "by_level": {lv: round(float(v), 2) for lv, v in df.groupby("level").mm.mean().items()},
            "points": len(df)}


def probs_of(results: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """``{study: (25, 3)}`` from per-study result dicts."""
    return {str(r["study"]): np.array([[r["grades"][c][g] for g in LUMBAR_GRADES] for c in lumbar_columns()])
            for r in results}


def predict_lumbar(study_dir: str | Path, model_dir: str | Path, *, device: str | None = None,
                   precision: str | None = None, compile: bool | None = None, tta: bool | None = None,
                   folds: list[int] | None = None, strict: bool = False) -> StudyResult:
    """Predict one lumbar MRI study folder (one folder per series) with a trained run folder.

    Raises:
        StudyRefusedError: the study fails an input rule (any warning too with ``strict``).
    """
    runtime, tta = run_inference_options(model_dir, device=device, precision=precision, compile=compile, tta=tta)
    return LumbarPredictor(model_dir, folds=folds, runtime=runtime, tta=tta, strict=strict).predict_study(study_dir)


def _frames(results: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Kaggle submission (``row_id`` + three grades) and the wide table (one row per study)."""
    from spinelab.metrics import lumbar_submission_frame

    probs = probs_of(results)
    wide = pd.DataFrame({"study_id": list(probs),
                         **{f"{c}_{g}": [p[j, k] for p in probs.values()]
                            for j, c in enumerate(lumbar_columns())
                            for k, g in enumerate(LUMBAR_GRADES)}})
    return lumbar_submission_frame(probs), wide


def _evaluate(results: list[dict[str, Any]], label_path: Path, out: Path) -> Path:
    return evaluate_lumbar_predictions(probs_of(results), label_path, out,
                                       point_summary=summarize_point_errors(results))


def _truth_points(input: Path, split: str) -> Any:
    """A function study -> labelled world points when the dataset has coordinates, else ``None``."""
    from spinelab.data.lumbar_layout import read_lumbar_coordinates
    from spinelab.tasks.lumbar.studies import instance_index

    name = {"train": "train_label_coordinates.csv", "test": "test_label_coordinates.csv"}.get(split)
    if name is None or not (input / name).is_file():
        return None
    coords = read_lumbar_coordinates(input / name)  # the one reader: ids checked, condition/level as keys

    def lookup(study: LumbarStudy) -> dict[tuple[str, str], np.ndarray]:
        vols = {sid: v for k in study.series
                for sid, v in zip(study.series_ids[k], study.series[k], strict=True)}
        out = {}
        for r in coords[coords.study_id == study.study_id].itertuples(index=False):
            vol = vols.get(r.series_id)
            d = instance_index(vol, int(r.instance_number)) if vol is not None else None
            if d is not None:
                out[(r.condition, r.level)] = vol.voxel_to_world(np.array([d, r.y, r.x], dtype=np.float64))
        return out

    return lookup


def evaluate_lumbar_predictions(probs: dict[str, np.ndarray], label_path: Path, out: Path, *,
                                point_summary: dict[str, Any] | None = None) -> Path:
    """``lumbar_score`` (with its parts), the weight-optimal constant on the same labels and point errors."""
    from spinelab.data.lumbar_layout import read_lumbar_labels
    from spinelab.metrics import lumbar_score_details, lumbar_submission_frame, lumbar_weight_optimal_constant

    truth = read_lumbar_labels(label_path)  # the one reader: ids as text and checked; the metric checks grades
    truth = truth[truth.study_id.isin(probs)].reset_index(drop=True)
    result: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "labels": str(label_path), "studies": len(truth)}
    if len(truth):
        sub = lumbar_submission_frame({s: probs[s] for s in truth.study_id})
        result.update(lumbar_score_details(truth, sub, submission_name="submission.csv",
                                           solution_name=label_path))
        constant = lumbar_score_details(truth, lumbar_weight_optimal_constant(truth))
        result["weight_optimal_constant_score"] = constant["score"]
        result["relative_improvement"] = 1 - result["score"] / constant["score"]
        result["lumbar_score"] = result.pop("score")
    if point_summary:
        result["point_error_mm"] = point_summary
    return atomic_write_json(out / "evaluation.json", result)


def read_oof(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's out-of-fold grades (``oof_submission.csv``) as the wide table (indexed by study, the 75
    ``{condition}_{level}_{grade}`` columns) and the labels of its dataset's train.csv.

    Raises:
        InputError: the run has no ``oof_submission.csv`` (trained without held-out folds), or its dataset's
            train.csv is not there.
    """
    from spinelab.data.lumbar_layout import read_lumbar_labels

    path = Path(run_dir) / "oof_submission.csv"
    if not path.is_file():
        raise InputError(path, "no out-of-fold predictions: train with held-out folds (--fold all or 0,1,..)")
    sub = pd.read_csv(path, dtype={"row_id": str})
    if not {"row_id", *LUMBAR_GRADES} <= set(sub.columns):
        raise InputError(path, f"expected row_id,{','.join(LUMBAR_GRADES)}; got {list(sub.columns)}")
    columns = lumbar_columns()
    n = len(columns)
    if len(sub) % n:
        raise InputError(path, f"{len(sub)} rows is not 25 per study")
    suffix = f"_{columns[0]}"
    studies = [r[: -len(suffix)] for r in sub.row_id.iloc[::n]]
    if sub.row_id.tolist() != [f"{s}_{c}" for s in studies for c in columns]:
        raise InputError(path, "rows are not 25 per study in sample-submission order")
    values = sub[list(LUMBAR_GRADES)].to_numpy(np.float64).reshape(len(studies), n * len(LUMBAR_GRADES))
    wide = pd.DataFrame(values, index=pd.Index(studies, name="study_id"),
                        columns=[f"{c}_{g}" for c in columns for g in LUMBAR_GRADES])
    labels = read_lumbar_labels(Path(read_run_config(run_dir).data.dataset_dir) / "train.csv")
    return wide, labels


def score_wide(labels: pd.DataFrame, wide: pd.DataFrame) -> float:
    """The competition metric of per-study grades ``wide`` (indexed by study) on those studies' labels."""
    from spinelab.metrics import lumbar_score, lumbar_submission_frame

    truth = labels[labels.study_id.isin(wide.index)].reset_index(drop=True)
    return float(lumbar_score(truth, lumbar_submission_frame(wide.loc[truth.study_id])))


#: What the lumbar task gives the prediction path: study folders of series folders, the submission, the metric.
OUTPUT = TaskOutput(nested=True, frames=_frames, evaluate=_evaluate, oof=read_oof, score_wide=score_wide,
                    refused_options={
    "series": "--series applies to cervical studies; lumbar series are chosen by kind (descriptions, then "
              "image plane and TR/TE/TI)"})
