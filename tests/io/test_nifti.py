"""read_nifti / write_nifti: axis and RAS->LPS conventions, exact round trips, label dtypes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from spinelab.errors import InputError
from spinelab.io.nifti import is_nifti_file, read_nifti, smallest_int_dtype, write_nifti
from spinelab.io.volume import Volume


def test_axes_and_affine_convention(tmp_path, rng):
    data = rng.integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)  # file axes (i, j, k)
    ras = np.array([[-2.0, 0, 0, 10], [0, 0, 3.0, -5], [0, 1.5, 0, 7], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "a.nii.gz")
    vol = read_nifti(tmp_path / "a.nii.gz")
    assert vol.shape == (7, 6, 5) and not vol.is_label
    assert np.array_equal(vol.array, data.transpose(2, 1, 0))
    # voxel (i, j, k) of the file must land on the same world point (LPS = RAS with x, y negated)
    i, j, k = 4, 2, 3
    ras_pt = ras @ [i, j, k, 1]
    np.testing.assert_allclose(vol.voxel_to_world(np.array([k, j, i])), [-ras_pt[0], -ras_pt[1], ras_pt[2]])
    assert vol.spacing == pytest.approx((3.0, 1.5, 2.0))  # columns k, j, i of the RAS affine


def test_round_trip_exact(tmp_path, rng, oblique_affine):
    for arr, label in ((rng.normal(size=(4, 5, 6)).astype(np.float32), False),
                       (rng.integers(0, 30, size=(4, 5, 6)).astype(np.uint16), True)):
        vol = Volume(array=arr, affine=oblique_affine, is_label=label)
        path = write_nifti(vol, tmp_path / "v.nii.gz")
        back = read_nifti(path, is_label=label)
        assert back.array.dtype == arr.dtype and np.array_equal(back.array, arr)
        np.testing.assert_allclose(back.affine, oblique_affine, atol=1e-5)
        assert back.orientation == vol.orientation
    assert [p.name for p in tmp_path.iterdir()] == ["v.nii.gz"]  # atomic: no temporary left behind


@pytest.mark.realdata
def test_sct_float64_levels_cast_and_ordered(realdata):
    vol = read_nifti(realdata / "sct_testing_data" / "t2_seg-manual_labeled.nii.gz")
    assert vol.is_label and vol.array.dtype == np.uint8 and vol.meta["dtype_on_disk"] == "float64"
    assert vol.orientation == "RSP"  # the file is PSR; our (k, j, i) reverses it
    assert sorted(np.unique(vol.array).tolist()) == [0, 2, 3, 4, 5]
    s = [vol.voxel_to_world(np.argwhere(vol.array == lv).mean(axis=0))[2] for lv in (2, 3, 4, 5)]
    assert np.all(np.diff(s) < 0), f"C2->C5 should run head to feet, got S={s}"


@pytest.mark.realdata
def test_total_spine_labels_head_to_feet(realdata):
    vol = read_nifti(realdata / "totalsegmentator" / "example_ct_spine_total.nii.gz")
    assert vol.is_label and vol.array.dtype == np.uint8
    s = [vol.voxel_to_world(np.argwhere(vol.array == lv).mean(axis=0))[2] for lv in (33, 32, 31, 30, 29, 28, 27, 26)]
    assert np.all(np.diff(s) < 0), f"T11->S1 should run head to feet, got S={s}"


@pytest.mark.realdata
def test_image_is_not_label(realdata):
    vol = read_nifti(realdata / "totalsegmentator" / "example_ct.nii.gz")
    assert not vol.is_label and vol.array.min() < -1000


def test_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_nifti(tmp_path / "missing.nii.gz")
    (tmp_path / "fake.nii.gz").write_text("not nifti")
    assert not is_nifti_file(tmp_path / "fake.nii.gz")
    with pytest.raises(InputError, match="not a readable NIfTI"):
        read_nifti(tmp_path / "fake.nii.gz")
    vol = Volume(array=np.zeros((2, 2, 2), np.float32) + 0.5, affine=np.eye(4))
    write_nifti(vol, tmp_path / "half.nii")
    with pytest.raises(InputError, match="not integral"):
        read_nifti(tmp_path / "half.nii", is_label=True)
    with pytest.raises(InputError, match=r"must end in \.nii"):
        write_nifti(vol, tmp_path / "x.img")


def test_smallest_int_dtype():
    assert smallest_int_dtype(np.array([0.0, 255.0])) == np.uint8
    assert smallest_int_dtype(np.array([-1.0, 5.0])) == np.int8
    assert smallest_int_dtype(np.array([0.0, 70000.0])) == np.uint32
