"""The crop grid of the fracture segmentation: one definition for pseudo-masks, training and inference.

``crop_grid(volume, vertebrae, grid)`` takes a canonical CT (``prepare_cervical_volume``) and its vertebra labels
on that grid and returns the C1-C7 box plus ``grid.margin_mm`` (clipped to the field of view), resampled to
``grid.spacing_mm`` along (D, H, W). The crop is axis-aligned with the canonical grid: each axis maps linearly,
``volume index = scale * crop index + offset``, so label maps move onto it exactly (``CropGrid.labels``: nearest
neighbour, or ``pool="max"`` to keep every set voxel a crop voxel covers, how a box one slice thick is
rasterised on a coarser grid), and the crop has an affine of its own (world positions: the CT moves onto it by
``resample_to``, and a probability map moves back onto any grid of the patient the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from spinelab.config.fracseg import FracGridConfig
from spinelab.data.transforms import window_stack
from spinelab.errors import InputError
from spinelab.io.geometry import resample_to
from spinelab.io.volume import Volume

__all__ = ["CropGrid", "PreparedCrop", "crop_grid", "prepare_crop", "window_image", "N_CERVICAL"]

N_CERVICAL = 7  # labels 1..7 = C1..C7


@dataclass(frozen=True)
class CropGrid:
    """The crop of one canonical CT.

    Args:
        shape: ``(D, H, W)`` of the crop.
        volume_shape: the canonical volume's ``(D, H, W)``.
        scale, offset: per axis, ``volume index = scale * crop index + offset``.
        affine: the crop's voxel-to-LPS affine.
    """

    shape: tuple[int, int, int]
    volume_shape: tuple[int, int, int]
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size of the crop in mm along (D, H, W)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def reference(self) -> Volume:
        """An empty label volume on the crop (the target grid of ``resample_to``)."""
        return Volume(array=np.zeros(self.shape, dtype=np.uint8), affine=self.affine.copy(), is_label=True,
                      meta={"source": "fracture crop"})

    def volume(self, array: np.ndarray, *, is_label: bool) -> Volume:
        """``array`` (on the crop) as a ``Volume`` with the crop's affine."""
        return Volume(array=np.asarray(array), affine=self.affine.copy(), is_label=is_label,
                      meta={"source": "fracture crop"})

    def _covered(self, axis: int, pool: str) -> list[tuple[int, int]]:
        """For each crop index of ``axis``, the half-open volume index range it takes labels from."""
        n, m = self.shape[axis], self.volume_shape[axis]
        a, b = self.scale[axis], self.offset[axis]
        out = []
        for g in range(n):
            c = a * g + b
            near = int(np.clip(np.rint(c), 0, m - 1))
            if pool == "max" and a > 1.0:
                lo, hi = int(np.ceil(c - a / 2)), int(np.floor(c + a / 2 - 1e-9))
                lo, hi = max(min(lo, near), 0), min(max(hi, near), m - 1)
                out.append((lo, hi + 1))
            else:
                out.append((near, near + 1))
        return out

    def labels(self, labels_on_volume: np.ndarray, *, pool: Literal["nearest", "max"] = "nearest") -> np.ndarray:
        """Labels on the canonical volume's grid -> the crop (dtype kept). ``max`` keeps the largest value a
        crop voxel covers (a thin structure survives a coarser grid); ``nearest`` the nearest voxel's."""
        out = np.asarray(labels_on_volume)
        if out.shape != self.volume_shape:
            raise ValueError(f"labels of shape {out.shape} are not on the volume grid {self.volume_shape}")
        for axis in range(3):
            ranges = self._covered(axis, pool)
            if all(hi - lo == 1 for lo, hi in ranges):
                out = np.take(out, [lo for lo, _ in ranges], axis=axis)
            else:
                out = np.stack([np.take(out, range(lo, hi), axis=axis).max(axis=axis) for lo, hi in ranges],
                               axis=axis)
        return out

    def image(self, volume: Volume, grid: FracGridConfig) -> np.ndarray:
        """The CT (HU) on the crop, linear by world position, windowed: ``(C, D, H, W)`` float32 in [0, 1].

        Only the part of the volume the crop covers is read (a long series is never converted whole).
        """
        lo = [max(int(np.floor(min(b, a * (n - 1) + b))) - 1, 0)
              for n, a, b in zip(self.shape, self.scale, self.offset, strict=True)]
        hi = [min(int(np.ceil(max(b, a * (n - 1) + b))) + 2, m)
              for n, a, b, m in zip(self.shape, self.scale, self.offset, self.volume_shape, strict=True)]
        part = np.asarray(volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        shift = np.eye(4)
        shift[:3, 3] = lo
        sub = Volume(array=part, affine=volume.affine @ shift, meta=dict(volume.meta))
        hu = np.asarray(resample_to(sub, self.reference(), order=1, fill=-1024.0).array, dtype=np.float32)
        return window_image(hu, grid)


def window_image(hu: np.ndarray, grid: FracGridConfig) -> np.ndarray:
    """``(D, H, W)`` HU -> ``(C, D, H, W)`` float32 in [0, 1], one channel per HU window."""
    d = hu.shape[0]
    stacked = window_stack(np.asarray(hu, dtype=np.float32), grid.windows)
    return stacked.reshape(d, len(grid.windows), *hu.shape[1:]).transpose(1, 0, 2, 3).copy()


def crop_grid(volume: Volume, vertebrae: np.ndarray, grid: FracGridConfig) -> CropGrid:
    """The crop of a canonical CT: the C1-C7 box of ``vertebrae`` (labels on ``volume``'s grid) plus
    ``grid.margin_mm``, clipped to the field of view, at ``grid.spacing_mm``.

    Raises:
        InputError: ``vertebrae`` holds no C1-C7 voxel or is not on the volume's grid.
    """
    source = volume.meta.get("source", "volume")
    vertebrae = np.asarray(vertebrae)
    if vertebrae.shape != volume.shape:
        raise InputError(source, f"vertebra labels of shape {vertebrae.shape} are not on the CT grid {volume.shape}")
    cervical = (vertebrae >= 1) & (vertebrae <= N_CERVICAL)
    if not cervical.any():
        raise InputError(source, "the vertebra mask holds no C1-C7 voxel: no fracture crop")
    spacing = np.asarray(volume.spacing)
    margin = grid.margin_mm / spacing
    idx = [np.flatnonzero(cervical.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    shape, scale, offset = [], [], []
    for axis in range(3):
        n_vol = volume.shape[axis]
        # Voxel edges of the box plus the margin, inside the field of view.
        lo = max(idx[axis][0] - 0.5 - margin[axis], -0.5)
        hi = min(idx[axis][-1] + 0.5 + margin[axis], n_vol - 0.5)
        step = grid.spacing_mm[axis] / spacing[axis]
        n = max(1, int(np.ceil((hi - lo) / step - 1e-6)))
        shape.append(n)
        scale.append(float(step))
        offset.append(float(lo + step / 2))
    move = np.diag([*scale, 1.0])
    move[:3, 3] = offset
    return CropGrid(shape=tuple(shape), volume_shape=volume.shape, scale=tuple(scale),  # type: ignore[arg-type]
                    offset=tuple(offset), affine=volume.affine @ move)


@dataclass(frozen=True)
class PreparedCrop:
    """One CT on its crop: the grid, the windowed image ``(C, D, H, W)`` and the vertebra labels ``(D, H, W)``."""

    grid: CropGrid
    image: np.ndarray
    vertebrae: np.ndarray


def prepare_crop(volume: Volume, vertebrae: np.ndarray, grid: FracGridConfig) -> PreparedCrop:
    """A canonical CT and its vertebra labels (on its grid) on the crop: what training and inference feed the
    network."""
    crop = crop_grid(volume, vertebrae, grid)
    return PreparedCrop(grid=crop, image=crop.image(volume, grid), vertebrae=crop.labels(np.asarray(vertebrae)))
