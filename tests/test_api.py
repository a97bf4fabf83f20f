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
