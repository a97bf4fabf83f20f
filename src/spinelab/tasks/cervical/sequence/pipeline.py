"""How the ``cervical/sequence`` route trains (``TRAINING``, run by ``tasks.route.train_route``): the slice
route's data preparation and stage 1 (reused as they are), the slice-level labels, one slice model and one study
head per seed, then the cross-validated scores of the seeds' mean (``oof.csv``, ``cv_scores.json``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.registry import CERVICAL_TARGETS
from spinelab.tasks.route import Step, Training

__all__ = ["TRAINING", "write_sequence_cv_scores", "parse_seeds", "apply_seeds"]

log = logging.getLogger("spinelab")
CV_SCHEMA_VERSION = 1


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (``spinelab train --seeds``).

    Raises:
        ConfigError: not a comma-separated list of distinct non-negative integers.
    """
    from spinelab.errors import ConfigError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct non-negative integers, got {text!r}")
    return seeds


def apply_seeds(cfg: Any, text: str) -> Any:
    """``cfg`` with ``slices.seeds`` from ``--seeds 0,1,2``.

    Raises:
        ConfigError: the seeds are malformed, or the recipe's route has no seeds (not ``cervical/sequence``).
    """
    from spinelab.errors import ConfigError

    seeds = parse_seeds(text)
    if not hasattr(getattr(cfg, "slices", None), "seeds"):
        raise ConfigError(f"--seeds: route {cfg.task}/{getattr(cfg, 'route', '?')} trains no seed ensemble; "
                          "it is an option of route cervical/sequence")
    cfg.slices.seeds = seeds
    return cfg


def _setup(cfg: Any, run_dir: Path, progress: bool) -> tuple[Any, None]:
    """The slice route's data preparation (cache, folds, derived labels) and run files."""
    from spinelab.tasks.cervical.pipeline import prepare_cervical_data, write_cervical_run_files

    cfg = prepare_cervical_data(cfg, run_dir, progress=progress)
    write_cervical_run_files(cfg, run_dir)
    return cfg, None


def _stage1(cfg: Any, run_dir: Path, context: Any = None) -> list[Any]:
    """The slice route's stage 1 (``stage1``), as it is."""
    from spinelab.tasks.cervical.localization import LocalizerStage

    return [LocalizerStage(cfg, run_dir)]


def _labels(cfg: Any, run_dir: Path, context: Any = None, progress: bool = True) -> Path:
    from spinelab.tasks.cervical.sequence.labels import write_slice_labels

    return write_slice_labels(cfg, run_dir, context, progress)


def _frames(cfg: Any, run_dir: Path, context: Any = None) -> list[Any]:
    from spinelab.tasks.cervical.sequence.frames_stage import SliceFrameStage

    return [SliceFrameStage(cfg, run_dir)]


def _slices(cfg: Any, run_dir: Path, context: Any = None) -> list[Any]:
    from spinelab.tasks.cervical.sequence.slice_stage import slice_stages

    return slice_stages(cfg, run_dir, context)


def _study(cfg: Any, run_dir: Path, context: Any = None) -> list[Any]:
    from spinelab.tasks.cervical.sequence.study_stage import study_stages

    return study_stages(cfg, run_dir, context)


def write_sequence_cv_scores(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """The seeds' mean of the study heads' held-out predictions (``oof.csv``) and its scores (``cv_scores.json``,
    with each seed's own under ``seeds``)."""
    from spinelab.metrics import cervical_prevalence_constant, cervical_score
    from spinelab.tasks.cervical.fracture import evaluate_cervical
    from spinelab.tasks.cervical.sequence.study_stage import study_stage_name

    per_seed: dict[str, pd.DataFrame] = {}
    for seed in cfg.slices.seeds:
        name = study_stage_name(seed)
        frames = [pd.read_csv(p, dtype={"StudyInstanceUID": str})
                  for p in sorted((run_dir / name).glob("fold_*/oof.csv"))]
        if frames:
            per_seed[name] = pd.concat(frames, ignore_index=True)
    if not per_seed:
        return {}
    truth_cols = [f"true_{t}" for t in CERVICAL_TARGETS]
    stacked = pd.concat(per_seed.values(), ignore_index=True)
    oof = stacked.groupby("StudyInstanceUID", sort=True)[list(CERVICAL_TARGETS) + truth_cols].mean().reset_index()
    atomic_write_csv(run_dir / "oof.csv", oof)
    scores: dict[str, Any] = {"schema_version": CV_SCHEMA_VERSION, "studies": len(oof), **evaluate_cervical(oof)}
    truth = oof[["StudyInstanceUID", *truth_cols]]
    truth.columns = ["StudyInstanceUID", *CERVICAL_TARGETS]
    constant = float(cervical_score(truth, cervical_prevalence_constant(truth)))
    scores["prevalence_constant_score"] = constant
    scores["relative_improvement"] = 1 - scores["competition_score"] / constant
    scores["seeds"] = {name: evaluate_cervical(frame) for name, frame in per_seed.items()}
    atomic_write_json(run_dir / "cv_scores.json", scores)
    return scores


def _finish(cfg: Any, run_dir: Path, context: Any, stage: str, folds: list[int | None], progress: bool) -> None:
    if stage in ("all", "study"):
        write_sequence_cv_scores(cfg, run_dir)


#: Stage 1 of the slice route; the slice-level labels (out-of-fold stage-1 ratios x labels, boxes, z-ranges);
#: the optional frame pre-training of the slice CNN on single slices (``frames``); the slice models (one per
#: seed); the study heads on their frozen, cached CNN embeddings; the CV scores.
TRAINING = Training(
    setup=_setup,
    steps=(
        Step("stage1", stages=_stage1),
        Step("labels", run=_labels, needed_by=("frames", "slices", "study")),
        Step("frames", stages=_frames, optional=lambda cfg: cfg.frames.enabled),
        Step("slices", stages=_slices),
        Step("study", stages=_study),
    ),
    finish=_finish,
)
