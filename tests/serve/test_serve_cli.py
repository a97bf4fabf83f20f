"""``spinelab serve`` on the command line: its help, and a bad model folder refused before anything starts."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from spinelab.cli import app


def test_serve_help_names_the_api() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "/v1/jobs" in result.output and "--input-root" in result.output


def test_a_folder_without_a_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--port", "1"])
    assert result.exit_code == 2
    assert "no config.yaml" in result.output and "Traceback" not in result.output
