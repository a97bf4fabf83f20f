"""DICOM SR (TID 1500): each vertebra's fracture probability referencing its SEG segment, the patient result,
and the lumbar grades per condition and level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from spinelab.infer.result import StudyResult
from spinelab.io.dicom_seg import build_vertebra_seg, read_source_series
from spinelab.io.dicom_sr import GRADE_CODES, PRIVATE_SCHEME, build_cervical_sr, build_lumbar_sr
from spinelab.io.volume import Volume
from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_LEVELS, VERTEBRAE
from tests.io._dicom_series import tiny_ct_series

AFFINE = np.array([[0, 0, 1.0, -10], [0, 1.5, 0, -20], [2.0, 0, 0, 0], [0, 0, 0, 1]])
PROBS = {**{v: 0.1 * (i + 1) for i, v in enumerate(VERTEBRAE)}, "patient_overall": 0.93}


def _groups(path: Path) -> list[pydicom.Dataset]:
    """The measurement groups (TID 1501 / 1411) of a saved TID 1500 report."""
    ds = pydicom.dcmread(path)
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    measurements = [c for c in ds.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return list(measurements[0].ContentSequence)


def _named(items: list[pydicom.Dataset], code: str) -> list[pydicom.Dataset]:
    return [c for c in items if c.ConceptNameCodeSequence[0].CodeValue == code]


def _tracking(group: pydicom.Dataset) -> str:
    return str(_named(group.ContentSequence, "112039")[0].TextValue)


def test_cervical_sr_probabilities_codes_and_segment_references(tmp_path: Path) -> None:
    source = read_source_series(tiny_ct_series(tmp_path))
    arr = np.zeros((4, 6, 5), np.uint8)
    arr[1, 2:4, 1:3], arr[2, 0:2, 0:2] = 3, 5  # C3 and C5 segmented, the others not
    seg = build_vertebra_seg(Volume(arr, AFFINE, is_label=True), source, {i: f"C{i}" for i in range(1, 8)},
                             algorithm="test", description="test")
    seg.save_as(tmp_path / "seg.dcm")
    result = StudyResult(schema_version=1, study="s1", probabilities=PROBS)
    sr = build_cervical_sr(result, source, seg)
    sr.save_as(tmp_path / "sr.dcm")
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert back.StudyInstanceUID == source.study_uid
    evidence = {str(i.ReferencedSOPInstanceUID) for s in back.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == {str(d.SOPInstanceUID) for d in source.datasets} | {seg.SOPInstanceUID}

    groups = {_tracking(g): g for g in _groups(tmp_path / "sr.dcm")}
    assert list(groups) == [f"{v} fracture" for v in VERTEBRAE] + ["patient fracture"]
    for name in [*VERTEBRAE, "patient"]:
        g = groups[f"{name} fracture"].ContentSequence
        assert _named(g, "121071")[0].ConceptCodeSequence[0].CodeValue == "125605004"  # finding: fracture of bone
        site = _named(g, "363698007")[0].ConceptCodeSequence[0]
        assert site.CodeValue == {"C1": "14806007", "C3": "113205007", "C5": "36978003", "patient": "122494005"}.get(
            name, site.CodeValue)
        value = _named(g, "122157")[0].MeasuredValueSequence[0]  # Probability
        assert float(value.NumericValue) == pytest.approx(PROBS[name if name != "patient" else "patient_overall"])
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "1"
        segment = _named(g, "121191")  # Referenced Segment
        if name in ("C3", "C5"):
            ref = segment[0].ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID
            label = {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence}[ref.ReferencedSegmentNumber]
            assert label == name
        else:
            assert segment == []


def test_cervical_sr_without_a_seg_still_reports_every_vertebra(tmp_path: Path) -> None:
    source = read_source_series(tiny_ct_series(tmp_path))
    sr = build_cervical_sr(StudyResult(schema_version=1, study="s1", probabilities=PROBS), source, None)
    sr.save_as(tmp_path / "sr.dcm")
    groups = _groups(tmp_path / "sr.dcm")
    assert len(groups) == 8 and not any(_named(g.ContentSequence, "121191") for g in groups)


def test_lumbar_sr_grades_per_condition_and_level(tmp_path: Path) -> None:
    source = read_source_series(tiny_ct_series(tmp_path))
    rng = np.random.default_rng(0)
    grades = {}
    for c in LUMBAR_CONDITIONS:
        for lv in LUMBAR_LEVELS:
            p = rng.dirichlet([1, 1, 1])
            grades[f"{c}_{lv}"] = dict(zip(("normal_mild", "moderate", "severe"), map(float, p), strict=True))
    sr = build_lumbar_sr(StudyResult(schema_version=1, study="s1", grades=grades), [source])
    sr.save_as(tmp_path / "sr.dcm")
    groups = _groups(tmp_path / "sr.dcm")
    assert len(groups) == 25
    by_id = {_tracking(g): g.ContentSequence for g in groups}
    g = by_id["Left Neural Foraminal Narrowing L4/L5"]
    finding = _named(g, "121071")[0].ConceptCodeSequence[0]
    assert (finding.CodingSchemeDesignator, finding.CodeValue) == (PRIVATE_SCHEME, "LNFN")
    site = _named(g, "363698007")[0]
    assert site.ConceptCodeSequence[0].CodeValue == "84020006"  # L4/L5 disc
    assert _named(site.ContentSequence, "272741003")[0].ConceptCodeSequence[0].CodeValue == "7771000"  # left
    probs = {m.ConceptNameCodeSequence[0].CodeValue: float(m.MeasuredValueSequence[0].NumericValue)
             for m in g if m.ValueType == "NUM"}
    expected = grades["left_neural_foraminal_narrowing_l4_l5"]
    assert probs == pytest.approx({f"P-{GRADE_CODES[k]}": v for k, v in expected.items()})
    best = max(expected, key=expected.get)
    severity = _named(g, "246112005")[0].ConceptCodeSequence[0]
    assert severity.CodeValue == {"normal_mild": "NM", "moderate": "6736007", "severe": "24484000"}[best]
    spinal = by_id["Spinal Canal Stenosis L5/S1"]
    assert not _named(_named(spinal, "363698007")[0].get("ContentSequence", []), "272741003")  # no side
