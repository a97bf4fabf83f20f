"""Ids from CSV files must be plain folder names inside the dataset."""

from __future__ import annotations

import pytest

from spinelab.data.study_ids import check_folder_ids, is_folder_name
from spinelab.errors import InputError


@pytest.mark.parametrize("good", ["1.2.826.0.1.3680043.10001", "4003253", 4003253, "abc_def-1"])
def test_plain_names_pass(good: object) -> None:
    assert is_folder_name(good)


@pytest.mark.parametrize("bad", ["..", ".", "", "  ", "../x", "/abs", "a/b", "a\\b", "C:evil", "a\0b"])
def test_paths_are_refused(bad: str) -> None:
    assert not is_folder_name(bad)


def test_error_names_csv_line_and_value() -> None:
    with pytest.raises(InputError, match=r"train\.csv: line 3: study_id '\.\./\.\./etc' is not a folder name"):
        check_folder_ids(["1", "../../etc"], csv="train.csv", column="study_id")
    with pytest.raises(InputError, match="line 2: study_id is empty"):
        check_folder_ids([float("nan")], csv="train.csv", column="study_id")
