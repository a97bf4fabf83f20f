"""How the cervical slice route trains (``TRAINING``, run by ``tasks.route.train_route``): cache, labels, folds,
stage 1, the localisation of every training study, [frames,] stage 2, CV scores."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.config.schema import CervicalConfig
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.metrics import cervical_prevalence_constant, cervical_score
from spinelab.registry import CERVICAL_TARGETS
from spinelab.tasks.cervical.fracture import FractureStage, evaluate_cervical
from spinelab.tasks.cervical.frames import FrameStage
from spinelab.tasks.cervical.localization import LocalizerStage, localize, summarize_localization
from spinelab.tasks.cervical.studies import CervicalStudies
from spinelab.tasks.route import Step, Training
from spinelab.train.run import load_stage_models, trained_folds

__all__ = ["TRAINING", "localize_training_studies", "prepare_cervical_data", "write_cv_scores"]

log = logging.getLogger("spinelab")
CV_SCHEMA_VERSION = 1


def prepare_cervical_data(cfg: CervicalConfig, run_dir: Path, *, progress: bool = True) -> CervicalConfig:
    """The volume cache, folds and derived slice labels exist (each built once, then reused)."""
    from spinelab.data.cervical_labels import derive_cervical_labels
    from spinelab.data.prepare import prepare_dataset

    cfg = prepare_dataset(cfg, run_dir, progress=progress)
    derived = Path(cfg.data.derived_dir)
    if not (derived / "slice_labels.csv").is_file():
        derive_cervical_labels(cfg.data.dataset_dir, out=derived, cache_dir=cfg.data.cache_dir, progress=progress)
    return cfg


def write_cervical_run_files(cfg: Any, run_dir: Path) -> None:
    """folds.csv, targets.json and prior.json (the fallback of a failed study) in the run folder; every cervical
    route writes the same three."""
    studies = CervicalStudies(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(run_dir / "folds.csv", studies.folds.rename("fold").reset_index())
    atomic_write_json(run_dir / "targets.json", list(CERVICAL_TARGETS))
    atomic_write_json(run_dir / "prior.json", studies.labels[list(CERVICAL_TARGETS)].mean().to_dict())


def _setup(cfg: CervicalConfig, run_dir: Path, progress: bool) -> tuple[CervicalConfig, None]:
    """Data prepared; the run folder's files written (``write_cervical_run_files``)."""
    cfg = prepare_cervical_data(cfg, run_dir, progress=progress)
    write_cervical_run_files(cfg, run_dir)
    return cfg, None


def _finish(cfg: CervicalConfig, run_dir: Path, context: Any, stage: str, folds: list[int | None],
            progress: bool) -> None:
    if stage in ("all", "stage2"):
        write_cv_scores(run_dir)


def localize_out_of_fold(studies: CervicalStudies, uid: str, models: dict[int | None, Any], segmented: set[str],
                         runtime: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """One training study's volume, stage-1 prediction and its summary: from the model of the fold that held it
    out when stage 1 trained on it (``segmented``), else from every trained fold's model (the full-data model
    only when it is the only one)."""
    fold = studies.folds.get(uid)
    if uid in segmented and fold in models:
        chosen = [models[fold]]
    else:
        chosen = [m for f, m in models.items() if f is not None] or list(models.values())
    vol = studies.volume(uid)
    pred = localize(vol, chosen, studies.cfg, tta=False, runtime=runtime)
    return vol, pred, summarize_localization(pred, vol, studies.cfg)


def localize_training_studies(cfg: CervicalConfig, run_dir: Path, context: Any = None, progress: bool = True
                              ) -> Path:
    """Stage-1 ranges and boxes for every training study (``localization.json``), as the seeds do.

    Studies that stage 1 trained on get the model of the fold where they were held out (out-of-fold);
    all others get the ensemble of every trained fold.
    """
    from spinelab.infer.batch import progress_bar
    from spinelab.infer.runtime import Runtime

    studies = CervicalStudies(cfg)
    s1 = LocalizerStage(cfg, run_dir)
    folds = trained_folds(run_dir, s1.name)
    models = dict(zip(folds, load_stage_models(s1, folds), strict=True))
    segmented = set(studies.segmented_ids())
    runtime = Runtime(device="auto", precision="fp32", channels_last=False)
    out: dict[str, Any] = {}
    with progress_bar() as bar:
        task = bar.add_task("stage-1 localisation", total=len(studies.labels), visible=progress)
        for uid in studies.labels.index:
            out[uid] = localize_out_of_fold(studies, uid, models, segmented, runtime)[2]
            bar.advance(task)
    path = atomic_write_json(run_dir / "localization.json", out)
    found = np.mean([len(s["missing"]) == 0 for s in out.values()]) if out else 0.0
    log.info("stage-1 found all seven vertebrae in %.0f%% of training studies", 100 * found)
    return path


def write_cv_scores(run_dir: Path) -> dict[str, Any]:
    """Concatenate stage-2 out-of-fold predictions and score them (``cv_scores.json``, ``oof.csv``)."""
    frames = [pd.read_csv(p) for p in sorted((run_dir / "stage2").glob("fold_*/oof.csv"))]
    if not frames:
        return {}
    oof = pd.concat(frames, ignore_index=True)
    atomic_write_csv(run_dir / "oof.csv", oof)
    scores: dict[str, Any] = {"schema_version": CV_SCHEMA_VERSION, "studies": len(oof), **evaluate_cervical(oof)}
    truth = oof[["StudyInstanceUID", *(f"true_{t}" for t in CERVICAL_TARGETS)]]
    truth.columns = ["StudyInstanceUID", *CERVICAL_TARGETS]
    constant = float(cervical_score(truth, cervical_prevalence_constant(truth)))
    scores["prevalence_constant_score"] = constant
    scores["relative_improvement"] = 1 - scores["competition_score"] / constant
    per_fold = {}
    for p in sorted((run_dir / "stage2").glob("fold_*/scores.json")):
        per_fold[p.parent.name] = json.loads(p.read_text())
    scores["folds"] = per_fold
    atomic_write_json(run_dir / "cv_scores.json", scores)
    return scores


#: Stage 1, the localisation of every training study (for frames and stage 2), the optional frame pre-training
#: (``--stage all`` runs it when ``frames.enabled``), stage 2, then the CV scores.
TRAINING = Training(
    setup=_setup,
    steps=(
        Step("stage1", stages=lambda cfg, run_dir, _: [LocalizerStage(cfg, run_dir)]),
        Step("localize", run=localize_training_studies, needed_by=("frames", "stage2")),
        Step("frames", stages=lambda cfg, run_dir, _: [FrameStage(cfg, run_dir)],
             optional=lambda cfg: cfg.frames.enabled),
        Step("stage2", stages=lambda cfg, run_dir, _: [FractureStage(cfg, run_dir)]),
    ),
    finish=_finish,
)
