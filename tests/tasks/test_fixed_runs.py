"""Both routes predict exactly what they predicted before the route refactor, from a fixed run folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from spinelab import api
from tests.tasks.fixed_runs import FIXTURES, materialize

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.parametrize("task", ["cervical", "lumbar"])
def test_fixed_run_predicts_the_saved_submission(task: str, tta: bool, tiny_cervical_dataset: Path,
                                                 tiny_lumbar_dataset: Path, tmp_path: Path) -> None:
    dataset = {"cervical": tiny_cervical_dataset, "lumbar": tiny_lumbar_dataset}[task]
    run = materialize(task, tmp_path / "run")
    result = api.predict(task, model=run, input=dataset / "test_images", out=tmp_path / "out", device="cpu",
                         precision="fp32", compile=False, tta=tta, progress=False)
    got = pd.read_csv(result["submission"])
    expected = pd.read_csv(FIXTURES / task / ("expected_submission_tta.csv" if tta else "expected_submission.csv"))
    assert list(got.columns) == list(expected.columns) and list(got.row_id) == list(expected.row_id)
    value_columns = [c for c in expected.columns if c != "row_id"]
    diff = (got[value_columns] - expected[value_columns]).abs().to_numpy().max()
    # The CSV holds 6 decimals: a last-digit flip reads back as 1e-6 plus the float error of the difference.
    assert diff <= 1e-6 + 1e-9, f"{task}: largest change {diff:.2e}"
    assert expected[value_columns].to_numpy().std() > 0  # the fixture is not a constant: a change would show


def test_building_a_predictor_imports_neither_lightning_nor_the_training_modules(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.tasks.fixed_runs import REPO

    code = ("import sys\nfrom pathlib import Path\nfrom tests.tasks.fixed_runs import materialize\n"
            "from spinelab.tasks.catalog import get_route\nfrom spinelab.tasks.route import resolve\n"
            "for task in ('cervical', 'lumbar'):\n"
            f"    run = materialize(task, Path({str(tmp_path)!r}) / task)\n"
            "    resolve(get_route(task).predictor)(run, tta=False)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', "
            "'spinelab.train.run', 'spinelab.train.module', 'spinelab.tasks.cervical.pipeline', "
            "'spinelab.tasks.lumbar.pipeline')) and m != 'spinelab.train.run_folder'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip().splitlines()[-1] == "[]"
