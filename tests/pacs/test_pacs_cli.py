"""``spinelab pacs``: the commands exist, and a bad setting or a node that cannot be reached is one line and
exit 2, before anything listens."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from spinelab.cli import app
from tests.pacs.conftest import free_port


def _run(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_pacs_lists_listen_and_pull() -> None:
    res = _run("pacs", "--help")
    assert res.exit_code == 0 and "listen" in res.output and "pull" in res.output


def test_a_bad_config_key_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "pacs.yaml").write_text("aetitle: X\n")
    res = _run("pacs", "listen", "-c", tmp_path / "pacs.yaml")
    assert res.exit_code == 2 and "aetitle" in res.output


def test_pull_with_an_unreachable_pacs_is_exit_2(pacs_run_and_studies: tuple[Path, list[Path]],
                                                 tmp_path: Path) -> None:
    run, _ = pacs_run_and_studies
    res = _run("pacs", "pull", "1.2.3.4", "--model", run, "--port", 0, "--work-dir", tmp_path,
               "--remote-ae", "PACS", "--remote-port", free_port())
    assert res.exit_code == 2
    assert "unreachable" in res.output
