"""The one function that turns a canonical CT into the segmentation network's input grid, and back.

``seg_input(volume, cfg)`` is used by training and inference alike. Each array axis is mapped linearly,
``volume index = scale * grid index + offset``, so labels move between the grids by nearest neighbour
(``SegInput.labels_to_volume``, ``SegInput.mask_to_grid``) and the grid has an affine of its own.

* ``grid: fixed``: ``size[0]`` slices at evenly spaced quantiles of the slice index (``linspace(0, D-1)``,
  rounded: whole slices, as the 1st place picked them) and each slice resized in plane (area when shrinking,
  pixel centres aligned).
* ``grid: isotropic``: every axis resampled to ``spacing_mm`` (linear, pixel centres aligned; in plane by area
  when shrinking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spinelab.config.seg3d import SegInputConfig
from spinelab.data.transforms import resize_stack, window_stack
from spinelab.errors import InputError
from spinelab.io.volume import Volume

__all__ = ["SegInput", "seg_input", "grid_shape", "normalize_hu"]

_CHUNK = 64  # slices resized at a time (bounds the float32 copy of a long series)


@dataclass
class SegInput:
    """A CT on the network's grid and the way back.

    Args:
        image: ``(C, D, H, W)`` float32 in [0, 1].
        volume_shape: the canonical volume's ``(D, H, W)``.
        scale, offset: per axis, ``volume index = scale * grid index + offset``.
        affine: the grid's voxel-to-LPS affine (for writing grid-space NIfTI files).
    """

    image: np.ndarray
    volume_shape: tuple[int, int, int]
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    affine: np.ndarray

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size of the grid in mm along (D, H, W)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def _volume_indices(self) -> list[np.ndarray]:
        """For each axis, the volume index nearest to each grid index."""
        return [np.clip(np.rint(np.arange(n) * a + b), 0, m - 1).astype(np.int64)
                for n, a, b, m in zip(self.grid_shape, self.scale, self.offset, self.volume_shape, strict=True)]

    def _grid_indices(self) -> list[np.ndarray]:
        """For each axis, the grid index nearest to each volume index."""
        return [np.clip(np.rint((np.arange(m) - b) / a), 0, n - 1).astype(np.int64)
                for n, a, b, m in zip(self.grid_shape, self.scale, self.offset, self.volume_shape, strict=True)]

    def labels_to_volume(self, labels: np.ndarray) -> np.ndarray:
        """Labels ``(D, H, W)`` on the grid -> the canonical volume's grid (nearest neighbour, dtype kept)."""
        labels = np.asarray(labels)
        if labels.shape != self.grid_shape:
            raise ValueError(f"labels of shape {labels.shape} are not on the grid {self.grid_shape}")
        return labels[np.ix_(*self._grid_indices())]

    def mask_to_grid(self, labels_on_volume: np.ndarray) -> np.ndarray:
        """Labels on the canonical volume's grid -> the network's grid (nearest neighbour, dtype kept)."""
        labels = np.asarray(labels_on_volume)
        if labels.shape != self.volume_shape:
            raise ValueError(f"labels of shape {labels.shape} are not on the volume grid {self.volume_shape}")
        return labels[np.ix_(*self._volume_indices())]


def grid_shape(volume_shape: tuple[int, int, int], spacing: tuple[float, float, float],
               cfg: SegInputConfig) -> tuple[int, int, int]:
    """The grid ``(D, H, W)`` a volume of this shape and spacing gets."""
    if cfg.grid == "fixed":
        return tuple(int(s) for s in cfg.size)  # type: ignore[return-value]
    return tuple(max(1, int(round(n * s / cfg.spacing_mm))) for n, s in zip(volume_shape, spacing, strict=True))  # type: ignore[return-value]


def normalize_hu(hu: np.ndarray, cfg: SegInputConfig) -> np.ndarray:
    """``(D, H, W)`` HU -> ``(C, D, H, W)`` float32 in [0, 1] (HU windows, or the volume's own min-max)."""
    hu = np.asarray(hu, dtype=np.float32)
    if cfg.normalize == "minmax":
        lo, hi = float(hu.min()), float(hu.max())
        return ((hu - lo) / max(hi - lo, 1e-6))[None]
    d = hu.shape[0]
    return window_stack(hu, cfg.windows).reshape(d, len(cfg.windows), *hu.shape[1:]).transpose(1, 0, 2, 3).copy()


def _resize_slices(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``(D, H, W)`` -> ``(D, h, w)`` float32, slice by slice (area when shrinking), in chunks."""
    if array.shape[1:] == hw:
        return np.asarray(array, dtype=np.float32)
    out = np.empty((array.shape[0], *hw), dtype=np.float32)
    for s in range(0, array.shape[0], _CHUNK):
        out[s:s + _CHUNK] = resize_stack(np.asarray(array[s:s + _CHUNK], dtype=np.float32), hw)
    return out


def seg_input(volume: Volume, cfg: SegInputConfig) -> SegInput:
    """A canonical CT (HU, ``tasks.cervical.studies.prepare_cervical_volume``) on the network's grid.

    Raises:
        InputError: an empty volume or one without finite values.
    """
    shape = volume.shape
    source = volume.meta.get("source", "volume")
    if min(shape) < 1:
        raise InputError(source, f"empty volume of shape {shape}")
    target = grid_shape(shape, volume.spacing, cfg)
    # In plane (H, W): pixel centres aligned, as resize_stack (torch, align_corners=False) samples.
    scale = [float(m) / n for m, n in zip(shape, target, strict=True)]
    offset = [0.5 * a - 0.5 for a in scale]
    if cfg.grid == "fixed":
        # Whole slices at the quantiles of the slice index: index = i * (D - 1) / (n - 1).
        scale[0] = (shape[0] - 1) / (target[0] - 1) if target[0] > 1 else 0.0
        offset[0] = 0.0 if target[0] > 1 else (shape[0] - 1) / 2
        picks = np.clip(np.rint(np.arange(target[0]) * scale[0] + offset[0]), 0, shape[0] - 1).astype(np.int64)
        hu = _resize_slices(np.asarray(volume.array)[picks], target[1:])
    else:
        hu = _resize_slices(np.asarray(volume.array), target[1:])
        if hu.shape[0] != target[0]:
            x = torch.from_numpy(hu)[None, None]
            hu = torch.nn.functional.interpolate(x, size=target, mode="trilinear", align_corners=False)[0, 0].numpy()
    if not np.isfinite(hu).all():
        raise InputError(source, "the CT holds NaN or infinite values")
    step = np.diag([*scale, 1.0])
    step[:3, 3] = offset
    return SegInput(image=normalize_hu(hu, cfg), volume_shape=shape, scale=tuple(scale), offset=tuple(offset),
                    affine=volume.affine @ step)
