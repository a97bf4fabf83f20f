"""Image preparation that MONAI and albumentations lack: HU windows on slice stacks, stack resizing,
and augmentation applied identically to every slice of a sequence.

A sequence of T images with C channels each is handled as one ``(H, W, T*C)`` image, so a single
albumentations call draws one set of parameters for the whole sequence (consistent augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

__all__ = [
    "window_stack",
    "resize_stack",
    "crop_resize_stack",
    "adjacent_indices",
    "evenly_spaced",
    "SequenceAugment",
]


def window_stack(slices: np.ndarray, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """Apply HU windows: ``(N, H, W)`` HU -> ``(N * len(windows), H, W)`` float32 in [0, 1].

    Args:
        slices: CT values in Hounsfield units.
        windows: ``(level, width)`` pairs, e.g. bone ``(400, 1800)``.

    Returns:
        Channels ordered window-major within each slice: ``[s0w0, s0w1, s1w0, ...]``.
    """
    x = np.asarray(slices, dtype=np.float32)
    chans = []
    for level, width in windows:
        lo = level - width / 2
        chans.append(np.clip((x - lo) / width, 0.0, 1.0))
    out = np.stack(chans, axis=1)  # (N, n_windows, H, W)
    return out.reshape(-1, *x.shape[1:])


def resize_stack(stack: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize ``(C, H, W)`` to ``(C, size, size)`` (area when shrinking, linear when growing)."""
    h, w = (size, size) if isinstance(size, int) else size
    if stack.shape[1:] == (h, w):
        return np.ascontiguousarray(stack, dtype=np.float32)
    # One torch call for any channel count (OpenCV 5 resizes at most 4 channels at a time).
    x = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[None]
    mode = "area" if stack.shape[1] > h and stack.shape[2] > w else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return torch.nn.functional.interpolate(x, size=(h, w), mode=mode, **kwargs)[0].numpy()


def crop_resize_stack(stack: np.ndarray, box: Sequence[float], size: int | tuple[int, int]) -> np.ndarray:
    """Crop ``(C, H, W)`` to the pixel box ``(x0, y0, x1, y1)`` (padded with zeros outside) and resize."""
    _, h, w = stack.shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        stack = np.pad(stack, ((0, 0), (pad, pad), (pad, pad)))
        x0, x1, y0, y1 = x0 + pad, x1 + pad, y0 + pad, y1 + pad
    return resize_stack(stack[:, y0:y1, x0:x1], size)


def adjacent_indices(centres: np.ndarray, depth: int, *, span: int = 3) -> np.ndarray:
    """For each centre slice, the ``span`` adjacent slice indices (clipped to the volume): ``(N, span)``."""
    offsets = np.arange(span) - span // 2
    return np.clip(np.asarray(centres)[:, None] + offsets[None, :], 0, depth - 1)


def evenly_spaced(start: float, end: float, n: int, *, jitter: float = 0.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """``n`` integer positions evenly spaced over ``[start, end]``, optionally shifted by up to
    ``jitter`` steps at random (training-time sampling of different slices each epoch)."""
    pos = np.linspace(start, end, n)
    if jitter and rng is not None and n > 1:
        step = (end - start) / (n - 1)
        pos = pos + rng.uniform(-jitter, jitter) * step
    return np.clip(np.rint(pos), min(start, end), max(start, end)).astype(np.int64)


class SequenceAugment:
    """Random augmentation drawn once and applied to every image of a sequence.

    Args:
        hflip: probability of a left-right flip (box x coordinates follow).
        affine: probability of a small scale/shift/rotation.
        intensity: probability of a brightness/contrast change.
        seed: seed of the augmentation RNG.
    """

    def __init__(self, *, hflip: float = 0.5, affine: float = 0.5, intensity: float = 0.5,
                 seed: int | None = None) -> None:
        self.transform = A.Compose(
            [
                A.HorizontalFlip(p=hflip),
                A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10), p=affine,
                         border_mode=cv2.BORDER_CONSTANT),
                A.RandomBrightnessContrast(0.15, 0.15, p=intensity),
            ],
            bbox_params=A.BboxParams(format="albumentations", label_fields=["box_ids"], clip=True,
                                     min_visibility=0.3),
            seed=seed,
        )

    def __call__(self, images: np.ndarray, boxes: np.ndarray | None = None,
                 box_mask: np.ndarray | None = None, *, rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Augment a sequence.

        Args:
            images: ``(T, C, H, W)`` float32 in [0, 1].
            boxes: ``(T, 4)`` normalised ``(x0, y0, x1, y1)``; rows with ``box_mask`` False are ignored.
            box_mask: ``(T,)`` which boxes are valid.
            rng: when given, the parameters are drawn from a seed taken from it (reproducible training; the
                pipeline's own generator would give every DataLoader worker the same stream).

        Returns:
            Augmented images, boxes and mask (a box pushed out of the image becomes invalid).
        """
        if rng is not None:
            self.transform.set_random_seed(int(rng.integers(2**31)))
        t, c, h, w = images.shape
        hwc = images.reshape(t * c, h, w).transpose(1, 2, 0)
        bxs, ids = [], []
        if boxes is not None and box_mask is not None:
            for i in np.flatnonzero(box_mask):
                b = np.clip(boxes[i], 0.0, 1.0)
                if b[2] - b[0] > 1e-3 and b[3] - b[1] > 1e-3:
                    bxs.append(b.tolist())
                    ids.append(int(i))
        out = self.transform(image=hwc, bboxes=np.asarray(bxs, dtype=np.float32).reshape(-1, 4), box_ids=ids)
        new_images = np.ascontiguousarray(out["image"].transpose(2, 0, 1).reshape(t, c, h, w), dtype=np.float32)
        if boxes is None:
            return new_images, None, None
        new_boxes = np.zeros_like(boxes)
        new_mask = np.zeros(t, dtype=bool)
        for b, i in zip(out["bboxes"], out["box_ids"], strict=True):
            new_boxes[int(i)] = b
            new_mask[int(i)] = True
        return new_images, new_boxes, new_mask
