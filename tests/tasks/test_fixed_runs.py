"""Both routes predict exactly what they predicted before the route refactor, from a fixed run folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from spinelab import api
from tests.tasks.fixed_runs import FIXTURES, materialize

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("task", ["cervical", "lumbar"])
def test_fixed_run_predicts_the_saved_submission(task: str, tiny_cervical_dataset: Path, tiny_lumbar_dataset: Path,
                                                 tmp_path: Path) -> None:
    dataset = {"cervical": tiny_cervical_dataset, "lumbar": tiny_lumbar_dataset}[task]
    run = materialize(task, tmp_path / "run")
    result = api.predict(task, model=run, input=dataset / "test_images", out=tmp_path / "out", device="cpu",
                         precision="fp32", compile=False, progress=False)
    got = pd.read_csv(result["submission"])
    expected = pd.read_csv(FIXTURES / task / "expected_submission.csv")
    assert list(got.columns) == list(expected.columns) and list(got.row_id) == list(expected.row_id)
    value_columns = [c for c in expected.columns if c != "row_id"]
    diff = (got[value_columns] - expected[value_columns]).abs().to_numpy().max()
    assert diff <= 1e-6, f"{task}: largest change {diff:.2e}"
    assert expected[value_columns].to_numpy().std() > 0  # the fixture is not a constant: a change would show
