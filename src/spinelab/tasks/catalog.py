"""The catalog: task and route names to their ``Task`` and ``Route`` (the only place that lists them).

The CLI, ``spinelab.api``, the config loader and the demo look routes up here; nothing else branches on a task
name. A new recipe is one ``register_route`` call (see README, "Architecture").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spinelab.errors import ConfigError
from spinelab.registry import CERVICAL_TARGETS, lumbar_columns
from spinelab.tasks.route import Demo, Route, Task, TaskOutput, resolve

__all__ = ["register_task", "register_route", "unregister_route", "get_task", "get_route", "task_names",
           "route_of", "route_for_data", "task_output", "report_function", "run_route", "task_function",
           "task_of_columns"]

_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task (its routes are added with ``register_route``)."""
    _TASKS[task.name] = task
    return task


def register_route(route: Route) -> Route:
    """Add (or replace) ``route`` under its task.

    Raises:
        ConfigError: the task is not registered.
    """
    get_task(route.task).routes[route.name] = route
    return route


def unregister_route(task: str, name: str) -> None:
    """Remove a route (tests that register a toy route clean up with this)."""
    get_task(task).routes.pop(name, None)


def task_names() -> list[str]:
    """Registered task names, in registration order."""
    return list(_TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        ConfigError: no such task.
    """
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose from {sorted(_TASKS)}") from None


def get_route(task: str, route: str | None = None) -> Route:
    """The route ``route`` of ``task`` (its default route when ``None``).

    Raises:
        ConfigError: unknown task or route.
    """
    t = get_task(task)
    name = t.default_route if route is None else route
    try:
        return t.routes[name]
    except KeyError:
        raise ConfigError(f"unknown {task} route {name!r}; choose from {sorted(t.routes)}") from None


def route_of(cfg: Any) -> Route:
    """The route of a validated config (its ``task`` and ``route`` fields)."""
    return get_route(cfg.task, getattr(cfg, "route", None))


def route_for_data(task: str, data: dict[str, Any]) -> Route:
    """The route a merged, not yet validated config mapping asks for (``route:`` or the task's default)."""
    route = data.get("route")
    return get_route(task, None if route is None else str(route))


def task_output(task: str) -> TaskOutput:
    """The task's discovery, submission and evaluation (imported on first use)."""
    return resolve(get_task(task).output)


def task_function(task: str, name: str) -> Any:
    """The task's ``read_labels``, ``stratify`` or ``score`` callable (imported on first use).

    Raises:
        ConfigError: unknown task, or the task has no such function.
    """
    ref = getattr(get_task(task), name, None)
    if ref is None:
        raise ConfigError(f"task {task!r} has no {name}")
    return resolve(ref)


def task_of_columns(columns: Any) -> str | None:
    """The task whose train.csv has these columns (its id column and every target), or ``None``."""
    cols = set(map(str, columns))
    for task in _TASKS.values():
        if task.targets and {task.id_column, *task.targets} <= cols:
            return task.name
    return None


def report_function(task: str) -> Any:
    """The task's report writer ``(predictions=, input=, out=, model=) -> Path``."""
    report = get_task(task).report
    if report is None:
        raise ConfigError(f"task {task!r} has no report")
    return resolve(report)


def run_route(run_dir: str | Path) -> Route:
    """The route a run folder (or a model package, verified first) was trained with (its ``config.yaml``)."""
    from spinelab.deploy.manifest import is_package, verify_package
    from spinelab.train.run_folder import read_run_config

    if is_package(run_dir):
        verify_package(run_dir)
    return route_of(read_run_config(run_dir))


register_task(Task("cervical", "slices", output="spinelab.tasks.cervical.predict:OUTPUT",
                   report="spinelab.report.cervical:write_cervical_report",
                   id_column="StudyInstanceUID", targets=tuple(CERVICAL_TARGETS),
                   read_labels="spinelab.data.cervical_layout:read_cervical_labels",
                   stratify="spinelab.data.folds:cervical_stratification",
                   score="spinelab.metrics.cervical:cervical_score",
                   demo=Demo("spinelab.data.synthetic.cervical:generate_cervical_dataset", size=128,
                             recipe="cervical/demo.yaml", score="competition_score",
                             baseline="prevalence_constant_score", studies=100,
                             test_studies=32)))
register_task(Task("lumbar", "points", output="spinelab.tasks.lumbar.predict:OUTPUT",
                   report="spinelab.report.lumbar:write_lumbar_report",
                   id_column="study_id", targets=tuple(lumbar_columns()),
                   read_labels="spinelab.data.lumbar_layout:read_lumbar_labels",
                   stratify="spinelab.data.folds:lumbar_stratification",
                   score="spinelab.metrics.lumbar:lumbar_score",
                   demo=Demo("spinelab.data.synthetic.lumbar:generate_lumbar_dataset", size=64,
                             recipe="lumbar/demo.yaml", score="lumbar_score",
                             baseline="weight_optimal_constant_score")))
register_route(Route("cervical", "slices", config="spinelab.config.schema:CervicalConfig",
                     training="spinelab.tasks.cervical.pipeline:TRAINING",
                     predictor="spinelab.tasks.cervical.predict:CervicalPredictor"))
register_route(Route("cervical", "seg3d", config="spinelab.config.seg3d:Seg3dConfig",
                     training="spinelab.tasks.cervical.seg3d.pipeline:TRAINING",
                     predictor="spinelab.tasks.cervical.seg3d.predict:Seg3dPredictor"))
register_route(Route("cervical", "fracseg", config="spinelab.config.fracseg:FracsegConfig",
                     training="spinelab.tasks.cervical.fracseg.pipeline:TRAINING",
                     predictor="spinelab.tasks.cervical.fracseg.predict:FracsegPredictor"))
register_route(Route("cervical", "sequence", config="spinelab.config.sequence:SequenceConfig",
                     training="spinelab.tasks.cervical.sequence.pipeline:TRAINING",
                     predictor="spinelab.tasks.cervical.sequence.predict:SequencePredictor"))
register_route(Route("lumbar", "points", config="spinelab.config.schema:LumbarConfig",
                     training="spinelab.tasks.lumbar.pipeline:TRAINING",
                     predictor="spinelab.tasks.lumbar.predict:LumbarPredictor"))
