"""to_canonical / AxisMap / orientation_letters: exact moves, world positions kept, labels that follow."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spinelab.errors import GeometryError
from spinelab.io.orientation import (
    CANONICAL,
    AxisMap,
    axis_map,
    is_canonical,
    orientation_letters,
    reorient,
    stored_axis_map,
    to_canonical,
)
from spinelab.io.volume import Volume

ALL_CODES = ["".join(p) for p in itertools.product("LR", "AP", "SI")]
ALL_CODES = sorted({"".join(q) for c in ALL_CODES for q in itertools.permutations(c)})  # the 48 orientations


def _assert_same_world(src: Volume, out: Volume, n: int = 200, seed: int = 0) -> None:
    """Every sampled voxel of ``src`` is found with its value at the same world position in ``out``."""
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.integers(0, s, n) for s in src.shape], axis=1)
    j = out.world_to_voxel(src.voxel_to_world(idx))
    np.testing.assert_allclose(j, np.rint(j), atol=1e-6)
    j = np.rint(j).astype(int)
    assert np.all((j >= 0) & (j < np.array(out.shape)))
    np.testing.assert_array_equal(np.asarray(out.array)[tuple(j.T)], np.asarray(src.array)[tuple(idx.T)])


@pytest.mark.parametrize("codes", ALL_CODES)
def test_every_orientation_comes_back_canonical(oblique_affine, rng, codes):
    base = Volume(array=rng.integers(0, 1000, size=(5, 6, 7)).astype(np.int16), affine=oblique_affine,
                  slice_ids=[str(i) for i in range(5)], meta={"modality": "CT"})
    stored = reorient(base, codes)
    assert stored.orientation == codes
    canon = to_canonical(stored)
    assert canon.orientation == CANONICAL and is_canonical(canon)
    _assert_same_world(stored, canon)
    assert canon.meta["modality"] == "CT"
    # the base volume (SPL) and the canonical one differ only by a D flip, whatever the stored orientation
    np.testing.assert_array_equal(canon.array, base.array[::-1])
    np.testing.assert_allclose(canon.affine, to_canonical(base).affine)
    # the recorded map, composed over both moves, takes the base grid to the canonical one
    assert stored_axis_map(canon) == AxisMap((0, 1, 2), (True, False, False), base.shape)
    if codes[0] in "SI":  # slice ids survive the moves that keep the slice axis
        assert canon.slice_ids == [str(i) for i in range(4, -1, -1)]
    else:
        assert stored.slice_ids is None and canon.slice_ids is None


def test_slice_ids_follow_d_and_are_dropped_when_the_slice_axis_moves(oblique_affine, rng):
    vol = Volume(array=rng.normal(size=(4, 5, 6)).astype(np.float32), affine=oblique_affine,
                 slice_ids=["a", "b", "c", "d"])
    assert vol.orientation == "SPL"
    canon = to_canonical(vol)
    assert canon.slice_ids == ["d", "c", "b", "a"]
    np.testing.assert_array_equal(canon.array[0], vol.array[3])
    sagittal = reorient(vol, "RSP")  # D is now the stored W axis
    assert sagittal.slice_ids is None
    with pytest.raises(GeometryError, match="slice axis moved"):
        stored_axis_map(sagittal).slice_index(0)


def test_canonical_volume_is_returned_unchanged_without_copy(oblique_affine):
    aff = oblique_affine.copy()
    aff[:3, 0] *= -1  # D towards the feet: already IPL
    vol = Volume(array=np.zeros((2, 3, 4), np.int16), affine=aff)
    assert to_canonical(vol) is vol
    flipped = to_canonical(Volume(array=np.zeros((2, 3, 4), np.int16), affine=oblique_affine))
    assert flipped.array.base is not None  # a view: a memory-mapped cache stays mapped


def test_axis_map_moves_slice_indices_and_boxes_like_the_pixels(oblique_affine):
    # One bright pixel block at stored (d=1, rows 2..3, columns 4..6) in a volume stored LAS-like in-plane.
    arr = np.zeros((3, 8, 10), np.uint8)
    arr[1, 2:4, 4:7] = 1
    aff = oblique_affine.copy()
    aff[:3, 1], aff[:3, 2] = [-0.7, 0, 0], [0, -0.7, 0]  # rows towards R, columns towards A
    vol = Volume(array=arr, affine=aff, is_label=True)
    m = axis_map(vol)
    assert m.perm == (0, 2, 1) and m.flip == (True, True, True)
    canon = to_canonical(vol)
    d = int(m.slice_index(1))
    box = m.boxes(np.array([4.0, 2.0, 7.0, 4.0]))  # x0, y0, x1, y1 on the stored slice
    ys, xs = np.nonzero(canon.array[d])
    np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    h, w = arr.shape[1:]
    norm = m.boxes(np.array([4 / w, 2 / h, 7 / w, 4 / h]), normalised=True)
    np.testing.assert_allclose(norm, box / np.array([h, w, h, w]))  # canonical width is the stored height
    np.testing.assert_allclose(m.index(np.array([1, 2, 4])), [d, 10 - 1 - 4, 8 - 1 - 2])
    assert np.isnan(m.boxes(np.full(4, np.nan))).all()
    assert AxisMap.from_dict(m.to_dict()) == m


def test_bad_codes_and_shapes_are_refused(oblique_affine):
    vol = Volume(array=np.zeros((2, 3, 4)), affine=oblique_affine)
    for codes in ("LLS", "XYZ", "LP"):
        with pytest.raises(GeometryError, match="three different axes"):
            reorient(vol, codes)
    with pytest.raises(GeometryError, match="stored grid"):
        axis_map(vol).apply(np.zeros((4, 3, 2)))


def test_orientation_letters_for_canonical_and_stored_volumes(oblique_affine):
    canon = to_canonical(Volume(array=np.zeros((2, 3, 4)), affine=oblique_affine))
    letters = orientation_letters(canon)
    assert letters["axial"] == {"top": "A", "bottom": "P", "left": "R", "right": "L"}  # radiological
    assert letters["coronal"] == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert letters["sagittal"] == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    stored = Volume(array=np.zeros((2, 3, 4)), affine=oblique_affine)  # SPL: feet first
    assert orientation_letters(stored)["coronal"]["top"] == "I"


@pytest.mark.realdata
@pytest.mark.parametrize("name, stored_codes", [
    ("totalsegmentator/example_ct.nii.gz", None),
    ("tptbox/sub-ct_label-22_ct.nii.gz", "PIR"),
    ("sct_testing_data/t2.nii.gz", "PSR"),
])
def test_real_volumes_round_trip_with_world_positions_kept(realdata, name, stored_codes):
    from spinelab.io.nifti import read_nifti

    vol = read_nifti(realdata / name)
    if stored_codes is not None:
        # the file's (i, j, k) codes, read in spinelab's reversed (k, j, i) order
        assert vol.orientation == stored_codes[::-1]
    canon = to_canonical(vol)
    assert canon.orientation == CANONICAL
    _assert_same_world(vol, canon, n=2000)
    back = reorient(canon, vol.orientation)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)
