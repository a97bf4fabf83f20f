"""A tiny seg3d run (segmentation, out-of-fold crops, type 1 and type 2), trained once per test session through
the command line as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_seg3d_run(tiny_cervical_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``spinelab train cervical -c seg3d_tiny --fold 0``: every step of the route, about 30 s on a CPU."""
    from typer.testing import CliRunner

    from spinelab.cli import app

    run = tmp_path_factory.mktemp("tiny_runs") / "seg3d"
    result = CliRunner().invoke(app, ["train", "cervical", "-c", "seg3d_tiny", "-o", str(run), "--fold", "0",
                                      f"data.dataset_dir={tiny_cervical_dataset}", "trainer.accelerator=cpu",
                                      "seg.train.epochs=2", "vertebra.train.epochs=1", "patient.train.epochs=1"])
    assert result.exit_code == 0, result.output
    return run
