"""The spool of the C-STORE SCP: files by study and series, UIDs checked, derived objects not spooled, the
quiet period."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from spinelab.pacs.scp import StudySpool, is_source_image, is_uid
from tests.io._dicom_series import tiny_ct_series


def _first(tmp_path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(tiny_ct_series(tmp_path).iterdir())[0])


def test_images_are_spooled_by_study_and_series_and_go_quiet(tmp_path: Path) -> None:
    ds = _first(tmp_path)
    spool = StudySpool(tmp_path / "spool")
    assert spool.store(ds, ds.file_meta) == ds.StudyInstanceUID
    target = tmp_path / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(target).SOPInstanceUID == ds.SOPInstanceUID
    assert spool.quiet_studies(5.0) == []
    time.sleep(0.2)
    assert spool.quiet_studies(0.1) == [ds.StudyInstanceUID]
    assert spool.quiet_studies(0.1) == []  # reported once


def test_a_uid_that_is_a_path_is_refused(tmp_path: Path) -> None:
    ds = _first(tmp_path)
    ds.SeriesInstanceUID = "../../escape"
    with pytest.raises(ValueError, match="not a UID"):
        StudySpool(tmp_path / "spool").store(ds, ds.file_meta)
    assert not (tmp_path / "escape").exists()
    assert is_uid("1.2.840.10008") and not is_uid("1..2") and not is_uid("1" * 65)


def test_seg_and_sr_are_not_source_images(tmp_path: Path) -> None:
    ds = _first(tmp_path)
    assert is_source_image(ds)
    ds.Modality = "SEG"
    assert not is_source_image(ds)
    ds.Modality, ds.SOPClassUID = "OT", "1.2.840.10008.5.1.4.1.1.88.34"
    assert not is_source_image(ds)
    del ds.PixelData
    ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"
    assert not is_source_image(ds)
