"""Turning a CT volume into model input: 2.5D slice stacks, windows, size.

Volumes arrive in the canonical orientation (``studies.prepare_cervical_volume``): increasing array index is
head to feet, so sequences of ascending centres run head to feet."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spinelab.data.transforms import adjacent_indices, crop_resize_stack, resize_stack, window_stack
from spinelab.io.volume import Volume

__all__ = ["stack_images"]


def stack_images(volume: Volume, centres: np.ndarray, *, windows: Sequence[tuple[float, float]], size: int,
                 box: Sequence[float] | None = None, span: int = 3) -> np.ndarray:
    """2.5D images around each centre slice: ``(T, span * n_windows, size, size)`` float32 in [0, 1].

    Args:
        volume: CT in HU, ``(D, H, W)``, canonical orientation.
        centres: array indices of the centre slices, in sequence order (ascending: head to feet).
        windows: HU windows ``(level, width)``.
        size: output side in pixels.
        box: optional pixel crop ``(x0, y0, x1, y1)`` applied before resizing.
        span: adjacent slices per image (3 = the seeds' RGB triplets).
    """
    depth = volume.shape[0]
    idx = adjacent_indices(np.asarray(centres), depth, span=span)
    slices = np.asarray(volume.array[idx.ravel()])
    stack = window_stack(slices, windows)
    stack = crop_resize_stack(stack, box, size) if box is not None else resize_stack(stack, size)
    return stack.reshape(len(centres), -1, size, size)
