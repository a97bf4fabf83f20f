"""The crop grid: the C1-C7 box plus the margin, exact label moves, the CT by world position."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.config.fracseg import FracGridConfig
from spinelab.errors import InputError
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.fracseg.crop import crop_grid, prepare_crop, window_image


def _volume(shape=(20, 30, 40), spacing=(2.0, 0.8, 0.8)) -> Volume:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 7.0)
    world = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"))
    hu = (10.0 * world[0] + 3.0 * world[2] - 200.0).astype(np.float32)  # linear: trilinear sampling is exact
    return Volume(array=hu, affine=affine)


def _vertebrae(shape=(20, 30, 40)) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[4:9, 10:20, 12:30] = 2
    lab[9:14, 11:21, 13:29] = 3
    lab[15:18, 0:5, 0:5] = 9  # a thoracic label is outside the C1-C7 box
    return lab


def test_crop_covers_the_cervical_box_plus_margin_inside_the_field_of_view() -> None:
    vol, lab = _volume(), _vertebrae()
    grid = FracGridConfig(margin_mm=2.0, spacing_mm=(1.0, 0.5, 0.5))
    crop = crop_grid(vol, lab, grid)
    assert crop.spacing == pytest.approx((1.0, 0.5, 0.5))
    # Corners of the crop in volume index units, from the crop's own affine.
    first = np.linalg.solve(vol.affine, crop.affine @ np.array([0, 0, 0, 1.0]))[:3]
    last = np.linalg.solve(vol.affine, crop.affine @ np.array([*(np.array(crop.shape) - 1), 1.0]))[:3]
    box_lo, box_hi = np.array([4, 10, 12]), np.array([13, 20, 29])
    margin_vox = 2.0 / np.array(vol.spacing)
    step = np.array([1.0, 0.5, 0.5]) / np.array(vol.spacing)
    # The first voxel's edge is the box's edge less the margin, clipped to the field of view.
    np.testing.assert_allclose(first - step / 2, np.maximum(box_lo - 0.5 - margin_vox, -0.5))
    # The last voxel's edge reaches the box's far edge plus the margin (whole voxels: up to one step beyond).
    far = np.minimum(box_hi + 0.5 + margin_vox, np.array(vol.shape) - 0.5)
    assert np.all(last + step / 2 >= far - 1e-6) and np.all(last + step / 2 < far + step)
    # The thoracic label 9 at rows/cols 0..4 lies outside: the crop starts after it in plane.
    assert first[1] > 5 and first[2] > 5


def test_labels_move_exactly_and_max_pool_keeps_a_thin_slab() -> None:
    vol, lab = _volume(), _vertebrae()
    crop = crop_grid(vol, lab, FracGridConfig(margin_mm=0.0, spacing_mm=(4.0, 0.8, 0.8)))
    thin = np.zeros(vol.shape, dtype=np.uint8)
    thin[7] = 1  # one slice of 2 mm, the crop's planes are 4 mm apart
    assert crop.labels(thin, pool="max").any(axis=(1, 2)).sum() == 1
    on_crop = crop.labels(lab)
    assert set(np.unique(on_crop)) <= {0, 2, 3}
    assert (on_crop == 2).any() and (on_crop == 3).any()


def test_image_is_sampled_by_world_position() -> None:
    vol, lab = _volume(), _vertebrae()
    grid = FracGridConfig(margin_mm=1.0, spacing_mm=(1.5, 0.6, 0.7), windows=[(0.0, 2000.0)])
    prepared = prepare_crop(vol, lab, grid)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in prepared.grid.shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ prepared.grid.affine[:3, :3].T + prepared.grid.affine[:3, 3]
    rel = world - vol.affine[:3, 3]
    expected = (10.0 * rel[:, 0] + 3.0 * rel[:, 2] - 200.0).reshape(prepared.grid.shape)
    np.testing.assert_allclose(prepared.image[0], window_image(expected, grid)[0], atol=2e-3)
    assert prepared.vertebrae.shape == prepared.grid.shape


def test_no_cervical_vertebra_is_one_clear_error() -> None:
    vol = _volume()
    with pytest.raises(InputError, match="no C1-C7 voxel"):
        crop_grid(vol, np.zeros(vol.shape, dtype=np.uint8), FracGridConfig())
    with pytest.raises(InputError, match="not on the CT grid"):
        crop_grid(vol, np.zeros((2, 2, 2), dtype=np.uint8), FracGridConfig())
