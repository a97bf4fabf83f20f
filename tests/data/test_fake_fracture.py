"""Fake-fracture augmentation: a lucent cleft cut through bone only, on a run of consecutive steps."""

from __future__ import annotations

import numpy as np

from spinelab.data.fake_fracture import paint_cleft, paint_intact
from spinelab.data.transforms import window_stack

WINDOWS = [(400.0, 1800.0), (40.0, 400.0)]


def _vertebra(steps: int = 5, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A disc of bone (700 HU) in soft tissue (40 HU), 3 slices per step, windowed like stage 2."""
    yy, xx = np.mgrid[0:size, 0:size]
    bone = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    hu = np.where(bone, 700.0, 40.0).astype(np.float32)
    stack = window_stack(np.repeat(hu[None], 3 * steps, axis=0), WINDOWS)
    return stack.reshape(steps, 3 * len(WINDOWS), size, size), bone


def test_cleft_replaces_bone_by_soft_tissue_on_consecutive_steps() -> None:
    images, bone = _vertebra()
    before = images.copy()
    painted = paint_cleft(images, WINDOWS, np.random.default_rng(0), max_steps=3)
    assert 1 <= len(painted) <= 3 and np.all(np.diff(painted) == 1)
    changed = np.abs(images - before) > 0.05
    for s in range(images.shape[0]):
        assert changed[s].any() == (s in painted)
    # Only bone is cut; soft tissue is untouched.
    assert not changed[:, :, ~bone].any()
    # In the bone window the cleft's core reads as soft tissue, (30..90 HU + 500) / 1800 (its edges blend).
    cut = images[painted[0], 0][changed[painted[0], 0]]
    core = cut[cut < 0.36]
    assert core.size >= 5 and core.min() > 0.25


def test_no_bone_means_nothing_is_painted() -> None:
    images = window_stack(np.full((9, 32, 32), 40.0, np.float32), WINDOWS).reshape(3, 6, 32, 32)
    before = images.copy()
    painted = paint_cleft(images, WINDOWS, np.random.default_rng(1))
    assert painted.size == 0 and np.array_equal(images, before)


def test_paint_intact_paints_only_intact_vertebrae_and_reports_what_it_painted() -> None:
    one, _ = _vertebra(steps=4, size=48)
    images = np.repeat(one[None], 7, axis=0)
    images[3] = window_stack(np.full((12, 48, 48), 40.0, np.float32), WINDOWS).reshape(4, 6, 48, 48)  # no bone
    before = images.copy()
    intact = np.array([True, False, True, True, True, False, True])
    rng = np.random.default_rng(2)
    painted = paint_intact(images, intact, 1.0, rng, lambda x: paint_cleft(x, WINDOWS, rng))
    # every intact vertebra with bone gets a cleft; the fractured ones and the boneless one do not
    assert sorted(painted) == [0, 2, 4, 6]
    for i in range(7):
        changed = np.flatnonzero(np.abs(images[i] - before[i]).reshape(4, -1).max(1) > 0.05)
        np.testing.assert_array_equal(changed, painted.get(i, np.array([], dtype=np.int64)))
    assert paint_intact(images, intact, 0.0, rng, lambda x: paint_cleft(x, WINDOWS, rng)) == {}
