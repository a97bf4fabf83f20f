"""Turning an MR series into model input: 2.5D slice stacks, crops around world points, pixel <-> world.

Intensities are scaled with the window of the whole series (``studies.volume_window``) so that a crop keeps
its brightness relative to the rest of the study (a narrowed canal is dark relative to its neighbours).
"""

from __future__ import annotations

import numpy as np

from spinelab.data.transforms import adjacent_indices, crop_resize_stack, resize_stack
from spinelab.io.volume import Volume

__all__ = ["slice_stack", "crop_at_world", "image_to_voxel", "voxel_to_image"]


def _scale(slices: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((np.asarray(slices, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def slice_stack(volume: Volume, centre: int, *, span: int, size: int, window: tuple[float, float]
                ) -> np.ndarray:
    """``span`` adjacent slices around ``centre`` resized to ``(span, size, size)`` float32 in [0, 1]."""
    idx = adjacent_indices(np.array([int(centre)]), volume.shape[0], span=span)[0]
    return resize_stack(_scale(volume.array[idx], window), size)


def image_to_voxel(xy: np.ndarray, volume: Volume, size: int) -> np.ndarray:
    """Image pixel ``(..., 2)`` (x, y) of a ``size`` x ``size`` resized slice -> voxel ``(..., 2)`` (h, w)."""
    h, w = volume.shape[1:]
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([(xy[..., 1] + 0.5) * h / size - 0.5, (xy[..., 0] + 0.5) * w / size - 0.5], axis=-1)


def voxel_to_image(hw: np.ndarray, volume: Volume, size: int) -> np.ndarray:
    """Voxel ``(..., 2)`` (h, w) -> image pixel ``(..., 2)`` (x, y) of the resized slice."""
    h, w = volume.shape[1:]
    hw = np.asarray(hw, dtype=np.float64)
    return np.stack([(hw[..., 1] + 0.5) * size / w - 0.5, (hw[..., 0] + 0.5) * size / h - 0.5], axis=-1)


def crop_at_world(volume: Volume, world: np.ndarray, *, span: int, size: int, crop_mm: float,
                  window: tuple[float, float], slice_margin: float = 1.0) -> tuple[np.ndarray, bool]:
    """A ``(span, size, size)`` crop of ``crop_mm`` x ``crop_mm`` centred on a world point.

    Args:
        volume: the series.
        world: ``(3,)`` LPS mm point (NaN: no point).
        span: adjacent slices around the slice nearest the point.
        size: output side in pixels.
        crop_mm: side of the crop in millimetres (in-plane spacing decides the pixel box).
        window: intensity window of the series.
        slice_margin: how many slices outside the stack a point may lie and still be cropped.

    Returns:
        The crop and whether it is valid (``False``: zeros, the point is absent or outside the series).
    """
    empty = np.zeros((span, size, size), np.float32)
    if not np.all(np.isfinite(world)):
        return empty, False
    d, h, w = volume.world_to_voxel(np.asarray(world))
    depth, rows, cols = volume.shape
    if not (-slice_margin - 0.5 <= d <= depth - 0.5 + slice_margin) or not (0 <= h < rows and 0 <= w < cols):
        return empty, False
    sh, sw = volume.spacing[1:]
    half_h, half_w = crop_mm / 2 / sh, crop_mm / 2 / sw
    idx = adjacent_indices(np.array([int(np.clip(np.rint(d), 0, depth - 1))]), depth, span=span)[0]
    box = (w - half_w + 0.5, h - half_h + 0.5, w + half_w + 0.5, h + half_h + 0.5)
    return crop_resize_stack(_scale(volume.array[idx], window), box, size), True
