"""The route's training steps: a round beyond ``rounds`` and an unknown stage are one clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spinelab import api
from spinelab.errors import ConfigError
from spinelab.train.run_folder import read_run_config


def test_a_round_beyond_the_recipe_and_an_unknown_stage_are_refused(fracseg_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(fracseg_run, run, ignore=shutil.ignore_patterns("fracture_seg_r2", "seg"))
    cfg = read_run_config(run)
    with pytest.raises(ConfigError, match="set rounds: 3"):
        api.train(cfg, run_dir=run, fold="0", stage="fracture_seg_r3", progress=False)
    assert not (run / "fracture_seg_r3" / "labels").exists()  # rounds: 2, so no labels were made for round 3
    with pytest.raises(ConfigError, match="fracture_seg_r2"):
        api.train(cfg, run_dir=run, fold="0", stage="fracture", progress=False)
