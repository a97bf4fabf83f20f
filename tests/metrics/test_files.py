"""Tests of scoring submission CSV files against solution CSV files (``spinelab score``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinelab.errors import InputError
from spinelab.metrics import (
    cervical_score,
    lumbar_score,
    score_files,
)
from tests.metrics._helpers import lumbar_pair


def test_score_files(tmp_path: Path, small_cervical: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    sol, sub = small_cervical
    sol.to_csv(tmp_path / "train.csv", index=False)
    sub.to_csv(tmp_path / "submission.csv", index=False)
    value = score_files(tmp_path / "train.csv", tmp_path / "submission.csv", task="cervical")
    assert value == pytest.approx(cervical_score(sol, sub), rel=1e-12)
    sub.iloc[:-3].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(InputError, match=r"short\.csv: 3 row ids missing"):
        score_files(tmp_path / "train.csv", tmp_path / "short.csv", task="cervical")
    with pytest.raises(InputError, match="not found"):
        score_files(tmp_path / "nope.csv", tmp_path / "submission.csv", task="cervical")
    # Lumbar: numeric-looking study ids stay strings and match the row ids.
    lsol, lsub = lumbar_pair({"4003253": np.zeros(25, dtype=int)}, np.tile([0.8, 0.1, 0.1], (25, 1)))
    lsol.to_csv(tmp_path / "ltrain.csv", index=False)
    lsub.to_csv(tmp_path / "lsub.csv", index=False)
    lvalue = score_files(tmp_path / "ltrain.csv", tmp_path / "lsub.csv", task="lumbar")
    assert lvalue == pytest.approx(lumbar_score(lsol, lsub), rel=1e-12)
