"""Turning a CT volume into model input: 2.5D slice stacks, head-first order, windows, size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spinelab.data.transforms import adjacent_indices, crop_resize_stack, resize_stack, window_stack
from spinelab.io.volume import Volume

__all__ = ["canonical_order", "stack_images"]


def canonical_order(volume: Volume, centres: np.ndarray) -> np.ndarray:
    """Reorder array-index ``centres`` so the sequence runs head to feet, whatever the stored order.

    ``read_series`` sorts slices along the slice normal, so the array may run either way; the model always
    sees the same anatomical direction (the position embedding depends on it).
    """
    from spinelab.tasks.cervical.studies import head_first

    centres = np.sort(np.asarray(centres))
    return centres if head_first(volume) else centres[::-1].copy()


def stack_images(volume: Volume, centres: np.ndarray, *, windows: Sequence[tuple[float, float]], size: int,
                 box: Sequence[float] | None = None, span: int = 3) -> np.ndarray:
    """2.5D images around each centre slice: ``(T, span * n_windows, size, size)`` float32 in [0, 1].

    Args:
        volume: CT in HU, ``(D, H, W)``.
        centres: array indices of the centre slices, already in sequence order (see ``canonical_order``).
        windows: HU windows ``(level, width)``.
        size: output side in pixels.
        box: optional pixel crop ``(x0, y0, x1, y1)`` applied before resizing.
        span: adjacent slices per image (3 = the seeds' RGB triplets).
    """
    depth = volume.shape[0]
    idx = adjacent_indices(np.asarray(centres), depth, span=span)
    if len(centres) > 1 and centres[0] > centres[-1]:
        idx = idx[:, ::-1]  # keep the head-to-feet order inside each triplet too
    slices = np.asarray(volume.array[idx.ravel()])
    stack = window_stack(slices, windows)
    stack = crop_resize_stack(stack, box, size) if box is not None else resize_stack(stack, size)
    return stack.reshape(len(centres), -1, size, size)
