"""Placing volumes on each other's grids by world coordinates: resampling, world <-> voxel (``reorient`` lives
in ``io.orientation``, re-exported here).

``resample_to`` maps every voxel of the reference grid through ``inv(source.affine) @ reference.affine`` into
the source. When that matrix is a signed axis permutation with unit scale and an integer offset (the common
case of a segmentation stored in another orientation on the same lattice, e.g. RSNA 2022's sagittal NIfTI
against the axial DICOM, or TotalSegmentator's LAS output), the result is an exact transpose/flip/crop, no
interpolation; otherwise ``scipy.ndimage.affine_transform`` interpolates (nearest for labels).
"""

from __future__ import annotations

import numpy as np

from spinelab.errors import GeometryError
from spinelab.io.orientation import reorient
from spinelab.io.volume import Volume

__all__ = ["resample_to", "reorient", "world_to_voxel", "voxel_to_world", "grid_permutation"]

_TOL = 1e-4  # relative tolerance for "unit scale" / "integer offset" in voxel units


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


def resample_to(volume: Volume, reference: Volume, *, order: int | None = None, fill: float = 0.0) -> Volume:
    """Put ``volume`` on ``reference``'s grid by world coordinates.

    Args:
        volume: image or label map, any orientation.
        reference: the target grid (its array is only used for the shape).
        order: interpolation order; default 0 for label maps, 1 for images. Label maps always use 0.
        fill: value outside ``volume``'s field of view.

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
    meta = {**volume.meta, "resampled_to": reference.meta.get("source")}
    if perm is not None:
        src = np.transpose(volume.array, [a for a, _, _ in perm])
        out = np.full(reference.shape, fill, dtype=volume.array.dtype)
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
