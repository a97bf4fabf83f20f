"""The scale-out options on the command line: --engine, --ray-address, --num-nodes."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from spinelab.cli import app


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return re.sub(r"\x1b\[[0-9;]*m", "", result.output)


def test_cache_build_and_predict_take_an_engine_and_train_takes_nodes() -> None:
    for command in (("cache", "build"), ("predict",)):
        text = _help(*command)
        assert "--engine" in text and "--ray-address" in text and "local" in text and "ray" in text
    assert "--num-nodes" in _help("train")


def test_an_unknown_engine_is_a_usage_error(tmp_path) -> None:
    result = CliRunner().invoke(app, ["cache", "build", str(tmp_path), "-o", str(tmp_path / "c"), "--engine",
                                      "spark"])
    assert result.exit_code == 2 and "spark" in result.output


def test_num_nodes_reaches_the_trainer_config(tmp_path) -> None:
    result = CliRunner().invoke(app, ["train", "cervical", "-c", "tiny", "--num-nodes", "3", "--devices", "2",
                                      "--strategy", "ddp", "--print-config"])
    assert result.exit_code == 0, result.output
    assert re.search(r"num_nodes: 3", result.stdout) and re.search(r"devices: '2'", result.stdout)
