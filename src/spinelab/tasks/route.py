"""The route contract: what a recipe declares so that one path trains it and one path predicts with it.

A ``Route`` (``cervical/slices``, ``lumbar/points``, ...) names its config class, its ``Training`` (the steps in
order: stages trained fold by fold and the between-stage steps) and its predictor class. A ``Task`` (cervical,
lumbar) owns what every route of the task shares: how studies are found, the submission format, the metric
and the report. Heavy parts are given as ``"module:attribute"`` strings and imported on use, so the catalog
costs nothing to import and loading a predictor never imports the training code.

``train_route`` is the one training path and ``spinelab.infer.batch.predict_dataset`` the one prediction path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from spinelab.errors import ConfigError

if TYPE_CHECKING:
    from spinelab.infer.result import StudyResult

__all__ = ["Route", "Task", "Demo", "Training", "Step", "TaskOutput", "Predictor", "resolve", "train_route"]


def resolve(ref: Any) -> Any:
    """The object a ``"package.module:attribute"`` string names; anything else is returned as is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class Predictor(Protocol):
    """What every route's predictor provides: built once from a run folder, then one call per study."""

    cfg: Any

    def __init__(self, run_dir: str | Path, *, folds: list[int | None] | None = None, runtime: Any = None,
                 tta: bool = True, strict: bool = False) -> None: ...

    @property
    def model_info(self) -> dict[str, Any]: ...

    def predict_study(self, study: str | Path, study_id: str | None = None, **options: Any) -> StudyResult:
        """The study's result; ``studies/<id>.json`` is its ``to_json()``."""

    def fallback(self, study_id: str, error: str) -> StudyResult:
        """A valid result for a study that could not be predicted (the training prior), status ``failed``."""


@dataclass(frozen=True)
class Step:
    """One step of a route's training, in order.

    Args:
        name: the ``--stage`` name that selects it (several steps may share one, e.g. three point models).
        stages: ``(cfg, run_dir, context) -> Stage, ...`` (built one by one as they train) trained for every
            requested fold; ``None`` for a between-stage step.
        run: a between-stage step ``(cfg, run_dir, context, progress) -> Any`` (e.g. localising every training
            study with stage 1 before stage 2 trains on the crops).
        needed_by: the stage names a between-stage step runs for (besides ``all``).
        optional: ``cfg -> bool``: whether ``--stage all`` runs this step (selecting it by name always does).
    """

    name: str
    stages: Callable[[Any, Path, Any], Iterable[Any]] | None = None
    run: Callable[[Any, Path, Any, bool], Any] | None = None
    needed_by: tuple[str, ...] = ()
    optional: Callable[[Any], bool] | None = None

    def selected(self, stage: str, cfg: Any) -> bool:
        """Whether ``--stage stage`` runs this step."""
        if self.stages is None:
            return stage == "all" or stage in self.needed_by
        if stage == "all":
            return self.optional is None or bool(self.optional(cfg))
        return stage == self.name


@dataclass(frozen=True)
class Training:
    """How a route trains.

    Args:
        setup: ``(cfg, run_dir, progress) -> (cfg, context)``: data prepared (cache, folds, labels) and the run
            folder's own files written (folds.csv, targets.json, prior.json, ...); ``context`` is handed to
            every step (e.g. the study table).
        steps: in order.
        finish: ``(cfg, run_dir, context, stage, folds, progress) -> None``: the CV scores, after the steps.
    """

    setup: Callable[[Any, Path, bool], tuple[Any, Any]]
    steps: tuple[Step, ...]
    finish: Callable[[Any, Path, Any, str, list[int | None], bool], Any] | None = None

    @property
    def stage_names(self) -> list[str]:
        """The names ``--stage`` accepts besides ``all``, in training order."""
        return list(dict.fromkeys(s.name for s in self.steps if s.stages is not None))


@dataclass(frozen=True)
class TaskOutput:
    """What the prediction path needs from a task: discovery, submission, evaluation.

    Args:
        nested: studies are folders of series folders (lumbar) rather than series (cervical).
        frames: ``results -> (submission frame, predictions frame)``.
        evaluate: ``(results, label_path, out) -> evaluation.json path``.
        check_input: ``(input, split, studies) -> None``: notes about the input before the loop (optional).
        refused_options: predict options this task refuses, with the one-line reason.
        oof: ``run_dir -> (wide, labels)``: a run's out-of-fold predictions as ``frames``' wide table (indexed by
            study id) and their labels in train.csv format (ensemble weights are fitted on them).
        score_wide: ``(labels, wide) -> float``: the task's metric of a wide table (lower is better).
    """

    nested: bool
    frames: Callable[[list[dict[str, Any]]], tuple[Any, Any]]
    evaluate: Callable[[list[dict[str, Any]], Path, Path], Path]
    check_input: Callable[[Path, str, list[tuple[str, Path]]], None] | None = None
    refused_options: dict[str, str] = field(default_factory=dict)
    oof: Callable[[Path], tuple[Any, Any]] | None = None
    score_wide: Callable[[Any, Any], float] | None = None


@dataclass(frozen=True)
class Route:
    """One recipe of a task. ``config``, ``training`` and ``predictor`` may be ``"module:attribute"`` strings."""

    task: str
    name: str
    config: Any
    training: Any
    predictor: Any

    @property
    def key(self) -> str:
        """``task/name``, e.g. ``cervical/slices``."""
        return f"{self.task}/{self.name}"


@dataclass(frozen=True)
class Demo:
    """What ``python -m spinelab.demo`` runs for a task: a synthetic dataset, a recipe and the score it prints.

    Args:
        synthetic: ``(out, studies=, test_studies=, size=, seed=) -> Path`` writing a synthetic dataset in the
            task's Kaggle layout, or ``"module:attribute"``.
        size: slice size of the synthetic studies, in pixels.
        recipe: the packaged recipe the demo trains (``spinelab.configs.recipe_path`` name).
        score: the ``evaluation.json`` key of the test score (lower is better).
        baseline: the ``evaluation.json`` key of the constant the score is compared with.
        studies: training studies of the synthetic dataset (``--studies`` overrides it).
        test_studies: test studies it is scored on (``--test-studies`` overrides it): enough that their
            prevalence, which the constant baseline is fitted to, stays near the training rate.
    """

    synthetic: Any
    size: int
    recipe: str
    score: str
    baseline: str
    studies: int = 40
    test_studies: int = 16


@dataclass(frozen=True)
class Task:
    """A task: its routes share the label file, the folds, the study format, the submission, the metric and the
    report. The callables may be ``"module:attribute"`` strings (imported on use, see ``resolve``).

    Args:
        output: the prediction path's ``TaskOutput``.
        report: ``(predictions=, input=, out=, model=) -> index path``.
        id_column: the study id column of train.csv, folds.csv and the submission's row ids.
        targets: the label columns of train.csv (with ``id_column`` they tell a train.csv's task).
        read_labels: ``(path, drop=) -> DataFrame``: the one reader of the task's train.csv format.
        stratify: ``(labels, source=) -> (n_studies, n_labels) uint8``: the matrix the folds are stratified on.
        score: ``(solution, submission, submission_name=, solution_name=) -> float``: the competition metric.
    """

    name: str
    default_route: str
    output: Any
    report: Any = None
    demo: Demo | None = None  # what ``python -m spinelab.demo`` runs (tasks without one are not in the demo)
    routes: dict[str, Route] = field(default_factory=dict)
    id_column: str = "study_id"
    targets: tuple[str, ...] = ()
    read_labels: Any = None
    stratify: Any = None
    score: Any = None


def train_route(route: Route, cfg: Any, run_dir: str | Path, *, fold: str = "all", stage: str = "all",
                resume: bool = False, progress: bool = True) -> Path:
    """Train ``route`` for the requested folds and stages into ``run_dir``: the one training path.

    Options and inputs are checked before anything is built or written: an unknown stage, a bad fold
    specification, a dataset that is not there.

    Args:
        fold: ``"all"`` (each fold in turn), ``"full"`` (all data, no validation) or ``"0"``, ``"0,1"``.
        stage: ``"all"`` or one of the route's stage names.
        resume: continue killed folds from their last checkpoint.
    """
    from spinelab.config.load import save_config
    from spinelab.data.prepare import check_dataset, fold_count
    from spinelab.train.provenance import start_provenance
    from spinelab.train.ranks import connect, disconnect, is_distributed, on_rank_zero
    from spinelab.train.run import parse_fold_spec, train_folds
    from spinelab.train.run_folder import write_run_format

    training: Training = resolve(route.training)
    names = training.stage_names
    if stage != "all" and stage not in names:
        raise ConfigError(f"unknown {route.task} stage {stage!r}; choose {_choices(['all', *names])}")
    folds = parse_fold_spec(fold, fold_count(cfg))
    _check_model_sections(cfg)
    check_dataset(cfg)
    run_dir = Path(run_dir)

    def prepare() -> tuple[Any, Any]:
        prepared, context = training.setup(cfg, run_dir, progress)
        save_config(prepared, run_dir / "config.yaml")
        write_run_format(run_dir)
        start_provenance(run_dir, accelerator=prepared.trainer.accelerator)
        return prepared, context

    # Under DDP only global rank 0 prepares and writes the run folder; the others wait for it and get its
    # config and context (spinelab.train.ranks); every process trains.
    joined = is_distributed()  # a caller's own process group is the caller's to end
    connect(cfg.trainer)
    cfg, context = on_rank_zero(prepare)
    kw: dict[str, Any] = {"trainer_cfg": cfg.trainer, "resume": resume, "progress": progress}
    for step in training.steps:
        if not step.selected(stage, cfg):
            continue
        if step.stages is not None:
            for s in step.stages(cfg, run_dir, context):
                train_folds(s, folds, **kw)
        elif step.run is not None:
            on_rank_zero(step.run, cfg, run_dir, context, progress)
    if training.finish is not None:
        on_rank_zero(training.finish, cfg, run_dir, context, stage, folds, progress)
    if not joined:
        disconnect()
    return run_dir


def _check_model_sections(cfg: Any) -> None:
    """Each stage section's model arguments against its builder's signature, before any work (a wrong key
    would otherwise surface only when that stage's model is built, after the stages before it trained)."""
    from spinelab.config.schema import ModelConfig
    from spinelab.models.registry import check_model_args

    for name in type(cfg).model_fields:
        model = getattr(getattr(cfg, name), "model", None)
        if isinstance(model, ModelConfig):
            check_model_args(model.name, model.builder_args())


def _choices(names: Sequence[str]) -> str:
    """``a, b or c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"
