"""The catalog: task and route lookups, the route discriminator of configs, refusals of unknown names."""

from __future__ import annotations

import pytest

from spinelab.config.load import load_config
from spinelab.config.schema import CervicalConfig, LumbarConfig
from spinelab.errors import ConfigError
from spinelab.tasks.catalog import get_route, get_task, route_for_data, route_of, task_names, task_output
from spinelab.tasks.route import resolve


def test_both_tasks_and_their_default_routes_are_listed() -> None:
    assert task_names() == ["cervical", "lumbar"]
    assert get_route("cervical").key == "cervical/slices" and get_route("lumbar").key == "lumbar/points"
    assert resolve(get_route("cervical").config) is CervicalConfig
    assert resolve(get_route("lumbar").config) is LumbarConfig
    assert get_task("lumbar").default_route == "points"


@pytest.mark.parametrize(("task", "route", "stages"), [("cervical", "slices", ["stage1", "frames", "stage2"]),
                                                        ("lumbar", "points", ["stage1", "stage2"])])
def test_a_config_without_route_gets_the_default_route(task: str, route: str, stages: list[str]) -> None:
    cfg = load_config(task)
    assert cfg.route == route and route_of(cfg).name == route
    assert resolve(route_of(cfg).training).stage_names == stages


def test_unknown_task_and_route_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'thoracic'; choose from \['cervical', 'lumbar'\]"):
        get_route("thoracic")
    routes = r"\['fracseg', 'seg3d', 'sequence', 'slices'\]"
    with pytest.raises(ConfigError, match=rf"unknown cervical route 'nope'; choose from {routes}"):
        load_config("cervical", overrides=["route=nope"])
    assert route_for_data("lumbar", {}).name == "points"


def test_task_outputs_say_how_studies_are_laid_out() -> None:
    assert task_output("cervical").nested is False and task_output("lumbar").nested is True
    assert "series" in task_output("lumbar").refused_options


def test_folds_detection_and_score_dispatch_through_the_task_fields(tmp_path) -> None:
    """A task registered from a test alone gets folds, task detection and `score` with no other code change."""
    import numpy as np
    import pandas as pd

    from spinelab.data.folds import detect_task, make_folds
    from spinelab.metrics import score_files
    from spinelab.tasks import catalog
    from spinelab.tasks.catalog import register_task, task_function, task_of_columns
    from spinelab.tasks.route import Task

    def stratify(labels: pd.DataFrame, *, source: object = None) -> np.ndarray:
        return labels[["y", "w"]].to_numpy(np.uint8)

    def score(solution: pd.DataFrame, submission: pd.DataFrame, **names: object) -> float:
        return float((solution.y - submission.p).abs().mean())

    register_task(Task("thoracic", "x", output=None, id_column="case", targets=("y", "w"), stratify=stratify,
                       score=score))
    try:
        labels = pd.DataFrame({"case": [f"c{i}" for i in range(6)], "y": [0, 1] * 3, "w": [0, 0, 1] * 2})
        assert detect_task(labels) == "thoracic" and task_of_columns(["case", "y", "w", "z"]) == "thoracic"
        folds = make_folds(labels, task="thoracic", k=3, seed=0)
        assert folds.index.name == "case" and sorted(folds.value_counts()) == [2, 2, 2]
        labels.to_csv(tmp_path / "sol.csv", index=False)
        pd.DataFrame({"case": labels.case, "p": 0.25}).to_csv(tmp_path / "sub.csv", index=False)
        assert score_files(tmp_path / "sol.csv", tmp_path / "sub.csv", task="thoracic") == pytest.approx(0.5)
        with pytest.raises(ConfigError, match="task 'thoracic' has no read_labels"):
            task_function("thoracic", "read_labels")
    finally:
        catalog._TASKS.pop("thoracic")
    assert task_of_columns(["case", "y", "w"]) is None
