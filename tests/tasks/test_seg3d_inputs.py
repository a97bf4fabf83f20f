"""The network's input grid: fixed (slice quantiles + in-plane resize) and isotropic, windows, and the way back."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.config.seg3d import SegInputConfig
from spinelab.errors import InputError
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.seg3d.inputs import grid_shape, seg_input


def _ct(shape: tuple[int, int, int] = (40, 32, 24), spacing: tuple[float, float, float] = (2.5, 0.8, 0.8)) -> Volume:
    rng = np.random.default_rng(0)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    return Volume(rng.integers(-1000, 1500, shape).astype(np.int16), affine)


def test_the_fixed_grid_picks_whole_slices_at_the_quantiles() -> None:
    ct = _ct()
    cfg = SegInputConfig(grid="fixed", size=(11, 32, 24), windows=[(400.0, 1800.0)])
    si = seg_input(ct, cfg)
    assert si.image.shape == (1, 11, 32, 24) and si.image.dtype == np.float32
    picks = np.rint(np.linspace(0, 39, 11)).astype(int)  # np.quantile(range(40), linspace(0, 1, 11)), rounded
    expected = np.clip((ct.array[picks].astype(np.float32) + 500.0) / 1800.0, 0, 1)
    np.testing.assert_allclose(si.image[0], expected, atol=1e-6)
    # the grid's affine maps grid slice i to volume slice i * 39 / 10 (the picked slice is its nearest)
    np.testing.assert_allclose(si.affine @ [5, 0, 0, 1], ct.affine @ [5 * 3.9, 0, 0, 1], atol=1e-9)
    assert abs(picks[5] - 5 * 3.9) <= 0.5


def test_isotropic_grid_size_follows_the_spacing() -> None:
    ct = _ct()
    cfg = SegInputConfig(grid="isotropic", spacing_mm=1.6)
    assert grid_shape(ct.shape, ct.spacing, cfg) == (62, 16, 12)
    si = seg_input(ct, cfg)
    assert si.grid_shape == (62, 16, 12)
    np.testing.assert_allclose(si.spacing, (40 * 2.5 / 62, 1.6, 1.6))
    # the grid's centre and the volume's centre are the same world point (pixel centres aligned)
    centre = (np.array(si.grid_shape) - 1) / 2
    np.testing.assert_allclose(si.affine[:3] @ [*centre, 1], ct.affine[:3] @ [*((np.array(ct.shape) - 1) / 2), 1])


@pytest.mark.parametrize("grid", ["fixed", "isotropic"])
def test_labels_go_to_the_grid_and_back_by_nearest_neighbour(grid: str) -> None:
    ct = _ct()
    labels = np.zeros(ct.shape, dtype=np.uint8)
    labels[8:20, 8:24, 4:20] = 3
    labels[24:36, 8:24, 4:20] = 5
    si = seg_input(ct, SegInputConfig(grid=grid, size=(20, 16, 12), spacing_mm=1.6))
    on_grid = si.mask_to_grid(labels)
    assert on_grid.shape == si.grid_shape and set(np.unique(on_grid)) == {0, 3, 5}
    back = si.labels_to_volume(on_grid)
    assert back.shape == ct.shape and back.dtype == np.uint8
    assert (back == labels).mean() > 0.95  # only boundary voxels can move
    with pytest.raises(ValueError, match="not on the grid"):
        si.labels_to_volume(labels)


def test_minmax_scales_each_volume_and_windows_give_one_channel_each() -> None:
    ct = _ct()
    mm = seg_input(ct, SegInputConfig(size=(8, 8, 8), normalize="minmax")).image
    assert mm.shape == (1, 8, 8, 8) and mm.min() >= 0 and mm.max() <= 1 and mm.max() - mm.min() > 0.5
    two = SegInputConfig(size=(8, 8, 8), windows=[(400, 1800), (40, 400)])
    assert two.in_chans == 2 and seg_input(ct, two).image.shape == (2, 8, 8, 8)


def test_a_volume_with_nan_is_one_input_error() -> None:
    ct = _ct()
    bad = ct.with_array(ct.array.astype(np.float32), meta={"source": "x.nii"})
    bad.array[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="x.nii.*NaN"):
        seg_input(bad, SegInputConfig(grid="isotropic"))
