"""Is this the right input? The documented rules a study must pass before (and after) a model runs.

Each rule gives a refusal (the study gets the prior and ``"status": "refused"``) or a warning (the study is
predicted, ``"status": "warning"`` with the reason; ``strict`` turns warnings into refusals). The README's
"Checking the input" table lists the same rules with the same thresholds; change both together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.errors import SpinelabError
from spinelab.io.volume import Volume

__all__ = [
    "InputCheck", "StudyRefusedError", "file_tags", "series_tags", "volume_facts", "plane_of", "check_cervical_input",
    "check_cervical_localization", "check_lumbar_series", "STATUSES",
    "CERVICAL_REFUSE_EXTENT_MM", "CERVICAL_WARN_EXTENT_MM", "MAX_SLICE_MM", "MAX_PIXEL_MM", "CT_MAX_P1_HU",
]

#: Every study result has one of these statuses.
STATUSES = ("ok", "warning", "refused", "failed")
#: The cervical spine (C1 to C7) is about 120 mm long: below this z-extent the scan cannot hold it.
CERVICAL_REFUSE_EXTENT_MM = 60.0
#: Below this z-extent the scan probably misses part of C1-C7.
CERVICAL_WARN_EXTENT_MM = 100.0
#: Slices (spacing or thickness) coarser than this blur fracture lines over several millimetres.
MAX_SLICE_MM = 3.0
#: Pixels coarser than this: a body field of view, not a spine reconstruction (those are 0.2-0.8 mm).
MAX_PIXEL_MM = 1.0
#: A CT in Hounsfield units holds fat (about -100 HU) or air (-1000 HU), even a tight crop of the spine: its 1st
#: percentile is below this. MR intensities (and z-scored MR) are not (how a NIfTI, which has no modality, is told).
CT_MAX_P1_HU = -50.0
#: One vertebra's slice range is plausible between these lengths (C1's ring ~10 mm, C2 with its dens ~40 mm).
VERTEBRA_MM = (4.0, 60.0)
#: C1 top to C7 bottom is plausible between these lengths.
CERVICAL_SPAN_MM = (60.0, 250.0)
_NECK_WORDS = ("NECK", "CSPINE", "C-SPINE", "C SPINE", "CERV", "HWS")
_OTHER_PARTS = ("ABDOMEN", "PELVIS", "CHEST", "THORAX", "HEAD", "BRAIN", "LUNG", "KNEE", "LSPINE", "L-SPINE",
                "TSPINE", "T-SPINE", "LUMBAR", "EXTREMITY", "HAND", "FOOT", "SHOULDER", "HIP")


class StudyRefusedError(SpinelabError):
    """A study fails an input rule: it is not predicted (the prior stands in) and the run goes on.

    Args:
        reasons: the rules it failed, in words.
        warnings: the warnings found before the refusal.
        facts: what was measured (modality, shape, spacing, extent) for the study JSON.
    """

    def __init__(self, reasons: Sequence[str], warnings: Sequence[str] = (),
                 facts: dict[str, Any] | None = None) -> None:
        self.reasons, self.warnings, self.facts = list(reasons), list(warnings), dict(facts or {})
        super().__init__("; ".join(self.reasons))


@dataclass
class InputCheck:
    """The outcome of the rules for one study: refusals, warnings and the measured facts."""

    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def raise_if_refused(self, strict: bool = False) -> None:
        """Raise ``StudyRefusedError`` on a refusal, or on any warning when ``strict``."""
        reasons = self.refusals + ([f"--strict: {w}" for w in self.warnings] if strict else [])
        if reasons:
            raise StudyRefusedError(reasons, self.warnings, self.facts)


def _slice_files(volume: Volume) -> list[Path]:
    """One file of the series (matched by slice id), for the tags ``read_series`` does not keep; none for NIfTI."""
    source = Path(str(volume.meta.get("source", "")))
    if volume.meta.get("format") == "nifti":
        return []
    if source.is_file():
        return [source]
    if not source.is_dir() or not volume.slice_ids:
        return []
    from spinelab.io.dicom import slice_id

    ids = set(volume.slice_ids)
    for f in sorted(source.iterdir()):
        if slice_id(f) in ids and f.is_file():  # is_file: never open a FIFO or device that shares a slice's name
            return [f]
    return []


def file_tags(path: str | Path, tags: Sequence[str]) -> dict[str, Any] | None:
    """Header values of ``tags`` in one DICOM file (absent or empty tags left out), ``None`` when unreadable.

    Values are plain Python: numbers as float, multi-values as lists of float, text as str.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(tags))
        items = [(tag, ds.get(tag)) for tag in tags]
    except Exception:  # noqa: BLE001 - an unreadable header only means the optional rules are skipped
        return None
    return {tag: _plain(value) for tag, value in items if value is not None and value != ""}


def series_tags(volume: Volume, tags: Sequence[str]) -> dict[str, Any]:
    """Header values of ``tags`` from one file of a DICOM volume's series (``{}`` for NIfTI or when unreadable)."""
    for path in _slice_files(volume):
        found = file_tags(path, tags)
        if found is not None:
            return found
    return {}


def _plain(value: Any) -> Any:
    from pydicom.multival import MultiValue

    if isinstance(value, bytes):
        return value.decode("latin-1").strip()
    if isinstance(value, str):
        return value.strip()
    try:
        return [float(v) for v in value] if isinstance(value, MultiValue) else float(value)
    except (TypeError, ValueError):
        return str(value).strip()


def plane_of(volume: Volume) -> str:
    """``sagittal`` / ``coronal`` / ``axial``: the patient axis the slice direction (array axis 0) runs along."""
    normal = np.abs(volume.affine[:3, 0])
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def volume_facts(volume: Volume) -> dict[str, Any]:
    """What the rules measure: modality, shape, spacing (mm) and the extent along the slices (mm)."""
    depth = volume.shape[0]
    return {"modality": volume.meta.get("modality") or None, "format": volume.meta.get("format", "dicom"),
            "shape": list(volume.shape), "spacing_mm": [round(s, 3) for s in volume.spacing],
            "slice_extent_mm": round(depth * volume.spacing[0], 1), "plane": plane_of(volume)}


def _body_part_warning(tags: dict[str, Any]) -> str | None:
    """A warning when BodyPartExamined or SeriesDescription names another body part and not the neck."""
    for tag in ("BodyPartExamined", "SeriesDescription"):
        text = str(tags.get(tag, "")).upper()
        words = set(re.split(r"[^A-Z0-9-]+", text))
        if not text or any(w in text for w in _NECK_WORDS if len(w) > 3) or "HWS" in words:
            continue
        other = [p for p in _OTHER_PARTS if p in words or (len(p) > 5 and p in text)]
        if other:
            return f"{tag} {tags[tag]!r} names {other[0].lower()}, not the neck or cervical spine"
    return None


def check_cervical_input(volume: Volume) -> InputCheck:
    """The rules for a cervical CT study before stage 1 (see the README's "Checking the input")."""
    check = InputCheck(facts=volume_facts(volume))
    facts, meta = check.facts, volume.meta
    modality = str(meta.get("modality") or "").upper()
    if modality and modality != "CT":
        check.refusals.append(f"modality {modality}: the cervical model reads CT")
    elif not modality and meta.get("format") != "nifti":
        check.warnings.append("no Modality in the DICOM header; CT assumed")
    arr = np.asarray(volume.array[:: max(1, volume.shape[0] // 16)])
    low = float(np.percentile(arr, 1)) if arr.size else 0.0
    facts["percentile_1"] = round(low, 1)
    if not (modality and modality != "CT") and low > CT_MAX_P1_HU:
        check.refusals.append(f"no fat or air in the image (1st percentile {low:.0f} > {CT_MAX_P1_HU:.0f}): not a "
                              "CT in Hounsfield units")
    depth, extent = volume.shape[0], facts["slice_extent_mm"]
    if depth < 2:
        check.refusals.append("a single slice: the cervical model needs a volume")
    elif extent < CERVICAL_REFUSE_EXTENT_MM:
        check.refusals.append(f"the scan covers {extent:.0f} mm along its slices, far too short for C1-C7 "
                              f"(about 120 mm; refused below {CERVICAL_REFUSE_EXTENT_MM:.0f} mm)")
    elif extent < CERVICAL_WARN_EXTENT_MM:
        check.warnings.append(f"the scan covers {extent:.0f} mm along its slices: C1-C7 (about 120 mm) is "
                              "probably not all in it")
    if facts["plane"] != "axial":
        check.warnings.append(f"the slices are {facts['plane']}, not axial")
    tags = series_tags(volume, ["SliceThickness", "BodyPartExamined", "SeriesDescription"])
    thickness = tags.get("SliceThickness")
    if depth > 1 and volume.spacing[0] > MAX_SLICE_MM:
        check.warnings.append(f"slice spacing {volume.spacing[0]:.2g} mm is coarser than {MAX_SLICE_MM:g} mm")
    if isinstance(thickness, float) and thickness > MAX_SLICE_MM:
        facts["slice_thickness_mm"] = thickness
        check.warnings.append(f"slice thickness {thickness:.2g} mm is thicker than {MAX_SLICE_MM:g} mm")
    pixel = max(volume.spacing[1:])
    if pixel > MAX_PIXEL_MM:
        check.warnings.append(f"pixel spacing {pixel:.2g} mm is coarser than {MAX_PIXEL_MM:g} mm (a body field "
                              "of view, not a spine reconstruction)")
    body = _body_part_warning(tags)
    if body:
        check.warnings.append(body)
    check.warnings += [f"reader: {w}" for w in meta.get("warnings", [])]
    return check


def check_cervical_localization(summary: dict[str, Any], volume: Volume) -> list[str]:
    """Warnings on what stage 1 found: head-to-feet order, plausible lengths (mm); missing ones are in
    ``summary["warnings"]`` already. ``volume`` is canonical (index 0 the most cranial slice)."""
    found = {v: r for v, r in summary["ranges"].items() if r is not None and v not in summary["missing"]}
    if not found:
        return []
    step = volume.spacing[0]
    warnings = []
    centres = [(v, (r[0] + r[1]) / 2) for v, r in found.items()]
    order = [v for v, _ in sorted(centres, key=lambda c: (c[1], c[0]))]
    if order != sorted(found, key=lambda v: int(v[1:])):
        warnings.append(f"vertebrae found out of head-to-feet order: {', '.join(order)}")
    lo, hi = VERTEBRA_MM
    odd = [f"{v} {(r[1] - r[0] + 1) * step:.0f} mm" for v, r in found.items()
           if not lo <= (r[1] - r[0] + 1) * step <= hi]
    if odd:
        warnings.append(f"implausible vertebra lengths (expected {lo:g}-{hi:g} mm): {', '.join(odd)}")
    if len(found) == 7:
        span = (max(r[1] for r in found.values()) - min(r[0] for r in found.values()) + 1) * step
        if not CERVICAL_SPAN_MM[0] <= span <= CERVICAL_SPAN_MM[1]:
            warnings.append(f"C1-C7 span {span:.0f} mm outside {CERVICAL_SPAN_MM[0]:g}-{CERVICAL_SPAN_MM[1]:g} mm")
    return warnings


def check_lumbar_series(volume: Volume, kind: str, name: str) -> InputCheck:
    """The rules for one series of a lumbar MRI study: modality MR, the plane its kind needs."""
    check = InputCheck(facts=volume_facts(volume))
    modality = str(volume.meta.get("modality") or "").upper()
    if modality and modality != "MR":
        check.refusals.append(f"series {name} has modality {modality}: the lumbar model reads MR")
    elif not modality:
        check.warnings.append(f"series {name}: no Modality in the DICOM header; MR assumed")
    expected = "sagittal" if kind.startswith("sag") else "axial"
    plane = check.facts["plane"]
    if volume.shape[0] > 1 and plane != expected:
        check.warnings.append(f"series {name} ({kind}) has {plane} slices, not {expected}")
    return check
