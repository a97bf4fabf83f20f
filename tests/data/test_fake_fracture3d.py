"""The 3D fake fracture: a lucent slab through bone inside the allowed region only, its voxels returned."""

from __future__ import annotations

import numpy as np

from spinelab.data.fake_fracture3d import paint_slab

WINDOWS = [(400.0, 1800.0), (40.0, 400.0)]


def _image(hu: np.ndarray) -> np.ndarray:
    return np.stack([np.clip((hu - (lv - w / 2)) / w, 0, 1) for lv, w in WINDOWS]).astype(np.float32)


def test_slab_cuts_bone_of_the_region_only_and_darkens_it() -> None:
    hu = np.full((24, 24, 24), 40.0, dtype=np.float32)
    hu[4:20, 4:20, 4:20] = 700.0  # bone
    region = np.zeros(hu.shape, dtype=bool)
    region[4:12] = True  # the intact vertebra: the upper half of the bone
    image = _image(hu)
    before = image.copy()
    painted = paint_slab(image, WINDOWS, region, (1.0, 1.0, 1.0), np.random.default_rng(0), radius_mm=(6.0, 6.0))
    assert painted.any()
    bone = hu > 150
    assert not (painted & ~(region & bone)).any()
    assert (image[0][painted] < before[0][painted] - 0.1).all()  # lucent: bone became soft tissue
    changed = np.abs(image - before).max(axis=0) > 0.05
    assert not (changed & ~region).any()
    # Thin: no more than a few mm across in every direction through its centre of mass.
    assert painted.sum() < 0.25 * region.sum()


def test_too_little_bone_paints_nothing() -> None:
    image = _image(np.full((8, 8, 8), 40.0, dtype=np.float32))
    before = image.copy()
    painted = paint_slab(image, WINDOWS, np.ones((8, 8, 8), dtype=bool), (1, 1, 1), np.random.default_rng(1))
    assert not painted.any() and np.array_equal(image, before)
