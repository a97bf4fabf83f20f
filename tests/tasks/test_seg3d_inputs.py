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


def _brute_force_labels(si, probs: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Argmax of the probabilities interpolated trilinearly at every volume voxel, one voxel at a time."""
    out = np.zeros(si.volume_shape, dtype=np.uint8)
    n = si.grid_shape
    for v in np.ndindex(*si.volume_shape):
        g = [min(max((v[a] - si.offset[a]) / si.scale[a], 0.0), n[a] - 1.0) for a in range(3)]
        lo = [int(np.floor(x)) for x in g]
        mix = np.zeros(probs.shape[0])
        for corner in np.ndindex(2, 2, 2):
            idx = [min(lo[a] + corner[a], n[a] - 1) for a in range(3)]
            w = np.prod([(g[a] - lo[a]) if corner[a] else (1 - (g[a] - lo[a])) for a in range(3)])
            mix += w * probs[:, idx[0], idx[1], idx[2]]
        out[v] = int(np.argmax(mix))
    return out


@pytest.mark.parametrize("grid", ["fixed", "isotropic"])
def test_probabilities_go_back_by_trilinear_interpolation_then_argmax(grid: str) -> None:
    import torch

    ct = _ct((14, 12, 10))
    si = seg_input(ct, SegInputConfig(grid=grid, size=(6, 5, 4), spacing_mm=2.0))
    rng = np.random.default_rng(1)
    probs = rng.random((4, *si.grid_shape)).astype(np.float32)
    probs[0] += 0.8  # background wins in most voxels, so the foreground box is smaller than the grid
    probs[1:, 1, 1, 1] += 2.0
    probs[2, -1, -2, 0] += 2.0
    probs /= probs.sum(0, keepdims=True)
    back = si.probabilities_to_labels(torch.from_numpy(probs))
    assert back.shape == ct.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, _brute_force_labels(si, probs))
    given = torch.from_numpy(probs.argmax(0).astype(np.uint8))  # the caller's argmax, as Segmenter passes it
    np.testing.assert_array_equal(si.probabilities_to_labels(torch.from_numpy(probs), given), back)
    background = torch.zeros(4, *si.grid_shape)
    background[0] = 1.0
    assert not si.probabilities_to_labels(background).any()
    with pytest.raises(ValueError, match="not on the grid"):
        si.probabilities_to_labels(torch.zeros(4, *ct.shape))


def test_interpolated_probabilities_follow_a_smooth_edge_better_than_nearest_labels() -> None:
    """A ball on a 0.5 mm CT predicted on a 2 mm grid: the linear way back keeps its round edge."""
    import torch

    shape, spacing = (48, 64, 64), (0.5, 0.5, 0.5)
    ct = _ct(shape, spacing)
    centre, radius = np.array([12.0, 16.0, 15.0]), 7.0  # mm from the first voxel
    world = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)),
                                 indexing="ij"), -1)
    truth = (np.linalg.norm(world - centre, axis=-1) <= radius).astype(np.uint8)
    si = seg_input(ct, SegInputConfig(grid="isotropic", spacing_mm=2.0))
    # the network's ideal output: the ball's probability falling off over 0.5 mm around its surface
    gw = np.stack(np.meshgrid(*(si.scale[a] * np.arange(n) + si.offset[a] for a, n in enumerate(si.grid_shape)),
                              indexing="ij"), -1) * np.array(spacing)
    ball = 1 / (1 + np.exp((np.linalg.norm(gw - centre, axis=-1) - radius) / 0.5))
    probs = torch.from_numpy(np.stack([1 - ball, ball]).astype(np.float32))

    def dice(a: np.ndarray) -> float:
        return float(2 * (a & truth).sum() / (a.sum() + truth.sum()))

    nearest = dice(si.labels_to_volume(probs.argmax(0).numpy().astype(np.uint8)))
    linear = dice(si.probabilities_to_labels(probs))
    assert linear > 0.96 and linear > nearest + 0.02, (linear, nearest)
