"""``write_dicom_results`` and ``predict --dicom-out``: SEG and SR per DICOM study, nothing for NIfTI input or a
refused study, and a writer's failure is a warning of the study, never a failed prediction."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from spinelab.infer.dicom_results import SEG_FILE, SR_FILE, write_dicom_results
from spinelab.infer.result import StudyResult
from spinelab.registry import VERTEBRAE
from tests.io._dicom_series import tiny_ct_series

PROBS = {**{v: 0.1 * (i + 1) for i, v in enumerate(VERTEBRAE)}, "patient_overall": 0.9}


@pytest.fixture(scope="module")
def cervical(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The fixed tiny cervical run (slices route) and its two synthetic DICOM test studies."""
    from tests.tasks.fixed_runs import cervical_test_input, materialize

    tmp = tmp_path_factory.mktemp("dicom_results")
    return materialize("cervical", tmp / "run"), cervical_test_input(tmp / "data")


def _sr_probabilities(path: Path) -> dict[str, float]:
    ds = pydicom.dcmread(path)
    groups = [c for c in ds.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"][0].ContentSequence
    out = {}
    for g in groups:
        name = [c.TextValue for c in g.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "112039"][0]
        value = [c for c in g.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "122157"][0]
        out[name.replace(" fracture", "")] = float(value.MeasuredValueSequence[0].NumericValue)
    return out


def test_predict_dicom_out_writes_seg_and_sr_of_each_study(cervical: tuple[Path, Path], tmp_path: Path) -> None:
    from spinelab.cli import app

    run, data = cervical
    out = tmp_path / "pred"
    res = CliRunner().invoke(app, ["-q", "predict", "cervical", "--model", str(run), "-i", str(data / "test_images"),
                                   "-o", str(out), "--dicom-out"])
    assert res.exit_code == 0, res.output
    studies = sorted((data / "test_images").iterdir())
    assert len(studies) == 2
    for study in studies:
        record = json.loads((out / "studies" / f"{study.name}.json").read_text())
        assert record["dicom_files"] == [f"dicom/{study.name}/{SEG_FILE}", f"dicom/{study.name}/{SR_FILE}"]
        seg = pydicom.dcmread(out / "dicom" / study.name / SEG_FILE)
        source = pydicom.dcmread(next(study.iterdir()), stop_before_pixels=True)
        assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study.iterdir()}
        refs = {str(i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                for i in seg.PerFrameFunctionalGroupsSequence}
        assert refs and refs <= sources
        probs = _sr_probabilities(out / "dicom" / study.name / SR_FILE)
        expected = record["probabilities"]
        assert probs == pytest.approx({**{v: expected[v] for v in VERTEBRAE}, "patient": expected["patient_overall"]})


def test_the_ranges_seg_covers_the_localised_slices(cervical: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = cervical
    study = sorted((data / "test_images").iterdir())[0]
    ranges = {"C1": {"start_index": 2, "end_index": 4}, "C2": {"start_index": 5, "end_index": 9}}
    result = StudyResult(schema_version=1, study=study.name, probabilities=PROBS, vertebra_ranges=ranges,
                         crop_box=[10.0, 12.0, 40.0, 44.0])
    files = write_dicom_results(result, study, tmp_path)
    seg = pydicom.dcmread(files[0])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["C1", "C2"]
    frames = {}
    for item in seg.PerFrameFunctionalGroupsSequence:
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frames[number] = frames.get(number, 0) + 1
    assert frames == {1: 3, 2: 5}  # one frame per source slice of each range
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert int(pixels[0].sum()) == 30 * 32  # the crop box's area on every frame


def test_the_seg3d_mask_is_written_when_the_route_attached_it(tmp_path: Path) -> None:
    from spinelab.io.dicom import read_series

    folder = tiny_ct_series(tmp_path)
    volume = read_series(folder, workers=1)
    labels = np.zeros(volume.shape, np.uint8)
    labels[1, 2:4, 1:3], labels[2, 0:2, 0:2] = 1, 8  # C1 and T1
    result = StudyResult(schema_version=1, study="s", probabilities=PROBS)
    result.attachments.update(labels=volume.with_array(labels, is_label=True), series_uid=volume.meta["series_uid"])
    files = write_dicom_results(result, folder, tmp_path / "out")
    seg = pydicom.dcmread(files[0])
    assert [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence] == [
        ("C1", "14806007"), ("T1", "64864005")]
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "spinelab seg3d"


def test_nifti_input_gets_a_warning_and_no_dicom(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from spinelab.io.dicom import read_series
    from spinelab.io.nifti import write_nifti

    nifti = write_nifti(read_series(tiny_ct_series(tmp_path), workers=1), tmp_path / "study.nii.gz")
    result = StudyResult(schema_version=1, study="study", probabilities=PROBS)
    with caplog.at_level(logging.WARNING, logger="spinelab"):
        assert write_dicom_results(result, nifti, tmp_path / "out") == []
    assert "not a DICOM input" in caplog.text and "no DICOM SEG or SR" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("status", ["refused", "failed"])
def test_a_study_given_the_prior_gets_no_dicom(status: str, tmp_path: Path) -> None:
    result = StudyResult(schema_version=1, study="s", probabilities=PROBS, status=status)
    assert write_dicom_results(result, tiny_ct_series(tmp_path), tmp_path / "out") == []


def test_a_writer_failure_is_a_warning_of_the_study(tmp_path: Path) -> None:
    from spinelab.infer.batch import _with_dicom_results

    folder = tiny_ct_series(tmp_path)
    for f in folder.iterdir():  # a series the SEG cannot name
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = ""
        ds.save_as(f)
    one = _with_dicom_results(lambda sid, path: StudyResult(schema_version=1, study=sid, probabilities=PROBS),
                              tmp_path / "out", series=None)
    result = one("s", folder)
    assert result.status == "warning"
    assert "no DICOM results" in result.warnings[-1] and "empty StudyInstanceUID" in result.warnings[-1]
    assert result.probabilities == PROBS


def test_lumbar_predict_dicom_out_writes_the_grades_sr(tmp_path: Path) -> None:
    from spinelab import api
    from tests.tasks.fixed_runs import lumbar_test_input, materialize

    run, data = materialize("lumbar", tmp_path / "run"), lumbar_test_input(tmp_path / "data")
    study = sorted((data / "test_images").iterdir())[0]
    api.predict("lumbar", model=run, input=study, out=tmp_path / "pred", dicom_out=True, progress=False)
    record = json.loads((tmp_path / "pred" / "studies" / f"{study.name}.json").read_text())
    assert record["dicom_files"] == [f"dicom/{study.name}/{SR_FILE}"]
    sr = pydicom.dcmread(tmp_path / "pred" / record["dicom_files"][0])
    groups = [c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"][0].ContentSequence
    assert len(groups) == 25
    g = [g for g in groups if any(getattr(c, "TextValue", "") == "Spinal Canal Stenosis L4/L5"
                                  for c in g.ContentSequence)][0]
    probs = [float(c.MeasuredValueSequence[0].NumericValue) for c in g.ContentSequence if c.ValueType == "NUM"]
    assert probs == pytest.approx(list(record["grades"]["spinal_canal_stenosis_l4_l5"].values()))
    series = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
              for d in study.iterdir() for f in list(d.iterdir())[:1]}
    evidence = {str(r.SeriesInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence}
    assert evidence == series and len(series) >= 3


def test_the_ranges_seg_of_a_flipped_series_lands_on_the_right_pixels(tmp_path: Path) -> None:
    """Rows running anterior and columns to the patient's right: the canonical grid reverses both, so the
    canonical crop box's top-left corner is the source frames' bottom-right one; canonical slice 0 (the most
    cranial) is the highest z."""
    folder = tiny_ct_series(tmp_path, rows=6, cols=5, slices=4, iop=(-1, 0, 0, 0, -1, 0))
    result = StudyResult(schema_version=1, study="s", probabilities=PROBS,
                         vertebra_ranges={"C1": {"start_index": 0, "end_index": 0}}, crop_box=[0.0, 0.0, 2.0, 3.0])
    seg = pydicom.dcmread(write_dicom_results(result, folder, tmp_path / "out")[0])
    assert int(seg.NumberOfFrames) == 1
    item = seg.PerFrameFunctionalGroupsSequence[0]
    assert float(item.PlanePositionSequence[0].ImagePositionPatient[2]) == 6.0  # z of the top slice
    frame = seg.pixel_array.reshape(6, 5).astype(bool)
    expected = np.zeros((6, 5), bool)
    expected[3:, 3:] = True  # the last 3 rows and the last 2 columns
    assert np.array_equal(frame, expected)
