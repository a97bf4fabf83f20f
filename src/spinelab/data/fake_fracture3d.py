"""The fake-fracture augmentation in 3D: a thin lucent slab through the bone of an intact vertebra.

The 3D form of ``data.fake_fracture`` (the RSNA 2022 7th place's ``Utils/fake_fracture_generation.py``): a
disc-shaped slab ``thickness_mm`` thick and ``radius_mm`` across, centred on a bone voxel of a vertebra
labelled intact, at a random orientation; inside it, bone (above ``bone_hu``) becomes soft tissue (``fill_hu``,
with a little noise) with a soft edge across the slab. The painted voxels are returned so that the caller adds
them to the segmentation target: the network sees far more fractures than the labelled ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paint_slab"]


def paint_slab(
    image: np.ndarray,
    windows: Sequence[tuple[float, float]],
    region: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    *,
    thickness_mm: tuple[float, float] = (0.8, 2.0),
    radius_mm: tuple[float, float] = (4.0, 10.0),
    bone_hu: float = 150.0,
    fill_hu: tuple[float, float] = (30.0, 90.0),
) -> np.ndarray:
    """Paint one slab into ``image`` in place.

    Args:
        image: ``(C, D, H, W)`` windowed CT in [0, 1], one channel per window of ``windows``.
        windows: the HU windows ``(level, width)`` of the channels.
        region: ``(D, H, W)`` bool, where the slab may cut (the voxels of intact vertebrae).
        spacing: voxel size in mm along (D, H, W).
        rng: random generator.
        thickness_mm, radius_mm: ranges of the slab's thickness and disc radius.
        bone_hu: only voxels above this value are cut (soft tissue keeps its texture).
        fill_hu: range of the value painted into the slab.

    Returns:
        ``(D, H, W)`` bool: the voxels painted (empty when ``region`` holds too little bone).
    """
    channels, *shape = image.shape
    lows = np.array([level - w / 2 for level, w in windows], dtype=np.float32)
    widths = np.array([w for _, w in windows], dtype=np.float32)
    thresholds = (bone_hu - lows) / widths  # bone in each window's [0, 1] units
    bone = region & (image[0] > thresholds[0])
    centres = np.argwhere(bone)
    if len(centres) < 20:
        return np.zeros(shape, dtype=bool)
    centre = centres[int(rng.integers(len(centres)))].astype(np.float32)
    normal = rng.normal(size=3)
    normal /= max(float(np.linalg.norm(normal)), 1e-6)
    thick, radius = float(rng.uniform(*thickness_mm)), float(rng.uniform(*radius_mm))
    step = np.asarray(spacing, dtype=np.float32)
    # Only the box around the disc is touched.
    reach = np.ceil((radius + thick) / step).astype(int)
    lo = np.maximum(centre.astype(int) - reach, 0)
    hi = np.minimum(centre.astype(int) + reach + 1, shape)
    grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, step, strict=True)],
                        indexing="ij")
    offset = np.stack(grids, axis=-1)  # mm from the centre
    signed = offset @ normal
    across = np.abs(signed)
    along = np.linalg.norm(offset - signed[..., None] * normal, axis=-1)
    # Soft edge (partial volume) across the slab over one voxel; a hard rim.
    edge = float(step.min())
    weight = np.clip((thick / 2 + edge / 2 - across) / edge, 0.0, 1.0) * (along < radius)
    window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    weight = weight * bone[window]
    fill_value = float(rng.uniform(*fill_hu))
    for c in range(channels):
        fill = float(np.clip((fill_value - lows[c]) / widths[c], 0.0, 1.0))
        cut = weight * (image[c][window] > thresholds[c])
        noise = rng.normal(0.0, 0.01, size=cut.shape).astype(np.float32)
        image[c][window] = image[c][window] * (1 - cut) + (fill + noise) * cut
    painted = np.zeros(shape, dtype=bool)
    painted[window] = weight >= 0.5
    return painted
