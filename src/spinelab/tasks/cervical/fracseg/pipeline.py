"""How the ``cervical/fracseg`` route trains (``TRAINING``, run by ``tasks.route.train_route``).

Setup: cache, folds and derived labels as the slice route prepares them, the vertebra masks on their CT grids
(``derived/masks``, seg3d's ``write_masks``), then the box pseudo-masks on the crop grid
(``derived/fracture_masks``, ``pseudo_masks.write_fracture_masks``). Then the rounds: stage ``fracture_seg`` on
the box pseudo-masks; for ``k = 2 .. rounds`` the step ``labels_r<k>`` (round ``k - 1``'s out-of-fold maps,
thresholded and kept on the vertebrae labelled fractured) and stage ``fracture_seg_r<k>`` on them. Each round
is a stage of the route: ``--stage fracture_seg_r2`` trains that round alone and ``--resume`` continues it.
With a ``seg`` section, seg3d's vertebra stage ``seg`` trains first (the run then segments the vertebrae it needs
at inference), and with ``pseudo.segment_missing`` the step ``vertebra_masks`` segments the boxed studies without
a vertebra mask and writes their pseudo-masks (``segmented_masks``) before round 1. Finish: each trained
round's held-out fracture Dice (``<stage>/cv_scores.json``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spinelab.config.fracseg import MAX_ROUNDS, FracsegConfig, round_name
from spinelab.errors import InputError
from spinelab.tasks.route import Step, Training

__all__ = ["TRAINING", "round_stages"]

log = logging.getLogger("spinelab")


def _setup(cfg: FracsegConfig, run_dir: Path, progress: bool) -> tuple[FracsegConfig, None]:
    """Data prepared, vertebra masks and box pseudo-masks written; folds.csv, targets.json and prior.json in
    the run folder."""
    from spinelab.tasks.cervical.fracseg.pseudo_masks import write_fracture_masks
    from spinelab.tasks.cervical.pipeline import prepare_cervical_data, write_cervical_run_files
    from spinelab.tasks.cervical.seg3d.pipeline import write_masks

    cfg = prepare_cervical_data(cfg, run_dir, progress=progress)  # type: ignore[arg-type]
    write_masks(cfg, progress=progress)  # type: ignore[arg-type]
    write_fracture_masks(cfg, progress=progress)
    write_cervical_run_files(cfg, run_dir)
    return cfg, None


def round_stages(k: int) -> Any:
    """The stage builder of round ``k`` (imported on use: the stage pulls in MONAI's transforms)."""

    def build(cfg: FracsegConfig, run_dir: Path, context: Any = None) -> list[Any]:
        from spinelab.tasks.cervical.fracseg.fracture_stage import FractureSegStage

        if not Path(cfg.data.dataset_dir).is_dir():
            raise InputError(cfg.data.dataset_dir, "dataset folder does not exist")
        return [FractureSegStage(cfg, run_dir, round=k)]

    return build


def _round_labels(k: int) -> Any:
    """The between-round step before round ``k``: round ``k - 1``'s out-of-fold maps and labels."""

    def run(cfg: FracsegConfig, run_dir: Path, context: Any, progress: bool) -> Any:
        from spinelab.tasks.cervical.fracseg.fracture_stage import write_round_labels

        if cfg.rounds < k:
            return None
        return write_round_labels(cfg, run_dir, k, progress=progress)

    return run


def _finish(cfg: FracsegConfig, run_dir: Path, context: Any, stage: str, folds: list[int | None],
            progress: bool) -> None:
    from spinelab.tasks.cervical.fracseg.fracture_stage import write_round_scores
    from spinelab.tasks.cervical.seg3d.pipeline import write_seg_scores

    if cfg.seg is not None and stage in ("all", "seg"):
        write_seg_scores(run_dir)
    for k in range(1, MAX_ROUNDS + 1):
        if stage in ("all", round_name(k)):
            write_round_scores(run_dir, round_name(k))
    from spinelab.tasks.cervical.fracseg.post import finish_post

    finish_post(cfg, run_dir, stage)


def _seg_stages(cfg: FracsegConfig, run_dir: Path, context: Any = None) -> list[Any]:
    """seg3d's vertebra stage ``seg`` on this run's ``seg`` section."""
    from spinelab.tasks.cervical.seg3d.pipeline import seg_stages

    return seg_stages(cfg, run_dir, context)  # type: ignore[arg-type]


def _segment_missing(cfg: FracsegConfig, run_dir: Path, context: Any, progress: bool) -> Any:
    """Before round 1: the run's ``seg`` stage segments the boxed studies without a vertebra mask."""
    from spinelab.tasks.cervical.fracseg.segmented_masks import missing_vertebra_masks, segment_missing_vertebrae
    from spinelab.train.run_folder import trained_folds

    missing = missing_vertebra_masks(cfg) if cfg.seg is not None and cfg.pseudo.segment_missing else []
    if not missing:
        return None
    if not trained_folds(run_dir, "seg"):
        log.warning("stage seg is not trained: %d boxed studies without a vertebra mask get no pseudo-mask "
                    "(train --stage seg first, or set pseudo.segment_missing=false)", len(missing))
        return None
    return segment_missing_vertebrae(cfg, run_dir, progress=progress)


def _steps() -> tuple[Step, ...]:
    steps = [Step("seg", stages=_seg_stages, optional=lambda cfg: cfg.seg is not None),
             Step("vertebra_masks", run=_segment_missing, needed_by=(round_name(1),)),
             Step(round_name(1), stages=round_stages(1))]
    for k in range(2, MAX_ROUNDS + 1):
        steps.append(Step(f"labels_r{k}", run=_round_labels(k), needed_by=(round_name(k),)))
        steps.append(Step(round_name(k), stages=round_stages(k), optional=lambda cfg, k=k: cfg.rounds >= k))
    from spinelab.tasks.cervical.fracseg.post import POST_STEPS  # the rule and the classifier (issue 13 section 3)

    return (*steps, *POST_STEPS)


#: Stage ``fracture_seg`` (round 1), then ``fracture_seg_r2`` .. ``fracture_seg_r<rounds>``, each after its labels.
TRAINING = Training(setup=_setup, steps=_steps(), finish=_finish)
