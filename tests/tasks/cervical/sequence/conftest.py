"""A tiny cervical/sequence run with two seeds, trained once per test session through the command line."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sequence_run(tiny_cervical_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``spinelab train cervical -c sequence_tiny --seeds 0,1 --fold 0``: every step of the route, ~15 s on a CPU."""
    from typer.testing import CliRunner

    from spinelab.cli import app

    run = tmp_path_factory.mktemp("tiny_runs") / "sequence"
    result = CliRunner().invoke(app, ["train", "cervical", "-c", "sequence_tiny", "-o", str(run), "--fold", "0",
                                      "--seeds", "0,1", f"data.dataset_dir={tiny_cervical_dataset}",
                                      "trainer.accelerator=cpu", "stage1.train.epochs=1"])
    assert result.exit_code == 0, result.output
    return run
