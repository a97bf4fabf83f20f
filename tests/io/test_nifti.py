"""read_nifti / write_nifti: axis and RAS->LPS conventions, exact round trips, label dtypes."""

from __future__ import annotations

from pathlib import Path

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


# --- bad headers and data: one InputError each, checked before the data is read --------------------------
def _patched(tmp_path, name: str, **fields: float) -> Path:
    """A small .nii whose raw header fields are overwritten after nibabel wrote it (nibabel refuses NaNs)."""
    import struct

    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([1.0, 1.0, 2.0, 1.0])), path)
    raw = bytearray(path.read_bytes())
    offsets = {"srow_x0": (280, "<f"), "srow_y0": (296, "<f"), "srow_y1": (300, "<f"), "pixdim2": (84, "<f"),
               "qform_code": (252, "<h"), "sform_code": (254, "<h")}
    for key, value in fields.items():
        off, fmt = offsets[key]
        struct.pack_into(fmt, raw, off, value)
    path.write_bytes(bytes(raw))
    return path


def test_nan_or_singular_affine_refused(tmp_path):
    with pytest.raises(InputError, match="affine .* NaN or infinite"):
        read_nifti(_patched(tmp_path, "nan.nii", srow_x0=float("nan"), sform_code=1))
    # the y axis of the sform made equal to the x axis: no volume
    with pytest.raises(InputError, match="affine is singular"):
        read_nifti(_patched(tmp_path, "sing.nii", srow_y0=1.0, srow_y1=0.0, sform_code=1))


@pytest.mark.parametrize("pixdim", [0.0, -1.0, float("nan")])
def test_bad_pixdim_refused(tmp_path, pixdim):
    with pytest.raises(InputError, match=r"voxel sizes \(pixdim\) must be finite and positive"):
        read_nifti(_patched(tmp_path, "p.nii", pixdim2=pixdim))


def test_truncated_and_oversized_files_refused(tmp_path, rng):
    img = nib.Nifti1Image(rng.integers(0, 3000, (40, 40, 40)).astype(np.int16), np.eye(4))
    nib.save(img, tmp_path / "full.nii.gz")
    data = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="NIfTI data could not be read"):
        read_nifti(tmp_path / "cut.nii.gz")
    nib.save(img, tmp_path / "full.nii")
    raw = (tmp_path / "full.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="NIfTI file too small for its header"):
        read_nifti(tmp_path / "cut.nii")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((16000, 16000, 16000))  # 8 TB claimed by a few hundred bytes
    hdr.set_data_dtype(np.int16)
    (tmp_path / "huge.nii").write_bytes(hdr.binaryblock + b"\x00" * 4 + bytes(64))
    with pytest.raises(InputError, match="claims .* bytes of data"):
        read_nifti(tmp_path / "huge.nii")


def test_real_niftis_still_read(realdata):
    for name in ("example_ct_sm.nii.gz", "example_mr_sm.nii.gz"):
        vol = read_nifti(realdata / "totalsegmentator" / name)
        assert vol.array.ndim == 3 and np.isfinite(vol.affine).all()
