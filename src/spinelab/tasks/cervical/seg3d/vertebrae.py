"""Per-vertebra statistics of a C1-C7 label map and the vertebra check (order, gaps, volumes, duplicates).

Labels are the segmentation's classes: 0 background, 1..7 = C1..C7, 8 = T1 (the RSNA 2022 values,
``registry.RSNA2022_SEG_LABELS``). Everything is measured in the patient's world (LPS millimetres, through the
label map's affine), never by array order, so a series stored feet first, a sagittal NIfTI or a flipped grid
give the same answers.

The check names each problem as a ``VertebraIssue`` (its ``message`` is the warning of a study result):

- ``missing``: a vertebra of C1-C7 has no voxel;
- ``duplicated``: a label has a second part at least ``DUPLICATE_SHARE`` of the largest and at least
  ``DUPLICATE_MM`` above or below it (another level labelled twice; ``keep_largest_components`` finds it
  while it keeps the largest part);
- ``swapped``: head to feet, two vertebrae come in each other's place (C3 below C4) and the rest is in order;
- ``out_of_order``: head to feet, the order is wrong in any other way;
- ``gap``: neighbouring vertebrae whose centroids lie closer or farther apart than ``GAP_MM`` per level;
- ``volume``: a vertebra outside ``VOLUME_ML``, or far smaller or larger than the median of the others
  (``VOLUME_RATIO``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from spinelab.io.volume import Volume
from spinelab.registry import RSNA2022_SEG_LABELS, VERTEBRAE

__all__ = ["VertebraStats", "VertebraIssue", "LABEL_NAMES", "vertebra_stats", "keep_largest_components",
           "check_vertebrae", "GAP_MM", "VOLUME_RATIO", "VOLUME_ML", "DUPLICATE_SHARE", "DUPLICATE_MM"]

#: Segmentation class -> vertebra name (1..7 = C1..C7, 8 = T1).
LABEL_NAMES: dict[int, str] = {k: v for k, v in RSNA2022_SEG_LABELS.items() if k <= 8}
#: Centroid distance of neighbouring vertebrae, in mm per level: adult cervical bodies are 13-16 mm high with
#: 4-6 mm discs (about 18 mm a level); the range leaves room for children, C1-C2 and flexion.
GAP_MM = (8.0, 35.0)
#: A vertebra more than this factor smaller or larger than the median of the others is implausible.
VOLUME_RATIO = 4.0
#: Plausible volume of one cervical vertebra in ml (an adult's holds 5-25 ml of bone; below: a fragment).
VOLUME_ML = (0.5, 60.0)
#: A second part of one label counts as another vertebra when it holds at least this share of the largest ...
DUPLICATE_SHARE = 0.25
#: ... and its centroid lies at least this far above or below the largest part's (a level is about 18 mm).
DUPLICATE_MM = 10.0

IssueKind = Literal["missing", "duplicated", "swapped", "out_of_order", "gap", "volume"]


@dataclass(frozen=True)
class VertebraIssue:
    """One problem the vertebra check found.

    Args:
        kind: which rule (module docstring).
        vertebrae: the vertebrae it concerns, e.g. ``("C3", "C4")``.
        message: one line, the warning of the study result.
    """

    kind: IssueKind
    vertebrae: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "vertebrae": list(self.vertebrae), "message": self.message}


@dataclass(frozen=True)
class VertebraStats:
    """What one vertebra of a label map measures.

    Args:
        name: ``C1`` .. ``C7``, ``T1``.
        label: its class value in the map.
        voxels: voxel count.
        volume_ml: ``voxels`` times the voxel volume, in ml.
        centroid_mm: centroid in world LPS mm.
        box_dhw: ``(start, end)`` inclusive voxel indices along the map's ``(D, H, W)`` axes.
        box_mm: ``(min, max)`` LPS mm of the axis-aligned world box around the voxels (voxel edges).
        slice_numbers: the slice ids (``Volume.slice_ids``: RSNA slice numbers of a DICOM series) of the
            first and last slice along D holding the vertebra; ``None`` without slice ids (NIfTI).
    """

    name: str
    label: int
    voxels: int
    volume_ml: float
    centroid_mm: tuple[float, float, float]
    box_dhw: tuple[tuple[int, int, int], tuple[int, int, int]]
    box_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    slice_numbers: tuple[str, str] | None

    def to_json(self) -> dict[str, Any]:
        """The ``vertebrae.json`` entry; voxel boxes in the NIfTI's ``(i, j, k)`` order (``(W, H, D)``)."""
        (d0, h0, w0), (d1, h1, w1) = self.box_dhw
        return {
            "label": self.label, "voxels": self.voxels, "volume_ml": round(self.volume_ml, 3),
            "centroid_lps_mm": [round(c, 2) for c in self.centroid_mm],
            "box_ijk": {"start": [w0, h0, d0], "end": [w1, h1, d1]},
            "box_lps_mm": {"min": [round(c, 2) for c in self.box_mm[0]], "max": [round(c, 2) for c in self.box_mm[1]]},
            "slices": {"start_index": d0, "end_index": d1,
                       "slice_numbers": list(self.slice_numbers) if self.slice_numbers else None},
        }


def _name(label: int) -> str:
    return LABEL_NAMES.get(int(label), f"label {int(label)}")


def vertebra_stats(labels: Volume) -> dict[str, VertebraStats]:
    """Statistics of every vertebra present in ``labels`` (a label map with its affine), in label order."""
    from scipy import ndimage

    arr = np.asarray(labels.array)
    voxel_ml = abs(float(np.linalg.det(labels.affine[:3, :3]))) / 1000.0
    out: dict[str, VertebraStats] = {}
    for index, box in enumerate(ndimage.find_objects(arr.astype(np.int32, copy=False)), start=1):
        if box is None or index not in LABEL_NAMES:
            continue
        idx = np.argwhere(arr[box] == index) + [s.start for s in box]
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        corners = np.array(np.meshgrid(*[(a - 0.5, b + 0.5) for a, b in zip(lo, hi, strict=True)],
                                       indexing="ij")).reshape(3, -1).T
        world = labels.voxel_to_world(corners)
        d0, d1 = int(lo[0]), int(hi[0])
        ids = labels.slice_ids
        out[_name(index)] = VertebraStats(
            name=_name(index), label=index, voxels=len(idx), volume_ml=len(idx) * voxel_ml,
            centroid_mm=tuple(float(c) for c in labels.voxel_to_world(idx.mean(axis=0))),  # type: ignore[arg-type]
            box_dhw=(tuple(int(v) for v in lo), tuple(int(v) for v in hi)),  # type: ignore[arg-type]
            box_mm=(tuple(float(v) for v in world.min(axis=0)),  # type: ignore[arg-type]
                    tuple(float(v) for v in world.max(axis=0))),
            slice_numbers=(str(ids[d0]), str(ids[d1])) if ids else None)
    return dict(sorted(out.items(), key=lambda kv: kv[1].label))


def _head_feet(labels: Volume, points: np.ndarray) -> np.ndarray:
    """Head-to-feet coordinate (mm, larger = more caudal) of ``(..., 3)`` voxel indices: minus LPS z."""
    return -labels.voxel_to_world(points)[..., 2]


def keep_largest_components(labels: Volume) -> tuple[Volume, list[VertebraIssue]]:
    """Keep each label's largest 26-connected part and say where a dropped part looked like another vertebra.

    A dropped part at least ``DUPLICATE_SHARE`` of the largest whose centroid lies at least ``DUPLICATE_MM``
    above or below the largest's is a ``duplicated`` issue (the model labelled two levels alike); smaller or
    level parts (a stray speck, a C1 ring cut in two) are dropped silently.

    Returns:
        The cleaned label map (same grid and dtype) and the issues, in label order.
    """
    from scipy import ndimage

    arr = np.array(labels.array, copy=True)
    voxel_ml = abs(float(np.linalg.det(labels.affine[:3, :3]))) / 1000.0
    issues = []
    structure = np.ones((3, 3, 3), dtype=bool)
    for index, box in enumerate(ndimage.find_objects(arr.astype(np.int32, copy=False)), start=1):
        if box is None:
            continue
        region = arr[box]
        parts, n = ndimage.label(region == index, structure=structure)
        if n < 2:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        order = np.argsort(sizes)[::-1] + 1
        offset = np.array([s.start for s in box])
        main_hf = float(_head_feet(labels, np.argwhere(parts == order[0]).mean(axis=0) + offset))
        for part in order[1:]:
            size = int(sizes[part - 1])
            if size >= DUPLICATE_SHARE * sizes[order[0] - 1]:
                shift = float(_head_feet(labels, np.argwhere(parts == part).mean(axis=0) + offset)) - main_hf
                if abs(shift) >= DUPLICATE_MM:
                    name = _name(index)
                    issues.append(VertebraIssue("duplicated", (name,), (
                        f"{name} duplicated: a second part of {size * voxel_ml:.1f} ml lies {abs(shift):.0f} mm "
                        f"{'below' if shift > 0 else 'above'} the largest (only the largest is kept)")))
            region[parts == part] = 0
    return labels.with_array(arr), issues


def check_vertebrae(stats: dict[str, VertebraStats], *, expected: tuple[str, ...] = VERTEBRAE
                    ) -> list[VertebraIssue]:
    """The vertebra check on ``vertebra_stats``: missing, swapped, out of order, gaps, volumes.

    Duplicates need the label map itself (``keep_largest_components``). ``expected`` are the vertebrae
    that must be present (T1 is checked for order when present, never missing).
    """
    issues = [VertebraIssue("missing", (v,), f"{v} missing: not segmented") for v in expected if v not in stats]
    present = sorted(stats.values(), key=lambda s: s.label)
    issues += _order_issues(present)
    for upper, lower in zip(present, present[1:], strict=False):
        levels = lower.label - upper.label
        gap = float(np.linalg.norm(np.subtract(lower.centroid_mm, upper.centroid_mm)))
        lo, hi = GAP_MM[0] * levels, GAP_MM[1] * levels
        if not lo <= gap <= hi:
            issues.append(VertebraIssue("gap", (upper.name, lower.name), (
                f"{upper.name}-{lower.name} centroids {gap:.0f} mm apart (plausible {lo:.0f}-{hi:.0f} mm for "
                f"{levels} level{'s' if levels > 1 else ''})")))
    volumes = {s.name: s.volume_ml for s in present}
    for s in present:
        others = [v for n, v in volumes.items() if n != s.name]
        median = float(np.median(others)) if len(others) >= 2 else None
        if s.volume_ml < VOLUME_ML[0]:
            issues.append(VertebraIssue("volume", (s.name,), (
                f"{s.name} volume {s.volume_ml:.2f} ml is a fragment (under {VOLUME_ML[0]:g} ml)")))
        elif s.volume_ml > VOLUME_ML[1]:
            issues.append(VertebraIssue("volume", (s.name,), (
                f"{s.name} volume {s.volume_ml:.0f} ml is too large for a cervical vertebra "
                f"(over {VOLUME_ML[1]:g} ml)")))
        elif median is not None and not median / VOLUME_RATIO <= s.volume_ml <= median * VOLUME_RATIO:
            issues.append(VertebraIssue("volume", (s.name,), (
                f"{s.name} volume {s.volume_ml:.1f} ml is implausible beside the others (median {median:.1f} ml, "
                f"expected within {VOLUME_RATIO:g}x)")))
    return issues


def _order_issues(present: list[VertebraStats]) -> list[VertebraIssue]:
    """``swapped`` when exactly two vertebrae sit in each other's place head to feet, else ``out_of_order``."""
    by_label = [s.name for s in present]
    head_to_feet = [s.name for s in sorted(present, key=lambda s: (-s.centroid_mm[2], s.label))]  # LPS z: up
    wrong = [i for i, (a, b) in enumerate(zip(by_label, head_to_feet, strict=True)) if a != b]
    if not wrong:
        return []
    if len(wrong) == 2:
        a, b = by_label[wrong[0]], by_label[wrong[1]]
        return [VertebraIssue("swapped", (a, b), f"{a} and {b} swapped: {b} lies above {a}")]
    return [VertebraIssue("out_of_order", tuple(head_to_feet), (
        f"vertebrae out of head-to-feet order: {', '.join(head_to_feet)}"))]
