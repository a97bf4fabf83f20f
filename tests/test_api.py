"""The Python API: the same checks as the command line, before any work is done."""

from __future__ import annotations

from pathlib import Path

import pytest

from spinelab import api
from spinelab.config.load import load_config
from spinelab.errors import ConfigError


@pytest.mark.parametrize("task", ["cervical", "lumbar"])
def test_unknown_stage_name_is_refused_before_any_work(task: str, tmp_path: Path) -> None:
    cfg = load_config(task, overrides=[f"data.dataset_dir={tmp_path / 'absent'}"])
    with pytest.raises(ConfigError, match="unknown .* stage 'stage3'"):
        api.train(cfg, run_dir=tmp_path / "run", stage="stage3", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", ["cervical", "lumbar"])
def test_a_model_argument_the_builder_does_not_take_is_refused_before_any_work(task: str, tmp_path: Path) -> None:
    from spinelab.configs import recipe_path

    cfg = load_config(task, [recipe_path(f"{task}/tiny.yaml")],
                      [f"data.dataset_dir={tmp_path / 'absent'}", "stage2.model.kwargs={depth: 3}"])
    with pytest.raises(ConfigError, match="takes no argument 'depth'"):
        api.train(cfg, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_run_folder_of_the_other_task_is_refused_in_one_line(tmp_path: Path) -> None:
    from tests.tasks.fixed_runs import materialize

    run = materialize("lumbar", tmp_path / "run")
    (tmp_path / "in").mkdir()
    with pytest.raises(ConfigError, match="the run folder was trained for lumbar, not cervical"):
        api.predict("cervical", model=run, input=tmp_path / "in", out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_series_is_refused_for_lumbar_and_an_unknown_task_everywhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--series applies to cervical studies"):
        api.predict("lumbar", model=tmp_path, input=tmp_path, out=tmp_path / "out", series="x", progress=False)
    with pytest.raises(ConfigError, match="unknown task 'thoracic'"):
        api.predict("thoracic", model=tmp_path, input=tmp_path, out=tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="unknown task 'thoracic'"):
        api.report("thoracic", predictions=tmp_path, input=tmp_path, out=tmp_path / "out")
