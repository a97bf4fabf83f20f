"""Slice geometry of a DICOM series: sorting along the slice normal, the affine, and the consistency rules.

Works on headers only (no pixels), so a bad series is diagnosed before anything is decoded. Each rule either
adds a warning string or raises ``InputError`` naming the files; the table of rules lives in
``spinelab.io.dicom``'s docstring.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinelab.errors import InputError

__all__ = ["SliceHeader", "SeriesGeometry", "check_sizes", "sort_and_measure", "find_duplicates"]

#: Two slices closer than this along the normal (mm) are at the "same position".
DUPLICATE_TOL_MM = 1e-3
#: A step larger than this times the median step means slices are missing.
GAP_FACTOR = 1.5
#: Steps differing from the median by more than this fraction (and by > 0.01 mm) are "uneven".
UNEVEN_FRACTION = 0.01
#: Angle (degrees) between the stacking direction and the slice normal above which a tilt is reported.
TILT_DEG = 0.1


@dataclass
class SliceHeader:
    """What the header pass keeps of one single-frame image file."""

    path: Path
    rows: int
    cols: int
    ipp: np.ndarray | None  # (3,) LPS mm
    iop: np.ndarray | None  # (6,) row (W) then column (H) direction cosines
    pixel_spacing: tuple[float, float] | None  # (between rows = along H, between columns = along W)
    instance_number: int | None
    slice_thickness: float | None = None


@dataclass
class SeriesGeometry:
    """Sorted slices and the affine ``(d, h, w, 1) -> LPS``."""

    order: list[int]  # indices into the header list, in array order
    affine: np.ndarray
    warnings: list[str]


def _names(headers: Sequence[SliceHeader], idx: Sequence[int], limit: int = 4) -> str:
    names = [headers[i].path.name for i in idx]
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_sizes(headers: Sequence[SliceHeader], folder: Path, *, mixed_sizes: str) -> tuple[list[int], list[str]]:
    """Keep slices of one image size and orientation.

    Args:
        headers: every image header of the series.
        folder: the series folder (named in errors).
        mixed_sizes: ``"error"`` or ``"majority"`` (keep the most common size+orientation, warn).

    Returns:
        Indices kept and warnings.

    Raises:
        InputError: several sizes or orientations and ``mixed_sizes="error"``.
    """
    def key(h: SliceHeader) -> tuple:
        iop = tuple(np.round(h.iop, 3).tolist()) if h.iop is not None else None
        return (h.rows, h.cols, iop)

    groups = Counter(key(h) for h in headers)
    if len(groups) == 1:
        return list(range(len(headers))), []
    desc = "; ".join(
        f"{n} files of {k[0]}x{k[1]}" + (f" orientation {list(k[2])}" if k[2] is not None else "")
        for k, n in groups.most_common()
    )
    if mixed_sizes != "majority":
        raise InputError(folder, f"mixed image sizes/orientations in one series: {desc} "
                                 "(read with mixed_sizes='majority' to keep the most common)")
    best = groups.most_common(1)[0][0]
    keep = [i for i, h in enumerate(headers) if key(h) == best]
    dropped = [i for i, h in enumerate(headers) if key(h) != best]
    return keep, [f"mixed image sizes/orientations ({desc}): kept the {len(keep)} files of the most common, "
                  f"dropped {_names(headers, dropped)}"]


def find_duplicates(headers: Sequence[SliceHeader], order: Sequence[int], normal: np.ndarray) -> list[list[int]]:
    """Groups (of >= 2 header indices) of slices at the same position along ``normal``."""
    pos = np.array([float(headers[i].ipp @ normal) for i in order])
    groups: list[list[int]] = []
    current = [order[0]]
    for k in range(1, len(order)):
        if pos[k] - pos[k - 1] < DUPLICATE_TOL_MM:
            current.append(order[k])
        else:
            if len(current) > 1:
                groups.append(current)
            current = [order[k]]
    if len(current) > 1:
        groups.append(current)
    return groups


def slice_normal(iop: np.ndarray) -> np.ndarray:
    """Unit normal ``row cosine x column cosine`` of an ImageOrientationPatient."""
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    n = np.cross(row, col)
    return n / np.linalg.norm(n)


def sort_and_measure(headers: Sequence[SliceHeader], folder: Path) -> SeriesGeometry:
    """Sort slices along the normal by ``IPP . normal`` and build the affine; check spacing rules.

    The D column of the affine is the mean step between sorted positions, ``(IPP_last - IPP_first) / (D - 1)``,
    so a tilted (sheared) stack is still placed exactly.

    Args:
        headers: slices of one size and orientation, duplicates already removed.
        folder: the series folder (named in errors).

    Returns:
        The order, the affine and warnings (gaps, uneven spacing, tilt, non-orthogonal orientation).

    Raises:
        InputError: missing orientation/position.
    """
    warnings: list[str] = []
    missing = [i for i, h in enumerate(headers) if h.ipp is None or h.iop is None]
    if missing:
        raise InputError(folder, f"no ImagePositionPatient/ImageOrientationPatient in {_names(headers, missing)}")
    iop = np.asarray(headers[0].iop, float)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3:
        warnings.append(f"ImageOrientationPatient cosines are not unit vectors ({iop.tolist()}); normalised")
        row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-3:
        angle = np.degrees(np.arccos(np.clip(row @ col, -1, 1)))
        warnings.append(f"non-orthogonal ImageOrientationPatient: row/column angle {angle:.2f} deg; "
                        "the affine keeps the stored directions")
    normal = slice_normal(np.concatenate([row, col]))
    pos = np.array([float(h.ipp @ normal) for h in headers])
    # Position along the normal, then name, so the order is deterministic even for (rejected) ties.
    order = sorted(range(len(headers)), key=lambda i: (pos[i], headers[i].path.name))
    ps = headers[0].pixel_spacing
    if ps is None:
        warnings.append("no PixelSpacing: assumed 1 mm pixels")
        ps = (1.0, 1.0)
    affine = np.eye(4)
    affine[:3, 1] = col * ps[0]  # H: next row
    affine[:3, 2] = row * ps[1]  # W: next column
    affine[:3, 3] = headers[order[0]].ipp
    if len(order) == 1:
        step = headers[0].slice_thickness or 1.0
        warnings.append(f"single-slice series: slice spacing taken as {step:g} mm (SliceThickness or 1)")
        affine[:3, 0] = normal * step
        return SeriesGeometry(order=order, affine=affine, warnings=warnings)
    ipps = np.array([headers[i].ipp for i in order], float)
    affine[:3, 0] = (ipps[-1] - ipps[0]) / (len(order) - 1)
    steps = np.diff(pos[order])
    median = float(np.median(steps))
    gaps = np.nonzero(steps > GAP_FACTOR * median)[0]
    for g in gaps:
        a, b = headers[order[g]].path.name, headers[order[g + 1]].path.name
        warnings.append(f"missing slices: gap of {steps[g]:.3g} mm between {a} and {b} "
                        f"(median spacing {median:.3g} mm); the affine uses the mean step")
    if not len(gaps) and np.any(np.abs(steps - median) > max(UNEVEN_FRACTION * median, 0.01)):
        warnings.append(f"uneven slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm "
                        f"(median {median:.4g}); the affine uses the mean step")
    d_axis = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    tilt = float(np.degrees(np.arccos(np.clip(abs(d_axis @ normal), -1, 1))))
    if tilt > TILT_DEG:
        warnings.append(f"gantry tilt / sheared stack: slices advance {tilt:.2f} deg off the slice normal; "
                        "the affine is exact (sheared), resample before assuming orthogonal voxels")
    return SeriesGeometry(order=order, affine=affine, warnings=warnings)
