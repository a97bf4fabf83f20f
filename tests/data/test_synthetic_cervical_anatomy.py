"""Tests of the cervical phantom's seeded draw: level stacking, grid, fractures and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.data.synthetic.cervical_anatomy import LEVELS, sample_phantom

FRACTURED = {"C2": True, "C5": True}


def test_sample_phantom_is_deterministic_for_a_seed() -> None:
    a = sample_phantom(np.random.default_rng(7), fractured=FRACTURED, size=48)
    b = sample_phantom(np.random.default_rng(7), fractured=FRACTURED, size=48)
    c = sample_phantom(np.random.default_rng(8), fractured=FRACTURED, size=48)
    assert a == b
    assert a != c


def test_levels_stack_caudally_with_labels_in_order() -> None:
    spec = sample_phantom(np.random.default_rng(1), fractured={}, size=48)
    assert [v.level for v in spec.vertebrae] == list(LEVELS)
    assert [v.label for v in spec.vertebrae] == list(range(1, len(LEVELS) + 1))
    z = [v.center[2] for v in spec.vertebrae]
    assert all(hi > lo for hi, lo in zip(z, z[1:], strict=False))
    for vert in spec.vertebrae:
        frame = np.array(vert.frame)
        assert np.allclose(frame @ frame.T, np.eye(3), atol=1e-9)  # orthonormal rows u, v, s


def test_only_fractured_levels_get_one_fracture() -> None:
    spec = sample_phantom(np.random.default_rng(2), fractured=FRACTURED, size=48)
    counts = {v.level: len(v.fractures) for v in spec.vertebrae}
    assert counts == {lv: int(lv in FRACTURED) for lv in LEVELS}
    for vert in spec.vertebrae:
        for frac in vert.fractures:
            assert np.linalg.norm(frac.normal) == pytest.approx(1.0)
            assert frac.gap > 0 and frac.radius > 0


def test_grid_follows_slices_and_affine() -> None:
    spec = sample_phantom(np.random.default_rng(3), fractured={}, size=40, slices=(10, 14))
    k, h, w = spec.shape
    assert 10 <= k <= 14 and (h, w) == (40, 40)
    voxel = spec.affine @ np.array([2.0, 3.0, 5.0, 1.0])
    expected = np.array(spec.origin) + np.array([5 * spec.pixel, 3 * spec.pixel, 2 * spec.dz])
    assert np.allclose(voxel[:3], expected)
    # The grid reaches from below C7 to above C1 (slices run caudal to cranial).
    top = spec.origin[2] + (k - 1) * spec.dz
    assert spec.origin[2] < spec.vertebrae[6].center[2] < spec.vertebrae[0].center[2] < top
