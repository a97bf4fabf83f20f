"""Tests of the submission checks shared by both metrics: row order, row-id splitting, error text."""

from __future__ import annotations

import pandas as pd
import pytest

from spinelab.errors import InputError
from spinelab.metrics.common import check_submission, ids_text, split_row_ids


def test_check_submission_returns_floats_in_expected_order() -> None:
    sub = pd.DataFrame({"p": ["0.25", 1, 0], "row_id": ["b", "c", "a"]})
    values = check_submission(sub, ["a", "b", "c"], ["p"], "sub.csv")
    assert values.index.tolist() == ["a", "b", "c"]
    assert values["p"].tolist() == [0.0, 0.25, 1.0]
    assert values["p"].dtype == "float64"


def test_check_submission_names_the_source() -> None:
    sub = pd.DataFrame({"row_id": ["a"], "p": [0.5]})
    with pytest.raises(InputError, match=r"sub\.csv.*1 row ids missing from the submission: b"):
        check_submission(sub, ["a", "b"], ["p"], "sub.csv")


def test_split_row_ids_prefers_the_longest_suffix() -> None:
    # A study id may hold underscores, and one target name may end another ("overall" / "patient_overall").
    parts = split_row_ids(["1.2_3_patient_overall", "1.2_3_overall", "x_C1"], ["overall", "patient_overall", "C1"],
                          "sol.csv")
    assert parts == [("1.2_3", "patient_overall"), ("1.2_3", "overall"), ("x", "C1")]
    with pytest.raises(InputError, match=r"2 row ids do not end in a known target: C1, x_C9"):
        split_row_ids(["C1", "x_C9"], ["C1"], "sol.csv")


def test_ids_text_lists_at_most_ten() -> None:
    assert ids_text(["a", "b"]) == "a, b"
    many = [str(i) for i in range(12)]
    assert ids_text(many) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ... (first 10 of 12)"
