"""Placing volumes on each other's grids by world coordinates: resampling, world <-> voxel (``reorient`` lives
in ``io.orientation``, re-exported here).

``resample_to`` maps every voxel of the reference grid through ``inv(source.affine) @ reference.affine`` into
the source. When that matrix is a signed axis permutation with unit scale and an integer offset (the common
case of a segmentation stored in another orientation on the same lattice, e.g. RSNA 2022's sagittal NIfTI
against the axial DICOM, or TotalSegmentator's LAS output), the result is an exact transpose/flip/crop, no
interpolation; otherwise ``scipy.ndimage.affine_transform`` interpolates (nearest for labels).

Fill outside the source's field of view (``fill=None``, the default): 0 for label maps; air, -1024 HU, for CT
images (``meta["modality"] == "CT"``, or, with no modality recorded as for NIfTI files, an image whose
minimum is below -100, which only HU data reaches); 0 for any other image (MR). Grids that overlap little
(less than half of the smaller one inside the other, by sampled voxel centres) or not at all give a
``GeometryWarning``, also kept in the result's ``meta["warnings"]``.
"""

from __future__ import annotations

import warnings

import numpy as np

from spinelab.errors import GeometryError
from spinelab.io.orientation import reorient
from spinelab.io.volume import Volume

__all__ = ["resample_to", "reorient", "world_to_voxel", "voxel_to_world", "grid_permutation", "grid_overlap",
           "default_fill", "GeometryWarning", "AIR_HU", "MIN_OVERLAP"]

_TOL = 1e-4  # relative tolerance for "unit scale" / "integer offset" in voxel units
AIR_HU = -1024.0
#: below this share of the smaller grid inside the other, ``resample_to`` warns
MIN_OVERLAP = 0.5
_SAMPLES_PER_AXIS = 12


class GeometryWarning(UserWarning):
    """Two grids were combined, but their geometry deserves attention (little or no overlap)."""


def world_to_voxel(volume: Volume, points: np.ndarray) -> np.ndarray:
    """Map ``(..., 3)`` LPS mm points to fractional ``(d, h, w)`` indices of ``volume``."""
    return volume.world_to_voxel(points)


def voxel_to_world(volume: Volume, index: np.ndarray) -> np.ndarray:
    """Map ``(..., 3)`` ``(d, h, w)`` indices of ``volume`` to LPS mm."""
    return volume.voxel_to_world(index)


def grid_permutation(source: Volume, reference: Volume) -> list[tuple[int, int, int]] | None:
    """If the reference lattice is the source lattice permuted/flipped/shifted, describe how.

    Returns:
        For each reference axis ``b``: ``(source axis, sign, offset)`` with ``s = sign * r + offset``; ``None``
        when interpolation is needed.
    """
    t = np.linalg.inv(source.affine) @ reference.affine
    rot = t[:3, :3]
    rounded = np.rint(rot)
    if not np.allclose(rot, rounded, atol=_TOL):
        return None
    if not (np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1)):
        return None
    offset = t[:3, 3]
    if not np.allclose(offset, np.rint(offset), atol=1e-3):
        return None
    out = []
    for b in range(3):
        a = int(np.nonzero(rounded[:, b])[0][0])
        out.append((a, int(rounded[a, b]), int(np.rint(offset[a]))))
    return out


def _inside_share(points_of: Volume, other: Volume) -> float:
    """Share of a lattice of ``points_of``'s voxel centres that fall inside ``other``'s field of view."""
    axes = [np.linspace(0, n - 1, min(n, _SAMPLES_PER_AXIS)) for n in points_of.shape]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    j = other.world_to_voxel(points_of.voxel_to_world(idx))
    inside = np.all((j >= -0.5) & (j <= np.array(other.shape) - 0.5), axis=1)
    return float(inside.mean())


def grid_overlap(source: Volume, reference: Volume) -> float:
    """How much two grids overlap in the world: the larger of the share of each one's (sampled) voxel centres
    inside the other, so 1.0 when one grid lies inside the other and 0.0 when they are disjoint."""
    return max(_inside_share(reference, source), _inside_share(source, reference))


def default_fill(volume: Volume) -> float:
    """The value ``resample_to`` puts outside ``volume``'s field of view (see the module docstring)."""
    if volume.is_label:
        return 0.0
    modality = str(volume.meta.get("modality", "") or "").upper()
    if modality:
        return AIR_HU if modality == "CT" else 0.0
    arr = volume.array
    if arr.size == 0 or not (np.issubdtype(arr.dtype, np.signedinteger) or np.issubdtype(arr.dtype, np.floating)):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN image: no HU evidence, fill 0
        low = float(np.nanmin(arr))
    return AIR_HU if low < -100 else 0.0


def _axis_slices(n_ref: int, n_src: int, sign: int, off: int) -> tuple[slice, slice] | None:
    """Matching slices of the reference axis and the source axis for ``s = sign * r + off``."""
    r = np.arange(n_ref)
    s = sign * r + off
    valid = (s >= 0) & (s < n_src)
    if not valid.any():
        return None
    r0, r1 = int(r[valid][0]), int(r[valid][-1]) + 1
    s0 = sign * r0 + off
    if sign > 0:
        return slice(r0, r1), slice(s0, s0 + (r1 - r0))
    stop = s0 - (r1 - r0)
    return slice(r0, r1), slice(s0, stop if stop >= 0 else None, -1)


def resample_to(volume: Volume, reference: Volume, *, order: int | None = None, fill: float | None = None
                ) -> Volume:
    """Put ``volume`` on ``reference``'s grid by world coordinates.

    Args:
        volume: image or label map, any orientation.
        reference: the target grid (its array is only used for the shape).
        order: interpolation order; default 0 for label maps, 1 for images. Label maps always use 0.
        fill: value outside ``volume``'s field of view; ``None``: ``default_fill`` (0 for labels and MR,
            -1024 for CT).

    Returns:
        A ``Volume`` with ``reference``'s shape, affine and slice ids. Labels (and the exact fast path) keep
        the dtype; interpolated images are ``float32``.

    Raises:
        GeometryError: a singular affine.
    """
    try:
        perm = grid_permutation(volume, reference)
    except np.linalg.LinAlgError as err:
        raise GeometryError(f"cannot invert affine: {err}") from err
    order = 0 if volume.is_label else (1 if order is None else int(order))
    fill = default_fill(volume) if fill is None else float(fill)
    meta = {**volume.meta, "resampled_to": reference.meta.get("source"), "resample_fill": fill}
    overlap = grid_overlap(volume, reference)
    if overlap < MIN_OVERLAP:
        src_name, ref_name = volume.meta.get("source", "the source"), reference.meta.get("source", "the reference")
        message = (f"{src_name} and {ref_name} do not overlap in the world: the result is all fill ({fill:g})"
                   if overlap == 0 else
                   f"{src_name} and {ref_name} overlap little: only {100 * overlap:.0f} % of the smaller grid lies "
                   f"inside the other; the rest is fill ({fill:g})")
        warnings.warn(message, GeometryWarning, stacklevel=2)
        meta["warnings"] = [*volume.meta.get("warnings", []), message]
    if perm is not None:
        src = np.transpose(volume.array, [a for a, _, _ in perm])
        dtype = volume.array.dtype
        if np.issubdtype(dtype, np.integer):  # a fill the dtype cannot hold is clipped to its range
            info = np.iinfo(dtype)
            fill = float(np.clip(fill, info.min, info.max))
        out = np.full(reference.shape, fill, dtype=dtype)
        ref_sl, src_sl = [], []
        for b, (a, sign, off) in enumerate(perm):
            pair = _axis_slices(reference.shape[b], volume.shape[a], sign, off)
            if pair is None:
                break
            ref_sl.append(pair[0])
            src_sl.append(pair[1])
        else:
            out[tuple(ref_sl)] = src[tuple(src_sl)]
        meta["resample"] = "exact"
    else:
        from scipy import ndimage

        t = np.linalg.inv(volume.affine) @ reference.affine
        dtype = volume.array.dtype if order == 0 else np.float32
        src = volume.array if order == 0 or volume.array.dtype == np.float32 else volume.array.astype(np.float32)
        out = ndimage.affine_transform(src, t[:3, :3], offset=t[:3, 3], output_shape=reference.shape,
                                       order=order, mode="constant", cval=fill, output=dtype)
        meta["resample"] = f"interpolated(order={order})"
    return Volume(array=out, affine=reference.affine.copy(), slice_ids=reference.slice_ids, meta=meta,
                  is_label=volume.is_label)
