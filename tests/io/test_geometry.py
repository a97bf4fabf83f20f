"""resample_to / reorient: exact permutation fast path, interpolation, label dtypes, real alignment."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from spinelab.errors import GeometryError
from spinelab.io.geometry import grid_permutation, reorient, resample_to, world_to_voxel
from spinelab.io.volume import Volume


@pytest.mark.parametrize("codes", ["LAS", "PIR", "PSR", "RSP", "SPL"])
def test_reorient_then_resample_back_is_exact(oblique_affine, rng, codes):
    img = Volume(array=rng.integers(0, 9, size=(6, 7, 8)).astype(np.uint8), affine=oblique_affine, is_label=True)
    other = reorient(img, codes)
    assert other.orientation == codes
    # every voxel keeps its world position
    idx = np.array([2, 3, 4])
    world = img.voxel_to_world(idx)
    j = np.rint(other.world_to_voxel(world)).astype(int)
    assert other.array[tuple(j)] == img.array[tuple(idx)]
    back = resample_to(other, img)
    assert back.meta["resample"] == "exact"
    assert back.array.dtype == np.uint8 and np.array_equal(back.array, img.array)


def test_crop_and_pad_with_integer_offset(oblique_affine, rng):
    img = Volume(array=rng.normal(size=(6, 7, 8)).astype(np.float32), affine=oblique_affine)
    ref_aff = oblique_affine.copy()
    ref_aff[:3, 3] = img.voxel_to_world(np.array([2, -1, 3]))
    ref = Volume(array=np.zeros((3, 4, 9), np.float32), affine=ref_aff)
    with pytest.warns(UserWarning, match="overlap little: only 42 %"):  # 3 of 4 rows x 5 of 9 columns
        out = resample_to(img, ref, fill=-7)
    assert out.meta["resample"] == "exact"
    assert np.array_equal(out.array[:, 1:, :5], img.array[2:5, 0:3, 3:8])
    assert np.all(out.array[:, 0, :] == -7) and np.all(out.array[:, :, 5:] == -7)


def test_interpolated_path(oblique_affine):
    arr = np.zeros((4, 8, 8), np.float32)
    arr[:, :, :] = np.arange(8, dtype=np.float32)[None, None, :]  # ramp along W
    img = Volume(array=arr, affine=oblique_affine)
    ref_aff = oblique_affine.copy()
    ref_aff[:3, 3] = img.voxel_to_world(np.array([0, 0, 0.5]))
    out = resample_to(img, Volume(array=np.zeros((4, 8, 7), np.float32), affine=ref_aff))
    assert out.meta["resample"].startswith("interpolated")
    np.testing.assert_allclose(out.array[1, 3], np.arange(7) + 0.5, atol=1e-5)
    lab = Volume(array=(arr > 3).astype(np.int16), affine=oblique_affine, is_label=True)
    out = resample_to(lab, Volume(array=np.zeros((4, 8, 7), np.float32), affine=ref_aff))
    assert out.array.dtype == np.int16 and set(np.unique(out.array)) <= {0, 1}


def test_grid_permutation_rejects_scaling_and_errors(oblique_affine):
    img = Volume(array=np.zeros((2, 2, 2)), affine=oblique_affine)
    scaled = oblique_affine.copy()
    scaled[:3, :3] *= 2
    assert grid_permutation(img, Volume(array=np.zeros((2, 2, 2)), affine=scaled)) is None
    np.testing.assert_allclose(world_to_voxel(img, img.voxel_to_world(np.array([1.0, 1, 1]))), [1, 1, 1])
    with pytest.raises(GeometryError, match="three different axes"):
        reorient(img, "LLS")


@pytest.mark.realdata
def test_real_segmentation_aligns_with_dicom(realdata):
    from spinelab.io.dicom import read_series
    from spinelab.io.nifti import read_nifti

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct = read_series(realdata / "totalsegmentator" / "example_ct_dicom_j2k")
    seg = read_nifti(realdata / "totalsegmentator" / "example_seg_dicom.nii.gz")
    out = resample_to(seg, ct)
    assert out.meta["resample"] == "exact" and out.array.dtype == np.uint8
    # By hand: the file is (i, j, k) = (x: R->L, y: P->A, z: I->S) i.e. LAS; our CT grid is (d, h, w) with
    # h running A->P and w R->L. So d = k, h = 511 - j (flip), w = i.
    import nibabel as nib

    raw = np.asanyarray(nib.load(realdata / "totalsegmentator" / "example_seg_dicom.nii.gz").dataobj)
    by_hand = raw.transpose(2, 1, 0)[:, ::-1, :]
    assert np.array_equal(out.array, by_hand)
    for label in (32, 33):  # T12, T11
        assert ct.array[out.array == label].mean() > 150


def _shifted(vol: Volume, voxels: tuple[float, float, float], shape: tuple[int, int, int]) -> Volume:
    aff = vol.affine.copy()
    aff[:3, 3] = vol.voxel_to_world(np.array(voxels, float))
    return Volume(array=np.zeros(shape, np.float32), affine=aff, meta={"source": "ref.nii"})


@pytest.mark.parametrize("meta, is_label, values, expected", [
    ({"modality": "CT"}, False, (0, 100), -1024.0),
    ({"modality": "MR"}, False, (0, 100), 0.0),
    ({}, False, (-1024, 400), -1024.0),  # NIfTI in HU: no modality, air in the image
    ({}, False, (0, 900), 0.0),  # NIfTI MR
    ({"modality": "CT"}, True, (0, 5), 0.0),  # label maps stay 0
])
def test_default_fill_is_air_for_ct_and_zero_for_labels_and_mr(oblique_affine, meta, is_label, values, expected):
    arr = np.full((4, 5, 6), values[1], np.int16)
    arr[0, 0, 0] = values[0]
    img = Volume(array=arr, affine=oblique_affine, meta=meta, is_label=is_label)
    out = resample_to(img, _shifted(img, (1, 0, 0), (4, 5, 6)))  # one slice beyond the source
    assert out.meta["resample_fill"] == expected
    assert np.all(out.array[-1] == expected) and np.all(out.array[:-1] == img.array[1:])
    interp = resample_to(img, _shifted(img, (1, 0, 0.5), (4, 5, 6)))  # half a voxel: interpolated
    assert interp.meta["resample"].startswith("interpolated") and np.all(interp.array[-1] == expected)


def test_disjoint_and_barely_overlapping_grids_warn(oblique_affine):
    from spinelab.io.geometry import GeometryWarning, grid_overlap

    img = Volume(array=np.ones((4, 10, 10), np.int16), affine=oblique_affine, meta={"source": "ct.nii"})
    with pytest.warns(GeometryWarning, match="ct.nii and ref.nii do not overlap"):
        out = resample_to(img, _shifted(img, (20, 0, 0), (4, 10, 10)))
    assert np.all(out.array == 0) and "do not overlap" in out.meta["warnings"][-1]
    with pytest.warns(GeometryWarning, match="overlap little"):
        resample_to(img, _shifted(img, (0, 0, 8), (4, 10, 10)))  # 2 of 10 columns shared
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resample_to(img, _shifted(img, (1, 2, 3), (2, 3, 3)))  # a small grid inside the source: fine
    assert grid_overlap(img, _shifted(img, (1, 2, 3), (2, 3, 3))) == 1.0
