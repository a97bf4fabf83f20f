"""One canonical orientation: axis permutations and flips (never resampling) that put a volume head first.

Letter convention (the one place it is defined; ``Volume.orientation`` uses it): three letters, one per array
axis ``(D, H, W)``, each naming the anatomical direction **towards which that index increases** -- nibabel's
``aff2axcodes`` letters, computed on the RAS form of the affine. A NIfTI stored RAS+ is ``"RAS"`` in this
convention; ITK's legacy "from" codes would spell the opposite letters. The letters do not depend on whether
world coordinates are LPS (spinelab's affines) or RAS (nibabel's): they name patient directions.

The canonical orientation is :data:`CANONICAL` = ``"IPL"``: D runs head to feet, rows (H) towards posterior,
columns (W) towards the patient's left. Shown with row 0 at the top, an axial slice ``array[d]`` is then in
radiological convention (patient left on image right, anterior up), a coronal ``array[:, h]`` and a sagittal
``array[:, :, w]`` have the head up (sagittal: anterior on the left). A standard axial CT series
(ImageOrientationPatient ``1,0,0,0,1,0``) comes out of ``read_series`` as ``"SPL"`` (slices sorted along the
normal, feet first), so for most studies the canonical form only reverses D.

``to_canonical`` returns **views** of the stored array (no copy: a memory-mapped cache stays memory-mapped);
call ``np.ascontiguousarray`` before handing the whole array to code that needs positive strides (torch).
How the axes moved is recorded as an :class:`AxisMap` in ``meta["axis_map"]`` (JSON-friendly), so labels
given on the stored grid (slice indices, pixel boxes) can follow (``AxisMap.slice_index`` / ``AxisMap.boxes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spinelab.errors import GeometryError
from spinelab.io.volume import Volume

__all__ = ["CANONICAL", "AxisMap", "axis_map", "reorient", "to_canonical", "is_canonical", "stored_axis_map",
           "orientation_letters"]

CANONICAL = "IPL"

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
#: RAS world axis (0 = x towards R/L, 1 = y towards A/P, 2 = z towards S/I) and sign of each letter
_LETTER_AXIS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
#: array axes shown as (image rows, image columns) in each display panel
PANEL_AXES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}


@dataclass(frozen=True)
class AxisMap:
    """How a stored ``(D, H, W)`` grid becomes a reoriented one: new axis ``b`` is stored axis ``perm[b]``,
    read backwards when ``flip[b]``.

    Args:
        perm: stored axis of each new axis.
        flip: whether each new axis runs opposite to its stored axis.
        shape: the stored shape.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    shape: tuple[int, int, int]

    @property
    def identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return tuple(self.shape[a] for a in self.perm)  # type: ignore[return-value]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The reoriented view of a stored ``(D, H, W, ...)`` array (any trailing axes are kept)."""
        if tuple(array.shape[:3]) != self.shape:
            raise GeometryError(f"array shape {array.shape} is not the stored grid {self.shape}")
        out = np.transpose(array, [*self.perm, *range(3, array.ndim)])
        flips = tuple(b for b in range(3) if self.flip[b])
        return np.flip(out, axis=flips) if flips else out

    def matrix(self) -> np.ndarray:
        """4x4 matrix ``M`` with ``stored_index = M @ new_index`` (homogeneous)."""
        m = np.zeros((4, 4))
        m[3, 3] = 1.0
        for b, a in enumerate(self.perm):
            m[a, b] = -1.0 if self.flip[b] else 1.0
            m[a, 3] = self.shape[a] - 1 if self.flip[b] else 0.0
        return m

    def affine(self, stored_affine: np.ndarray) -> np.ndarray:
        """The reoriented grid's affine: every voxel keeps its world position."""
        return np.asarray(stored_affine, float) @ self.matrix()

    def index(self, stored: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` stored voxel indices (integer or fractional, voxel centres) to new ones."""
        inv = np.linalg.inv(self.matrix())
        stored = np.asarray(stored, dtype=np.float64)
        return stored @ inv[:3, :3].T + inv[:3, 3]

    def slice_index(self, stored: Any) -> np.ndarray:
        """Map stored slice indices (array index along D) to new ones; D must stay the slice axis."""
        self._require_slice_axis()
        d = np.asarray(stored)
        return (self.shape[0] - 1 - d) if self.flip[0] else d

    def boxes(self, boxes: np.ndarray, *, normalised: bool = False) -> np.ndarray:
        """Map in-plane boxes ``(..., 4)`` = ``x0, y0, x1, y1`` (x along W, y along H, end exclusive) drawn on
        stored slices to the new slices; ``normalised`` boxes are in ``[0, 1]`` of the width / height.

        D must stay the slice axis (only the in-plane transpose and flips apply). NaN stays NaN.
        """
        self._require_slice_axis()
        boxes = np.asarray(boxes, dtype=np.float64)
        ranges = {2: (boxes[..., 0], boxes[..., 2]), 1: (boxes[..., 1], boxes[..., 3])}  # stored axis -> (lo, hi)
        new = {}
        for b in (1, 2):
            a = self.perm[b]
            lo, hi = ranges[a]
            if self.flip[b]:
                n = 1.0 if normalised else float(self.shape[a])
                lo, hi = n - hi, n - lo
            new[b] = (lo, hi)
        return np.stack([new[2][0], new[1][0], new[2][1], new[1][1]], axis=-1)

    def then(self, other: AxisMap) -> AxisMap:
        """This map followed by ``other`` (whose stored grid is this map's output)."""
        if other.shape != self.out_shape:
            raise GeometryError(f"cannot compose axis maps: {other.shape} is not {self.out_shape}")
        perm = tuple(self.perm[other.perm[b]] for b in range(3))
        flip = tuple(bool(self.flip[other.perm[b]] ^ other.flip[b]) for b in range(3))
        return AxisMap(perm, flip, self.shape)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, list]:
        return {"perm": list(self.perm), "flip": list(self.flip), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AxisMap:
        return cls(tuple(int(a) for a in data["perm"]), tuple(bool(f) for f in data["flip"]),  # type: ignore[arg-type]
                   tuple(int(s) for s in data["shape"]))  # type: ignore[arg-type]

    def _require_slice_axis(self) -> None:
        if self.perm[0] != 0:
            raise GeometryError(f"the slice axis moved (new D is stored axis {self.perm[0]}): per-slice labels "
                                "of the stored grid cannot follow")


def _check_codes(codes: str) -> str:
    codes = codes.upper()
    if len(codes) != 3 or any(c not in _LETTER_AXIS for c in codes) or \
            sorted(_LETTER_AXIS[c][0] for c in codes) != [0, 1, 2]:
        raise GeometryError(f"orientation codes must name three different axes, got {codes!r}")
    return codes


def axis_map(volume: Volume, codes: str = CANONICAL) -> AxisMap:
    """The permutation and flips that make ``volume``'s axes point along ``codes`` (nearest axes when oblique).

    Raises:
        GeometryError: invalid codes, or an affine whose axes cannot be told apart.
    """
    from nibabel.orientations import io_orientation

    codes = _check_codes(codes)
    current = io_orientation(volume.ras_affine)  # per stored axis: (RAS world axis, +1/-1)
    if not np.all(np.isfinite(current)):
        raise GeometryError("cannot tell the volume's axes apart from its affine")
    perm, flip = [], []
    for c in codes:
        world, sign = _LETTER_AXIS[c]
        a = int(np.nonzero(current[:, 0] == world)[0][0])
        perm.append(a)
        flip.append(bool(current[a, 1] != sign))
    return AxisMap(tuple(perm), tuple(flip), volume.shape)  # type: ignore[arg-type]


def stored_axis_map(volume: Volume) -> AxisMap:
    """How ``volume`` was reoriented from its stored grid (identity when it never was)."""
    data = volume.meta.get("axis_map")
    return AxisMap.from_dict(data) if data else AxisMap((0, 1, 2), (False, False, False), volume.shape)


def reorient(volume: Volume, codes: str) -> Volume:
    """Transpose/flip ``volume`` so its (D, H, W) axes point along ``codes`` (e.g. ``'SPL'``).

    Exact (no interpolation); the affine is updated so every voxel keeps its world position; the array is a
    view. ``slice_ids`` follow D when D stays the slice axis, else become ``None``. ``meta`` keeps its values
    and ``meta["axis_map"]`` records the move from the stored grid (composed with any earlier one).
    """
    m = axis_map(volume, codes)
    if m.identity:
        return volume
    slice_ids = volume.slice_ids
    if slice_ids is not None:
        slice_ids = (list(reversed(slice_ids)) if m.flip[0] else list(slice_ids)) if m.perm[0] == 0 else None
    meta = {**volume.meta, "axis_map": stored_axis_map(volume).then(m).to_dict()}
    return Volume(array=m.apply(volume.array), affine=m.affine(volume.affine), slice_ids=slice_ids, meta=meta,
                  is_label=volume.is_label)


def to_canonical(volume: Volume) -> Volume:
    """``volume`` in the canonical orientation ``"IPL"`` (head first, rows to posterior, columns to the left).

    The same volume object when it already is; see :func:`reorient` for what changes.
    """
    return reorient(volume, CANONICAL)


def is_canonical(volume: Volume) -> bool:
    """True when ``volume``'s axes point (nearest) along ``"IPL"``."""
    return axis_map(volume).identity


def orientation_letters(volume: Volume) -> dict[str, dict[str, str]]:
    """The anatomical letter at each edge of the three display panels of ``volume``.

    Panels are array slices shown with row 0 at the top and column 0 on the left: ``axial`` = ``array[d]``
    (rows H, columns W), ``coronal`` = ``array[:, h, :]`` (rows D, columns W), ``sagittal`` =
    ``array[:, :, w]`` (rows D, columns H). The names are anatomical for a canonical volume.

    Returns:
        ``{"axial": {"top": "A", "bottom": "P", "left": "R", "right": "L"}, "coronal": {...}, ...}``; letters
        are ``S/I``, ``A/P``, ``R/L``.
    """
    codes = volume.orientation
    out = {}
    for panel, (rows, cols) in PANEL_AXES.items():
        out[panel] = {"top": _OPPOSITE[codes[rows]], "bottom": codes[rows],
                      "left": _OPPOSITE[codes[cols]], "right": codes[cols]}
    return out
