"""Finding the studies to predict in an input path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spinelab.errors import InputError
from spinelab.infer.studies import find_input_studies, has_dicom_files
from spinelab.io.dicom_write import write_series
from spinelab.io.volume import Volume


def _series(folder: Path, n: int = 2) -> None:
    write_series(Volume(np.zeros((n, 8, 8), np.int16), np.eye(4)), folder)


def test_kaggle_layout_prefers_test_images(tmp_path: Path) -> None:
    _series(tmp_path / "train_images" / "a")
    _series(tmp_path / "test_images" / "b")
    assert find_input_studies(tmp_path) == ("test", [("b", tmp_path / "test_images" / "b")])


def test_single_study_and_folder_of_studies(tmp_path: Path) -> None:
    _series(tmp_path / "s1")
    _series(tmp_path / "s2")
    (tmp_path / "notes").mkdir()
    assert find_input_studies(tmp_path / "s1") == ("study", [("s1", tmp_path / "s1")])
    split, studies = find_input_studies(tmp_path)
    assert split == "folder" and [s for s, _ in studies] == ["s1", "s2"]
    assert has_dicom_files(tmp_path / "s1") and not has_dicom_files(tmp_path / "notes")


def test_nested_lumbar_study(tmp_path: Path) -> None:
    _series(tmp_path / "study1" / "100")
    _series(tmp_path / "study1" / "200")
    assert find_input_studies(tmp_path / "study1", nested=True)[0] == "study"
    assert find_input_studies(tmp_path, nested=True) == ("folder", [("study1", tmp_path / "study1")])


def test_missing_or_empty_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        find_input_studies(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no study found"):
        find_input_studies(tmp_path / "empty")
