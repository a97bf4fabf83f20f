"""The one function that turns a canonical CT into the segmentation network's input grid, and back.

``seg_input(volume, cfg)`` is used by training and inference alike. Each array axis is mapped linearly,
``volume index = scale * grid index + offset``, so labels move between the grids by nearest neighbour
(``SegInput.labels_to_volume``, ``SegInput.mask_to_grid``) and the grid has an affine of its own. Predictions
go back by ``SegInput.probabilities_to_labels``: class probabilities interpolated linearly onto the volume's
voxels, then argmax, so a 2.5 mm grid's staircase does not become the mask's edge on a 0.5 mm CT.

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
_BACK_CHUNK = 8  # volume slices mapped back at a time (K x 8 x 512 x 512 float32 on the dense path: 8 MB a class)
_DENSE_SHARE = 0.2  # above this share of mixed voxels in a chunk, interpolating all of it is the cheaper way


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

    def _linear_indices(self, axis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each volume index along ``axis``: the two grid indices around it and the second one's weight."""
        n, a, b, m = self.grid_shape[axis], self.scale[axis], self.offset[axis], self.volume_shape[axis]
        g = (np.arange(m) - b) / a if a > 0 else np.zeros(m)
        g = np.clip(g, 0.0, n - 1.0)
        lo = np.floor(g).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        return torch.from_numpy(lo), torch.from_numpy(hi), torch.from_numpy((g - lo).astype(np.float32))

    def probabilities_to_labels(self, probs: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
        """Class probabilities ``(K, D, H, W)`` on the grid (class 0 background) -> uint8 labels on the canonical
        volume's grid: each voxel takes the argmax of the probabilities interpolated trilinearly at its position.
        ``labels``, when given, is the grid's argmax of ``probs`` already computed by the caller (uint8).

        A convex mix of probability vectors that share an argmax keeps it, so only the voxels whose eight grid
        neighbours disagree are interpolated (a thin shell around each label); the rest take their neighbours'
        label, and everything outside the box around the grid's foreground stays background.
        """
        if tuple(probs.shape[1:]) != self.grid_shape:
            raise ValueError(f"probabilities of shape {tuple(probs.shape)} are not on the grid {self.grid_shape}")
        out = np.zeros(self.volume_shape, dtype=np.uint8)
        p = probs.float()
        labels = _argmax_classes(p) if labels is None else labels.to(device=p.device, dtype=torch.uint8)
        fg = (labels != 0).cpu().numpy()
        if not fg.any():
            return out
        # a grid cell (i, j, k)..(i + 1, j + 1, k + 1), clipped at the last index, is mixed when its corners disagree
        padded = torch.nn.functional.pad(labels.float()[None, None], (0, 1, 0, 1, 0, 1), mode="replicate")
        top = torch.nn.functional.max_pool3d(padded, 2, stride=1)
        bottom = -torch.nn.functional.max_pool3d(-padded, 2, stride=1)
        # one uint8 gather per chunk: the cell's lower-corner label, plus 128 where the cell is mixed
        code = labels | ((top != bottom)[0, 0].to(torch.uint8) << 7)
        spans, maps = [], []
        for axis in range(3):
            lo, hi, w = self._linear_indices(axis)
            hits = np.flatnonzero(fg.any(axis=tuple(i for i in range(3) if i != axis)))
            # volume voxels that read a grid index inside the foreground's range
            inside = torch.nonzero((hi >= int(hits[0])) & (lo <= int(hits[-1]))).flatten()
            start, stop = int(inside[0]), int(inside[-1]) + 1
            spans.append(slice(start, stop))
            maps.append([t[start:stop].to(p.device) for t in (lo, hi, w)])
        for first in range(0, len(maps[0][0]), _BACK_CHUNK):
            d_map = [t[first:first + _BACK_CHUNK] for t in maps[0]]
            chunk = code[d_map[0]][:, maps[1][0]][:, :, maps[2][0]]
            mixed = chunk >= 128
            chunk &= 127
            n_mixed = int(mixed.sum())
            if n_mixed > _DENSE_SHARE * chunk.numel():
                chunk = _interpolate_dense(p, (d_map, maps[1], maps[2]))
            elif n_mixed:
                at = torch.nonzero(mixed, as_tuple=True)
                chunk[at] = _interpolate_at(p, (d_map, maps[1], maps[2]), at)
            start = spans[0].start + first
            out[start:start + chunk.shape[0], spans[1], spans[2]] = chunk.cpu().numpy()
        return out

    def mask_to_grid(self, labels_on_volume: np.ndarray) -> np.ndarray:
        """Labels on the canonical volume's grid -> the network's grid (nearest neighbour, dtype kept)."""
        labels = np.asarray(labels_on_volume)
        if labels.shape != self.volume_shape:
            raise ValueError(f"labels of shape {labels.shape} are not on the volume grid {self.volume_shape}")
        return labels[np.ix_(*self._volume_indices())]


_Axis = list[torch.Tensor]  # per volume index along one axis: lower grid index, upper grid index, upper weight


def _argmax_classes(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(0)`` as uint8 (the first class on ties), by one comparison per class: three times faster on a
    CPU than torch's reduction over a leading axis of 8 classes."""
    best, index = x[0].clone(), torch.zeros(x.shape[1:], dtype=torch.uint8, device=x.device)
    for k in range(1, x.shape[0]):
        index.masked_fill_(x[k] > best, k)
        best = torch.maximum(best, x[k])
    return index


def _interpolate_at(p: torch.Tensor, axes: tuple[_Axis, _Axis, _Axis],
                    at: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Argmax of the trilinear mix of ``p`` (K, d, h, w) at the listed voxels of a chunk (``at``: z, y, x)."""
    mix = torch.zeros(p.shape[0], len(at[0]), device=p.device)
    for corner in np.ndindex(2, 2, 2):
        index, weight = [], torch.ones(len(at[0]), device=p.device)
        for bit, (lo, hi, w), i in zip(corner, axes, at, strict=True):
            index.append((hi if bit else lo)[i])
            weight = weight * (w[i] if bit else 1 - w[i])
        mix += p[:, index[0], index[1], index[2]] * weight
    return _argmax_classes(mix)


def _interpolate_dense(p: torch.Tensor, axes: tuple[_Axis, _Axis, _Axis]) -> torch.Tensor:
    """Argmax of the trilinear mix of ``p`` (K, d, h, w) at every voxel of a chunk, one axis at a time."""
    (d_lo, d_hi, d_w), (h_lo, h_hi, h_w), (w_lo, w_hi, w_w) = axes
    dw = d_w[None, :, None, None]
    x = p[:, d_lo] * (1 - dw) + p[:, d_hi] * dw
    hw = h_w[None, None, :, None]
    x = x[:, :, h_lo] * (1 - hw) + x[:, :, h_hi] * hw
    return _argmax_classes(x[..., w_lo] * (1 - w_w) + x[..., w_hi] * w_w)


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
