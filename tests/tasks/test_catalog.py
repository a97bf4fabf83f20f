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
    with pytest.raises(ConfigError, match=r"unknown cervical route 'nope'; choose from \['seg3d', 'slices'\]"):
        load_config("cervical", overrides=["route=nope"])
    assert route_for_data("lumbar", {}).name == "points"


def test_task_outputs_say_how_studies_are_laid_out() -> None:
    assert task_output("cervical").nested is False and task_output("lumbar").nested is True
    assert "series" in task_output("lumbar").refused_options
