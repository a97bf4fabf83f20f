"""DICOM Comprehensive 3D SR (TID 1500 Measurement Report, highdicom.sr) of a study's predictions.

Cervical: one measurement group per vertebra (finding "Fracture of bone", SCT 125605004; finding site the
vertebra's SNOMED CT code; measurement "Probability", DCM 122157, unit UCUM "1"), referencing its segment of the
SEG when there is one (TID 1411 volumetric group), and a group for the patient (finding site "Cervical spine",
SCT 122494005). Lumbar: one group per condition and level (finding site the disc, SCT ``L1L2Disc`` ..
``L5S1Disc``, with laterality SCT Left / Right for the sided conditions), one probability per grade and a
"Severity" (SCT 246112005) evaluation with the most likely grade (Normal/Mild, SCT Moderate 6736007, SCT Severe
24484000).

The RSNA conditions and the combined "Normal/Mild" grade have no standard code: they are spinelab's own codes
in the private scheme ``99SPINELAB`` (PS3.16 section 8.2: a "99" prefix marks a local scheme), with the
meaning spelled out so a reader needs no lookup table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spinelab import __version__
from spinelab.io.dicom_seg import MANUFACTURER, SourceSeries, quiet_name_warning, vertebra_code
from spinelab.registry import (
    LUMBAR_CONDITION_TITLES,
    LUMBAR_CONDITIONS,
    LUMBAR_GRADE_NAMES,
    LUMBAR_GRADES,
    LUMBAR_LEVEL_TITLES,
    LUMBAR_LEVELS,
    VERTEBRAE,
)

__all__ = ["build_cervical_sr", "build_lumbar_sr", "private_code", "PRIVATE_SCHEME", "CONDITION_CODES",
           "GRADE_CODES"]

PRIVATE_SCHEME = "99SPINELAB"
#: short code values (SH, at most 16 characters) of the private concepts; the meanings spell them out
CONDITION_CODES = {"left_neural_foraminal_narrowing": "LNFN", "left_subarticular_stenosis": "LSS",
                   "right_neural_foraminal_narrowing": "RNFN", "right_subarticular_stenosis": "RSS",
                   "spinal_canal_stenosis": "SCS"}
GRADE_CODES = {"normal_mild": "NM", "moderate": "MOD", "severe": "SEV"}
_DISC_KEYWORDS = {"l1_l2": "L1L2Disc", "l2_l3": "L2L3Disc", "l3_l4": "L3L4Disc", "l4_l5": "L4L5Disc",
                  "l5_s1": "L5S1Disc"}


def private_code(value: str, meaning: str) -> Any:
    """A concept in spinelab's private coding scheme (for what no standard code names)."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def _codes() -> dict[str, Any]:
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return {"fracture": CodedConcept("125605004", "SCT", "Fracture of bone"),
            "probability": codes.DCM.Probability, "unit": codes.UCUM.NoUnits,
            "cervical_spine": codes.SCT.CervicalSpine, "severity": codes.SCT.Severity}


def _observation_context(algorithm: str) -> Any:
    """The observer is a device: spinelab (TID 1004)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=f"spinelab {algorithm}",
                                                       manufacturer_name=MANUFACTURER, model_name=__version__)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _probability(value: float, tracking: str, algorithm: Any) -> Any:
    import highdicom as hd

    c = _codes()
    return hd.sr.Measurement(name=c["probability"], value=float(value), unit=c["unit"], algorithm_id=algorithm,
                             tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=tracking))


def _report(evidence: Sequence[Any], groups: list[Any], *, title: str,
            procedure: Any, algorithm: str, series_number: int) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    report = hd.sr.MeasurementReport(observation_context=_observation_context(algorithm),
                                     procedure_reported=procedure, imaging_measurements=groups,
                                     title=codes.cid7021.ImagingMeasurementReport)
    with quiet_name_warning():
        return hd.sr.Comprehensive3DSR(
            evidence=list(evidence), content=report, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
            series_description=title[:64])


def build_cervical_sr(result: Any, source: SourceSeries, seg: Any | None = None, *, algorithm: str = "cervical",
                      series_number: int = 902) -> Any:
    """The SR of a cervical result: each vertebra's fracture probability (referencing its SEG segment when
    ``seg`` has one) and the patient's.

    Args:
        result: a ``StudyResult`` with ``probabilities`` (C1..C7, ``patient_overall``).
        source: the CT series the result was computed from.
        seg: the SEG written for the same study (``build_vertebra_seg``), or ``None``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    c = _codes()
    algo = hd.sr.AlgorithmIdentification(name=f"spinelab {algorithm}", version=__version__)
    by_label = {}
    if seg is not None:
        for number in seg.segment_numbers:
            by_label[seg.get_segment_description(number).SegmentLabel] = number
    groups = []
    for name in VERTEBRAE:
        p = result.probabilities[name]
        tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{name} fracture")
        site = [hd.sr.FindingSite(vertebra_code(name))]
        measurement = _probability(p, f"{name} fracture probability", algo)
        if name in by_label:
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=hd.sr.ReferencedSegment(  # the whole segment, on the source series
                    sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=by_label[name],
                    source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid)),
                finding_type=c["fracture"], finding_sites=site, algorithm_id=algo, measurements=[measurement]))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_type=c["fracture"], finding_sites=site, algorithm_id=algo,
                measurements=[measurement]))
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="patient fracture"),
        finding_type=c["fracture"], finding_sites=[hd.sr.FindingSite(c["cervical_spine"])], algorithm_id=algo,
        measurements=[_probability(result.probabilities["patient_overall"], "patient fracture probability", algo)]))
    evidence = [*source.datasets, *([seg] if seg is not None else [])]
    return _report(evidence, groups, title="spinelab cervical fracture report",
                   procedure=codes.LN.CTUnspecifiedBodyRegion, algorithm=algorithm, series_number=series_number)


def _grade_codes() -> dict[str, Any]:
    from pydicom.sr.codedict import codes

    return {"normal_mild": private_code(GRADE_CODES["normal_mild"], "Normal/Mild"), "moderate": codes.SCT.Moderate,
            "severe": codes.SCT.Severe}


def build_lumbar_sr(result: Any, sources: Sequence[SourceSeries], *, algorithm: str = "lumbar",
                    series_number: int = 902) -> Any:
    """The SR of a lumbar result: per condition and level, the probability of each grade and the most likely
    grade as a "Severity" evaluation.

    Args:
        result: a ``StudyResult`` with ``grades`` (``{condition}_{level}`` -> grade -> probability).
        sources: the MR series of the study (all are evidence).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    c = _codes()
    algo = hd.sr.AlgorithmIdentification(name=f"spinelab {algorithm}", version=__version__)
    grade_codes = _grade_codes()
    groups = []
    for condition in LUMBAR_CONDITIONS:
        finding = private_code(CONDITION_CODES[condition], LUMBAR_CONDITION_TITLES[condition])
        side = codes.SCT.Left if condition.startswith("left") else codes.SCT.Right \
            if condition.startswith("right") else None
        for level in LUMBAR_LEVELS:
            key = f"{condition}_{level}"
            probs = result.grades[key]
            site = hd.sr.FindingSite(getattr(codes.SCT, _DISC_KEYWORDS[level]), laterality=side)
            measurements = [hd.sr.Measurement(
                name=private_code(f"P-{GRADE_CODES[grade]}", f"Probability of {title}"),
                value=float(probs[grade]), unit=c["unit"], algorithm_id=algo)
                for grade, title in zip(LUMBAR_GRADES, LUMBAR_GRADE_NAMES, strict=True)]
            best = max(LUMBAR_GRADES, key=lambda g: probs[g])
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{LUMBAR_CONDITION_TITLES[condition]} {LUMBAR_LEVEL_TITLES[level]}"),
                finding_type=finding, finding_sites=[site], algorithm_id=algo, measurements=measurements,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(c["severity"], grade_codes[best])]))
    images = [ds for s in sources for ds in s.datasets]
    return _report(images, groups, title="spinelab lumbar grading report",
                   procedure=codes.LN.MRISpineReport, algorithm=algorithm, series_number=series_number)
