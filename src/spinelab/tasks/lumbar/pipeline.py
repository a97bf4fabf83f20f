"""How the lumbar points route trains (``TRAINING``, run by ``tasks.route.train_route``): cache, folds, three
stage-1 point models, stage 2, CV scores.

The CV scores are those of the whole pipeline: each held-out fold is predicted by that fold's stage-1 and
stage-2 models from the images alone (``cv_scores.json``: ``lumbar_score``, the weight-optimal constant of
the training folds, and the level-point error in mm per level).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.config.schema import LumbarConfig
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.registry import LUMBAR_GRADES, lumbar_columns
from spinelab.tasks.lumbar.grading import GradingStage
from spinelab.tasks.lumbar.points import AxialPointStage, SagT1PointStage, SagT2PointStage, side_offsets
from spinelab.tasks.lumbar.studies import LumbarStudies
from spinelab.tasks.route import Step, Training
from spinelab.train.run import trained_folds

__all__ = ["TRAINING", "prepare_lumbar_data", "write_cv_scores"]

log = logging.getLogger("spinelab")
CV_SCHEMA_VERSION = 1
STAGE1 = (SagT2PointStage, SagT1PointStage, AxialPointStage)


def prepare_lumbar_data(cfg: LumbarConfig, run_dir: Path, *, progress: bool = True) -> LumbarConfig:
    """The volume cache and folds exist (each built once, then reused)."""
    from spinelab.data.prepare import prepare_dataset

    return prepare_dataset(cfg, run_dir, progress=progress)


def _prior(studies: LumbarStudies, ids: list[str]) -> np.ndarray:
    """Weight-optimal constant ``(25, 3)`` of the studies ``ids`` (the fallback of a failed study)."""
    from spinelab.metrics import lumbar_weight_optimal_constant

    raw = studies.raw_labels[studies.raw_labels.study_id.isin(ids)]
    frame = lumbar_weight_optimal_constant(raw.reset_index(drop=True))
    return frame[list(LUMBAR_GRADES)].to_numpy()[: len(lumbar_columns())]


def _setup(cfg: LumbarConfig, run_dir: Path, progress: bool) -> tuple[LumbarConfig, LumbarStudies]:
    """Data prepared; folds.csv, targets.json, prior.json and geometry.json written; the study table is the
    context every stage shares."""
    cfg = prepare_lumbar_data(cfg, run_dir, progress=progress)
    studies = LumbarStudies(cfg)
    ids = list(studies.labels.index)
    run_dir.mkdir(parents=True, exist_ok=True)
    folds_frame = studies.folds.rename("fold").rename_axis("study_id").reset_index()
    atomic_write_csv(run_dir / "folds.csv", folds_frame)
    atomic_write_json(run_dir / "targets.json", lumbar_columns())
    atomic_write_json(run_dir / "prior.json", _prior(studies, ids).tolist())
    atomic_write_json(run_dir / "geometry.json", {"t1_offsets_mm": side_offsets(studies, ids)})
    return cfg, studies


def _finish(cfg: LumbarConfig, run_dir: Path, studies: LumbarStudies, stage: str, folds: list[int | None],
            progress: bool) -> None:
    if stage in ("all", "stage2") and any(f is not None for f in folds):
        write_cv_scores(cfg, run_dir, studies=studies, progress=progress)


def write_cv_scores(cfg: LumbarConfig, run_dir: Path, *, studies: LumbarStudies | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Predict each held-out fold with its own models (images only) and score it (``cv_scores.json``).

    Writes ``oof_submission.csv`` and ``oof_points.json``; returns the scores.
    """
    from spinelab.infer.batch import progress_bar
    from spinelab.infer.runtime import Runtime
    from spinelab.metrics import lumbar_score_details, lumbar_submission_frame, lumbar_weight_optimal_constant
    from spinelab.tasks.lumbar.predict import LumbarPredictor, summarize_point_errors

    studies = studies or LumbarStudies(cfg)
    names = [cls.name for cls in STAGE1] + [GradingStage.name]
    done = set.intersection(*(set(trained_folds(run_dir, n)) for n in names)) - {None}
    if not done:
        return {}
    results: list[dict[str, Any]] = []
    runtime = Runtime(device="auto", precision="fp32", channels_last=False)
    ids = list(studies.labels.index)
    with progress_bar() as bar:
        for f in sorted(done):
            val = [s for s in ids if studies.folds.get(s) == f]
            predictor = LumbarPredictor(run_dir, folds=[f], runtime=runtime, tta=True)
            task = bar.add_task(f"CV fold {f}", total=len(val), visible=progress)
            for sid in val:
                try:
                    r = predictor.predict_loaded(studies.study(sid), truth=studies.world_points(sid)).to_json()
                except Exception as err:  # a bad study is scored with the prior, as at inference
                    log.warning("CV study %s failed: %s", sid, err)
                    r = predictor.fallback(sid, str(err)).to_json()
                r["fold"] = f
                results.append(r)
                bar.advance(task)
    from spinelab.tasks.lumbar.predict import probs_of

    probs = probs_of(results)
    sub = lumbar_submission_frame(probs)
    atomic_write_csv(run_dir / "oof_submission.csv", sub)
    truth = studies.raw_labels[studies.raw_labels.study_id.isin(probs)].reset_index(drop=True)
    details = lumbar_score_details(truth, sub)
    # The constant a model must beat: fitted on the training folds, scored on the held-out ones.
    const_parts = []
    for f in sorted(done):
        held = truth[truth.study_id.map(studies.folds) == f].reset_index(drop=True)
        train = studies.raw_labels[studies.raw_labels.study_id.map(studies.folds) != f].reset_index(drop=True)
        c = lumbar_weight_optimal_constant(train, studies=held.study_id.tolist())
        const_parts.append(c)
    constant = lumbar_score_details(truth, pd.concat(const_parts, ignore_index=True))
    scores: dict[str, Any] = {
        "schema_version": CV_SCHEMA_VERSION, "studies": len(truth), "folds": sorted(done),
        "lumbar_score": details["score"],
        "parts": {k: v for k, v in details.items() if k != "score"},
        "weight_optimal_constant_score": constant["score"],
        "relative_improvement": 1 - details["score"] / constant["score"],
        "point_error_mm": summarize_point_errors(results),
        "failed": [r["study"] for r in results if r.get("status") == "failed"],
        "stage_scores": {n: {p.parent.name: json.loads(p.read_text())
                             for p in sorted((run_dir / n).glob("fold_*/scores.json"))} for n in names},
    }
    atomic_write_json(run_dir / "oof_points.json", {r["study"]: r.get("point_error_mm") for r in results})
    atomic_write_json(run_dir / "cv_scores.json", scores)
    return scores


#: The three point models (``--stage stage1``), then the grader (``stage2``), then the CV scores of the pipeline.
TRAINING = Training(
    setup=_setup,
    steps=(
        Step("stage1", stages=lambda cfg, run_dir, studies: (cls(cfg, run_dir, studies) for cls in STAGE1)),
        Step("stage2", stages=lambda cfg, run_dir, studies: [GradingStage(cfg, run_dir, studies)]),
    ),
    finish=_finish,
)
