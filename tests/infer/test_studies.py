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


def test_nifti_and_dicom_files_are_one_study_each(tmp_path: Path) -> None:
    from spinelab.io.nifti import write_nifti

    vol = Volume(np.full((3, 8, 8), -1000, np.int16), np.eye(4))
    nii = write_nifti(vol, tmp_path / "scan.nii.gz")
    assert find_input_studies(nii) == ("file", [("scan", nii)])
    dcm = write_series(vol, tmp_path / "series")[0]
    assert find_input_studies(dcm) == ("file", [(dcm.stem, dcm)])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="neither a NIfTI file nor a DICOM file"):
        find_input_studies(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="folder of series folders"):
        find_input_studies(nii, nested=True)
    split, studies = find_input_studies(tmp_path)  # a folder of NIfTI files and study folders
    assert split == "folder" and [s for s, _ in studies] == ["series", "scan"]
    write_nifti(vol, tmp_path / "series.nii")
    with pytest.raises(InputError, match="two studies share the id 'series'"):
        find_input_studies(tmp_path)


def test_read_study_volume_reads_nifti_as_an_image_and_names_the_series_option(tmp_path: Path) -> None:
    from spinelab.errors import SeriesSelectionError
    from spinelab.infer.studies import read_study_volume
    from spinelab.io.nifti import write_nifti

    labels_like = Volume(np.zeros((3, 8, 8), np.int16), np.eye(4))  # integral, few values: looks like labels
    assert not read_study_volume(write_nifti(labels_like, tmp_path / "ct.nii.gz")).is_label
    write_series(labels_like, tmp_path / "two", series_description="A")
    write_series(labels_like, tmp_path / "two", series_description="B", file_names=["b1.dcm", "b2.dcm", "b3.dcm"])
    with pytest.raises(SeriesSelectionError, match="pass --series"):
        read_study_volume(tmp_path / "two")
    assert read_study_volume(tmp_path / "two", series="B").meta["series_description"] == "B"


def test_series_without_suffix_or_preamble_is_found_like_the_reader_finds_it(tmp_path: Path) -> None:
    """One decision for "is this DICOM" (io.files.is_dicom_file): discovery, cache and reader agree."""
    import pydicom

    from spinelab.io.cache import find_series_folders
    from spinelab.io.dicom import read_series

    study = tmp_path / "s1"
    for path in write_series(Volume(np.zeros((3, 8, 8), np.int16), np.eye(4)), study):
        ds = pydicom.dcmread(path)
        path.unlink()
        ds.preamble = None  # no 128-byte preamble and no "DICM": the file starts with the group 0002 meta
        ds.save_as(study / path.stem, enforce_file_format=False)
    names = sorted(p.name for p in study.iterdir())
    assert names and all("." not in n for n in names)
    assert all(p.read_bytes()[128:132] != b"DICM" for p in study.iterdir())
    assert read_series(study).shape == (3, 8, 8)
    assert find_input_studies(study) == ("study", [("s1", study)])
    assert find_input_studies(tmp_path) == ("folder", [("s1", study)])
    assert find_series_folders(tmp_path) == ["s1"]
