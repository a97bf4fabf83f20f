"""Per-vertebra crops of the seg3d route: geometry, channels, the mask channel, missing vertebrae, the cache."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from spinelab.errors import InputError
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.seg3d.crops import (
    CropCache,
    crop_key,
    describe_crops,
    vertebra_crops,
    vertebra_extents,
)

SETTINGS = SimpleNamespace(n_slices=5, span=3, image_size=16, window=(100.0, 200.0), margin=0.0)


def _study(missing: int | None = None) -> tuple[Volume, np.ndarray]:
    """70 slices, each of constant HU = slice index (so a channel tells which slice it came from); vertebra k
    occupies slices 10k-8 .. 10k-1 and a 8 x 12 in-plane box that moves with k."""
    depth = 70
    hu = np.repeat(np.arange(depth, dtype=np.int16)[:, None, None], 40 * 48, axis=1).reshape(depth, 40, 48)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    for k in range(1, 8):
        if k != missing:
            labels[10 * k - 8:10 * k, 10 + k:18 + k, 20:32] = k
    canonical = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)  # D to the feet
    vol = Volume(hu, canonical, slice_ids=[str(100 + d) for d in range(depth)])
    return vol, labels


def test_extents_are_each_vertebras_box() -> None:
    _, labels = _study()
    ext = vertebra_extents(labels)
    assert list(ext) == ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    z, y, x = ext["C3"]
    assert (z.start, z.stop, y.start, y.stop, x.start, x.stop) == (22, 30, 13, 21, 20, 32)


def test_crops_take_evenly_spaced_slices_with_adjacent_channels_and_the_mask() -> None:
    vol, labels = _study()
    crops = vertebra_crops(vol, labels, SETTINGS)
    assert crops.images.shape == (7, 5, 4, 16, 16) and crops.images.dtype == np.float32
    assert crops.found.all()
    # C3 spans slices 22..29: five centres evenly spaced over it, head to feet
    assert crops.slices[2].tolist() == [22, 24, 26, 27, 29]
    # channels 0..2 are slices centre-1 .. centre+1 in the 0..200 HU window (HU = slice index)
    centre = crops.slices[2, 1]
    for j in range(3):
        assert crops.images[2, 1, j].mean() == pytest.approx((centre - 1 + j) / 200, abs=1e-4)
    # the last channel is C3's own mask: the square crop around its 8 x 12 box is 8/12 covered
    assert crops.images[2, :, 3].mean() == pytest.approx(8 / 12, abs=0.05)
    assert (crops.images[2, :, 3, 8, 8] == 1).all() and (crops.images[2, :, 3, 0, 0] == 0).all()
    # square box centred on the vertebra, no margin
    assert crops.boxes[2].tolist() == [20.0, 11.0, 32.0, 23.0]


def test_a_missing_vertebra_has_no_crops_and_neighbours_keep_their_own_masks() -> None:
    vol, labels = _study(missing=4)
    crops = vertebra_crops(vol, labels, SETTINGS)
    assert crops.found.tolist() == [True, True, True, False, True, True, True]
    assert not crops.images[3].any() and (crops.slices[3] == -1).all()
    assert crops.images[4, :, -1].max() == 1.0  # C5's mask channel is C5's, not shifted to C4
    info = describe_crops(crops, vol)
    assert "C4" not in info and info["C5"]["start_index"] == 42 and info["C5"]["slice_numbers"] == ["142", "149"]


def test_labels_off_the_ct_grid_are_refused() -> None:
    vol, labels = _study()
    with pytest.raises(ValueError, match="not on the CT grid"):
        vertebra_crops(vol, labels[:-1], SETTINGS)


def test_cache_round_trip_one_vertebra_and_stale_keys(tmp_path) -> None:
    vol, labels = _study()
    crops = vertebra_crops(vol, labels, SETTINGS)
    key = crop_key(SETTINGS, "truth")
    assert key != crop_key(SETTINGS, "oof:abc")
    assert key != crop_key(SimpleNamespace(**{**vars(SETTINGS), "image_size": 32}), "truth")
    cache = CropCache(tmp_path, key)
    assert not cache.has("s1")
    cache.put("s1", crops)
    back = cache.get("s1")
    assert np.abs(back.images - crops.images).max() <= 0.5 / 255 + 1e-6
    assert back.found.tolist() == crops.found.tolist() and (back.slices == crops.slices).all()
    one = cache.get("s1", vertebra=2)
    assert one.images.shape == (1, 5, 4, 16, 16) and np.allclose(one.images[0], back.images[2])
    np.testing.assert_array_equal(cache.centre_slices("s1"), crops.slices)  # from the metadata alone
    other = CropCache(tmp_path, crop_key(SETTINGS, "oof:abc"))
    assert not other.has("s1")
    with pytest.raises(InputError, match="other settings"):
        other.get("s1")
    with pytest.raises(InputError, match="other settings"):
        other.centre_slices("s1")
    calls = []
    other.ensure("s1", lambda: calls.append(1) or crops)
    other.ensure("s1", lambda: calls.append(1) or crops)
    assert calls == [1]  # made once, then read
