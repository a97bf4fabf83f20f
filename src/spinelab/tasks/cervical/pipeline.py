"""Train the cervical pipeline end to end: cache, labels, folds, stage 1, localisation, [frames,] stage 2, CV scores."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.config.load import save_config
from spinelab.config.schema import CervicalConfig
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.metrics import cervical_prevalence_constant, cervical_score
from spinelab.registry import CERVICAL_TARGETS
from spinelab.tasks.cervical.fracture import FractureStage, evaluate_cervical
from spinelab.tasks.cervical.frames import FrameStage
from spinelab.tasks.cervical.localization import LocalizerStage, localize, summarize_localization
from spinelab.tasks.cervical.studies import CervicalStudies
from spinelab.train.provenance import start_provenance
from spinelab.train.run import load_stage_models, parse_fold_spec, train_folds, trained_folds

__all__ = ["train_cervical", "localize_training_studies", "prepare_cervical_data"]

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


def train_cervical(cfg: CervicalConfig, run_dir: Path, *, fold: str = "all", stage: str = "all",
                   resume: bool = False, progress: bool = True) -> Path:
    """Train stage 1 and/or stage 2 for the requested folds into ``run_dir``.

    Options and inputs are checked before anything is built or written.

    Args:
        cfg: validated cervical config.
        run_dir: run folder (created); its ``config.yaml`` is the model's input contract.
        fold: ``"all"`` (each fold in turn), ``"full"`` (all data, no validation) or ``"0"``, ``"0,1"``.
        stage: ``"all"``, ``"stage1"``, ``"frames"`` (the optional CNN pre-training of stage 2; ``"all"``
            runs it when ``frames.enabled``) or ``"stage2"``.
        resume: continue killed folds from their last checkpoint.
    """
    from spinelab.data.prepare import check_dataset, fold_count

    if stage not in ("all", "stage1", "frames", "stage2"):
        from spinelab.errors import ConfigError

        raise ConfigError(f"unknown cervical stage {stage!r}; choose all, stage1, frames or stage2")
    folds = parse_fold_spec(fold, fold_count(cfg))
    check_dataset(cfg)
    run_dir = Path(run_dir)
    cfg = prepare_cervical_data(cfg, run_dir, progress=progress)
    save_config(cfg, run_dir / "config.yaml")
    start_provenance(run_dir, accelerator=cfg.trainer.accelerator)
    studies = CervicalStudies(cfg)
    atomic_write_csv(run_dir / "folds.csv", studies.folds.rename("fold").reset_index())
    atomic_write_json(run_dir / "targets.json", list(CERVICAL_TARGETS))
    prior = studies.labels[list(CERVICAL_TARGETS)].mean().to_dict()
    atomic_write_json(run_dir / "prior.json", prior)
    kw: dict[str, Any] = {"trainer_cfg": cfg.trainer, "resume": resume, "progress": progress}
    if stage in ("all", "stage1"):
        train_folds(LocalizerStage(cfg, run_dir), folds, **kw)
    if stage in ("all", "frames", "stage2"):
        localize_training_studies(cfg, run_dir, progress=progress)
    if stage == "frames" or (stage == "all" and cfg.frames.enabled):
        train_folds(FrameStage(cfg, run_dir), folds, **kw)
    if stage in ("all", "stage2"):
        train_folds(FractureStage(cfg, run_dir), folds, **kw)
        write_cv_scores(run_dir)
    return run_dir


def localize_training_studies(cfg: CervicalConfig, run_dir: Path, *, progress: bool = True) -> Path:
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
            fold = studies.folds.get(uid)
            if uid in segmented and fold in models:
                chosen = [models[fold]]
            else:
                chosen = [m for f, m in models.items() if f is not None] or list(models.values())
            vol = studies.volume(uid)
            pred = localize(vol, chosen, cfg, tta=False, runtime=runtime)
            out[uid] = summarize_localization(pred, vol, cfg)
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
