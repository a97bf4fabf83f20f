"""read_series / list_series / read_dicom_pixels: real codecs, geometry and every documented rule."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pydicom
import pytest

from spinelab.errors import InputError, SeriesSelectionError
from spinelab.io import _decode_pool
from spinelab.io.dicom import DicomWarning, list_series, read_dicom_pixels, read_series
from spinelab.io.volume import Volume
from tests.io._helpers import ct_volume, leaked_shm_files, shm_decode_files, write

EMRI = ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"]


def _quiet(*args, **kwargs) -> Volume:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomWarning)
        return read_series(*args, **kwargs)


# --- real data ----------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_j2k_and_jpegls_identical_and_match_simpleitk(realdata):
    import SimpleITK as sitk

    folder = realdata / "totalsegmentator" / "example_ct_dicom_j2k"
    with pytest.warns(DicomWarning, match="empty SeriesInstanceUID"):
        j2k = read_series(folder)
    jls = _quiet(realdata / "totalsegmentator" / "example_ct_dicom_jpegls1_derived")
    assert j2k.array.dtype == np.int16 and j2k.shape == (20, 512, 512)
    assert np.array_equal(j2k.array, jls.array)
    assert (int(j2k.array.min()), int(j2k.array.max())) == (-1024, 1839)
    assert j2k.meta["transfer_syntaxes"] == {"1.2.840.10008.1.2.4.90"}
    assert jls.meta["transfer_syntaxes"] == {"1.2.840.10008.1.2.4.70"}
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(img), j2k.array)
    # SimpleITK index (x, y, z) = our (w, h, d): compare origin, spacing and direction columns.
    direction = np.array(img.GetDirection()).reshape(3, 3)
    expected = np.eye(4)
    for ours, theirs in ((2, 0), (1, 1), (0, 2)):
        expected[:3, ours] = direction[:, theirs] * img.GetSpacing()[theirs]
    expected[:3, 3] = img.GetOrigin()
    np.testing.assert_allclose(j2k.affine, expected, atol=1e-6)
    np.testing.assert_allclose(jls.affine, expected, atol=1e-6)
    # Files sort by name in descending z; slices must follow the normal instead (z increasing).
    z = [j2k.voxel_to_world(np.array([d, 0, 0]))[2] for d in range(20)]
    assert np.all(np.diff(z) > 0)
    assert j2k.meta["instance_numbers"] == sorted(j2k.meta["instance_numbers"], reverse=True)
    assert j2k.slice_ids[0].startswith("CT.1.3.12")  # dotted names are kept whole


@pytest.mark.realdata
def test_real_backends_agree(realdata):
    folder = realdata / "totalsegmentator" / "example_ct_dicom_jpegls1_derived"
    a = _quiet(folder, backend="pydicom", workers=1)
    b = _quiet(folder, backend="dicomsdl", workers=2)
    assert np.array_equal(a.array, b.array)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "MR2_J2KR.dcm", *EMRI])
def test_every_codec_fixture_decodes_and_dicomsdl_equals_pydicom(realdata, name):
    path = realdata / "pydicom_data" / name
    ref = read_dicom_pixels(path)
    assert ref.size > 0
    assert np.array_equal(read_dicom_pixels(path, backend="dicomsdl"), ref)
    if name.startswith("emri"):
        assert ref.shape == (10, 64, 64)
        # dicomsdl itself on one frame (the whole-file call may fall back to pydicom for encapsulated frames)
        assert np.array_equal(_decode_pool.decode_stored(path, backend="dicomsdl", frame=0), ref[0])
        assert np.array_equal(ref, read_dicom_pixels(realdata / "pydicom_data" / "emri_small.dcm"))
    ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    # every verified syntax is exercised here; RLE decodes identically but stays off dicomsdl (a fuzz crash)
    assert ts in _decode_pool.DICOMSDL_VERIFIED_SYNTAXES | {"1.2.840.10008.1.2.5"}


@pytest.mark.realdata
def test_multiframe_file_is_refused_by_read_series(realdata, tmp_path):
    shutil.copy(realdata / "pydicom_data" / "emri_small.dcm", tmp_path / "a.dcm")
    with pytest.raises(InputError, match="multi-frame.*read_dicom_pixels"):
        read_series(tmp_path)


def test_read_dicom_pixels_bad_file(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"garbage" * 10)
    with pytest.raises(InputError, match="could not be decoded"):
        read_dicom_pixels(tmp_path / "x.dcm")


# --- synthetic edge cases ---------------------------------------------------------------------------
def test_reversed_and_shuffled_names(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine)
    order = rng.permutation(8)
    write(vol, tmp_path, file_names=[f"{100 + n}.dcm" for n in order[::-1]], instance_numbers=list(order + 1))
    out = read_series(tmp_path)
    assert np.array_equal(out.array, vol.array)
    np.testing.assert_allclose(out.affine, oblique_affine, atol=1e-5)
    assert out.slice_ids == [f"{100 + n}" for n in order[::-1]]
    assert out.meta["warnings"] == []
    assert out.meta["spacing"] == pytest.approx((1.5, 0.7, 0.7))


def test_no_suffix_no_preamble(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine, shape=(4, 64, 64))
    paths = write(vol, tmp_path, file_names=[f"IM{i}" for i in range(4)])
    for p in paths:  # strip the 128-byte preamble and 'DICM'
        p.write_bytes(p.read_bytes()[132:])
    assert pydicom.dcmread(paths[0], force=True).preamble is None
    out = read_series(tmp_path)
    assert np.array_equal(out.array, vol.array)
    assert out.slice_ids == ["IM0", "IM1", "IM2", "IM3"]


def test_missing_slice_warns(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine)
    paths = write(vol, tmp_path)
    paths[3].unlink()
    with pytest.warns(DicomWarning, match=r"missing slices: gap of 3 mm between 3\.dcm and 5\.dcm"):
        out = read_series(tmp_path)
    assert out.shape[0] == 7
    assert np.array_equal(out.array, np.delete(vol.array, 3, axis=0))


def test_two_series_selection(tmp_path, rng, oblique_affine):
    a, b = ct_volume(rng, oblique_affine, (4, 64, 64)), ct_volume(rng, oblique_affine, (5, 64, 64))
    write(a, tmp_path, series_uid="1.2.3.1", series_description="Sagittal T1", file_names=[f"a{i}" for i in range(4)])
    write(b, tmp_path, series_uid="1.2.3.2", series_description="Axial T2", file_names=[f"b{i}" for i in range(5)])
    with pytest.raises(SeriesSelectionError, match=r"2 series found.*1\.2\.3\.1.*Sagittal T1.*n_files=4"):
        read_series(tmp_path)
    assert np.array_equal(read_series(tmp_path, "1.2.3.2").array, b.array)
    assert np.array_equal(read_series(tmp_path, "sagittal t1").array, a.array)
    with pytest.raises(SeriesSelectionError, match="matches no series"):
        read_series(tmp_path, "Coronal")
    listed = list_series(tmp_path)
    assert [(s["uid"], s["n_files"]) for s in listed] == [("1.2.3.2", 5), ("1.2.3.1", 4)]


def test_ambiguous_description(tmp_path, rng, oblique_affine):
    for i, uid in enumerate(["1.9.1", "1.9.2"]):
        write(ct_volume(rng, oblique_affine, (3, 64, 64)), tmp_path, series_uid=uid, series_description="Axial T2",
              file_names=[f"s{i}_{k}" for k in range(3)])
    with pytest.raises(SeriesSelectionError, match=r"matches several series.*1\.9\.1.*1\.9\.2"):
        read_series(tmp_path, "Axial T2")


def test_corrupt_and_non_dicom_files_are_skipped(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine)
    paths = write(vol, tmp_path)
    (tmp_path / "notes.txt").write_text("not an image\n" * 50)
    paths[-1].write_bytes(paths[-1].read_bytes()[:-5000])  # truncated pixel data: header fine, decode fails
    with pytest.warns(DicomWarning) as record:
        out = read_series(tmp_path)
    messages = " | ".join(str(w.message) for w in record)
    assert "skipped notes.txt" in messages
    assert "skipped 8.dcm: corrupt header or pixel data (pixel data truncated" in messages
    assert np.array_equal(out.array, vol.array[:-1])
    np.testing.assert_allclose(out.affine, oblique_affine, atol=1e-5)


def test_monochrome1_inverted(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine, (4, 64, 64))
    vol.array[:] = np.clip(vol.array, -1024, 3071)
    write(vol, tmp_path, photometric="MONOCHROME1")
    out = read_series(tmp_path)
    assert np.array_equal(out.array, vol.array)
    assert out.meta["photometric"] == "MONOCHROME1"


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(InputError, match="folder is empty"):
        read_series(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_series(tmp_path / "nope")
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="no readable DICOM image among 1 file"):
        read_series(tmp_path)


@pytest.mark.parametrize("syntax", ["jpeg_lossless", "jpeg2000", "rle", "implicit"])
def test_compressed_equals_uncompressed(tmp_path, rng, oblique_affine, syntax):
    vol = ct_volume(rng, oblique_affine, (4, 64, 64))
    write(vol, tmp_path / "raw")
    write(vol, tmp_path / "enc", transfer_syntax=syntax)
    raw, enc = read_series(tmp_path / "raw"), read_series(tmp_path / "enc")
    assert np.array_equal(raw.array, enc.array) and np.array_equal(enc.array, vol.array)
    assert np.array_equal(read_series(tmp_path / "enc", backend="pydicom").array, vol.array)


def test_parallel_dicomsdl_equals_pydicom_and_no_leak(tmp_path, rng, oblique_affine):
    import psutil

    vol = ct_volume(rng, oblique_affine, (20, 64, 64))
    syntaxes = ["explicit", "jpeg_lossless", "jpeg2000", "rle"] * 5
    write(vol, tmp_path, transfer_syntax=syntaxes)
    shm_before = shm_decode_files()
    fast = read_series(tmp_path, workers=2, backend="auto")
    slow = read_series(tmp_path, workers=1, backend="pydicom")
    assert np.array_equal(fast.array, slow.array) and np.array_equal(fast.array, vol.array)
    assert fast.array.flags.writeable
    assert len(fast.meta["transfer_syntaxes"]) == 4
    pids = _decode_pool.pool_pids()
    assert pids, "a 20-slice series with workers=2 should use the pool"
    _decode_pool.shutdown_pool()
    assert _decode_pool.pool_pids() == []
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert leaked_shm_files(shm_before) == set()


def test_mixed_sizes(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine, (6, 64, 64))
    write(vol, tmp_path, series_uid="1.5.5")
    odd = Volume(array=np.zeros((1, 32, 32), np.int16), affine=oblique_affine)
    write(odd, tmp_path, series_uid="1.5.5", file_names=["odd.dcm"], instance_numbers=[99])
    with pytest.raises(InputError, match=r"mixed image sizes.*6 files of 64x64.*1 files of 32x32"):
        read_series(tmp_path)
    with pytest.warns(DicomWarning, match="kept the 6 files of the most common, dropped odd.dcm"):
        out = read_series(tmp_path, mixed_sizes="majority")
    assert np.array_equal(out.array, vol.array)


def test_duplicate_positions(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine, (4, 64, 64))
    paths = write(vol, tmp_path, series_uid="1.7.7")
    shutil.copy(paths[1], tmp_path / "copy.dcm")
    with pytest.warns(DicomWarning, match="duplicate slice positions with identical pixels: .*kept 2.dcm"):
        out = read_series(tmp_path)
    assert np.array_equal(out.array, vol.array)
    other = Volume(array=vol.array[1:2] + 5, affine=vol.affine.copy())
    other.affine[:3, 3] = vol.voxel_to_world(np.array([1.0, 0, 0]))
    write(other, tmp_path, file_names=["differs.dcm"], instance_numbers=[50], series_uid="1.7.7")
    with pytest.raises(InputError, match="duplicate slice positions with different pixels"):
        _quiet(tmp_path)


def test_gantry_tilt_and_uneven_spacing(tmp_path, rng, oblique_affine):
    tilted = oblique_affine.copy()
    tilted[:3, 0] = [0.0, 0.3, 1.5]  # each slice shifts 0.3 mm posteriorly: a sheared stack
    vol = ct_volume(rng, tilted, (5, 64, 64))
    write(vol, tmp_path / "tilt")
    with pytest.warns(DicomWarning, match="gantry tilt"):
        out = read_series(tmp_path / "tilt")
    np.testing.assert_allclose(out.affine, tilted, atol=1e-5)
    vol2 = ct_volume(rng, oblique_affine, (5, 64, 64))
    paths = write(vol2, tmp_path / "uneven")
    ds = pydicom.dcmread(paths[2])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 0.4]
    ds.save_as(paths[2])
    with pytest.warns(DicomWarning, match="uneven slice spacing"):
        read_series(tmp_path / "uneven")


def test_dtypes_float_rescale_and_mr(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine, (3, 64, 64))
    paths = write(vol, tmp_path / "ct")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.RescaleSlope = 0.5
        ds.save_as(p)
    out = read_series(tmp_path / "ct")
    assert out.array.dtype == np.float32
    np.testing.assert_allclose(out.array, (vol.array.astype(np.float64) + 1024) * 0.5 - 1024)
    mr = Volume(array=rng.integers(0, 60000, size=(3, 64, 64)).astype(np.float32), affine=oblique_affine)
    write(mr, tmp_path / "mr", modality="MR", bits_stored=16)
    out = read_series(tmp_path / "mr")
    assert out.array.dtype == np.float32 and np.array_equal(out.array, mr.array)
    assert out.meta["rescaled"] is False
    small = Volume(array=rng.integers(0, 4000, size=(3, 64, 64)).astype(np.float32), affine=oblique_affine)
    write(small, tmp_path / "mr16", modality="MR", bits_stored=16)
    assert read_series(tmp_path / "mr16").array.dtype == np.int16  # values fit: kept as int16


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"])
def test_pydicom_wheel_syntaxes_single_file(name):
    from pydicom.data import get_testdata_file

    ref = _quiet(get_testdata_file("MR_small.dcm"))
    for backend in ("auto", "pydicom"):
        vol = _quiet(get_testdata_file(name), backend=backend)
        assert vol.shape == (1, 64, 64) and np.array_equal(vol.array, ref.array)
        np.testing.assert_allclose(vol.affine, ref.affine)


@pytest.mark.parametrize(("name", "shape"), [("JPEG-lossy.dcm", (1024, 256)), ("JPEG2000.dcm", (1024, 256))])
def test_lossy_syntaxes_decode_via_pydicom(name, shape):
    from pydicom.data import get_testdata_file

    ts = str(pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert ts not in _decode_pool.DICOMSDL_VERIFIED_SYNTAXES  # lossy: never routed to dicomsdl by "auto"
    # pydicom's plugins cannot decode 12-bit JPEG Extended (4.51); the fallback to dicomsdl must
    arr = read_dicom_pixels(get_testdata_file(name))
    assert arr.shape == shape and arr.max() > 0


def test_pool_workers_die_with_a_killed_parent(tmp_path, rng, oblique_affine):
    import subprocess
    import sys
    import time

    import psutil

    write(ct_volume(rng, oblique_affine, (20, 32, 32)), tmp_path / "s")
    code = ("import os, sys, warnings; warnings.simplefilter('ignore');"
            "from spinelab.io.dicom import read_series; from spinelab.io import _decode_pool;"
            f"read_series({str(tmp_path / 's')!r}, workers=2);"
            "print(*_decode_pool.pool_pids(), flush=True); os._exit(0)")  # no atexit: like a kill
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


# --- robustness: bad rescale, crashing decoders, odd folder entries -------------------------------------
@pytest.mark.parametrize("slope", [0.0, 1e9, "NaN"])
def test_bad_rescale_drops_the_slice_or_refuses_the_series(tmp_path, rng, oblique_affine, slope):
    vol = ct_volume(rng, oblique_affine, (4, 16, 16))
    paths = write(vol, tmp_path)
    ds = pydicom.dcmread(paths[1])
    ds.RescaleSlope = slope
    ds.save_as(paths[1])
    with pytest.warns(DicomWarning, match=r"skipped 2\.dcm: RescaleSlope"):
        out = read_series(tmp_path)
    assert np.array_equal(out.array, vol.array[[0, 2, 3]]) and np.isfinite(out.array).all()
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.RescaleSlope = slope
        ds.save_as(p)
    with pytest.raises(InputError, match="no slice with a usable rescale"):
        _quiet(tmp_path)


def test_rescale_mr_is_not_checked(tmp_path, rng, oblique_affine):
    paths = write(ct_volume(rng, oblique_affine, (2, 16, 16)), tmp_path, modality="MR")
    ds = pydicom.dcmread(paths[0])
    ds.RescaleSlope = 0.0  # MR keeps stored values: a rescale is never applied, so never a reason to drop
    ds.save_as(paths[0])
    assert _quiet(tmp_path).shape[0] == 2


def test_crashing_decoder_costs_only_its_slice(tmp_path, rng, oblique_affine, monkeypatch):
    import faulthandler
    import signal

    vol = ct_volume(rng, oblique_affine, (20, 16, 16))
    write(vol, tmp_path)
    real = _decode_pool._decode

    def crash_on_7(path, backend, frame):
        if os.path.basename(path) == "7.dcm":
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(path, backend, frame)

    _decode_pool.shutdown_pool()
    monkeypatch.setattr(_decode_pool, "_decode", crash_on_7)  # forked workers inherit the patch
    try:
        with pytest.warns(DicomWarning, match=r"skipped 7\.dcm: pixel data could not be decoded \(decoder crashed"):
            out = read_series(tmp_path, workers=2)
    finally:
        _decode_pool.shutdown_pool()
    assert np.array_equal(out.array, np.delete(vol.array, 6, axis=0))
    assert "7" not in out.slice_ids


def test_decoder_warning_means_a_corrupt_slice(tmp_path, rng, oblique_affine, monkeypatch):
    vol = ct_volume(rng, oblique_affine, (3, 16, 16))
    write(vol, tmp_path)
    real = _decode_pool._decode

    def warn_on_2(path, backend, frame):
        if os.path.basename(path) == "2.dcm":
            warnings.warn("Premature end of JPEG file", UserWarning, stacklevel=1)
        return real(path, backend, frame)

    monkeypatch.setattr(_decode_pool, "_decode", warn_on_2)
    with pytest.warns(DicomWarning, match=r"skipped 2\.dcm: .*decoder warning: Premature end of JPEG file"):
        out = read_series(tmp_path, workers=1)
    assert np.array_equal(out.array, vol.array[[0, 2]])


def test_odd_entries_in_a_series_folder_are_named_not_opened(tmp_path, rng, oblique_affine):
    vol = ct_volume(rng, oblique_affine, (3, 16, 16))
    write(vol, tmp_path)
    os.mkfifo(tmp_path / "pipe")  # opening it would hang the read
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    write(vol, tmp_path / "extra")
    with pytest.warns(DicomWarning) as record:
        out = read_series(tmp_path)
    messages = " | ".join(str(w.message) for w in record)
    assert "skipped pipe: named pipe (FIFO), not opened" in messages
    assert "skipped loop: symlink loop, not opened" in messages
    assert "skipped extra: sub-folder not read" in messages
    assert np.array_equal(out.array, vol.array)


def test_device_path_is_one_error():
    with pytest.raises(InputError, match="/dev/zero: is a device file, not a regular file or folder"):
        read_series("/dev/zero")


def test_decode_buffer_never_named_in_dev_shm(tmp_path, rng, oblique_affine):
    write(ct_volume(rng, oblique_affine, (20, 16, 16)), tmp_path)
    fd, worker_path, named = _decode_pool._shared_buffer(64)
    try:
        assert named is None and worker_path == f"/proc/{os.getpid()}/fd/{fd}"  # an anonymous memfd
    finally:
        os.close(fd)
    before = shm_decode_files()
    assert _quiet(tmp_path, workers=2).shape == (20, 16, 16)
    assert leaked_shm_files(before) == set()


@pytest.mark.realdata
def test_dicomsdl_corruption_message_drops_the_slice(realdata, tmp_path):
    src = sorted((realdata / "totalsegmentator" / "example_ct_dicom_jpegls1_derived").iterdir())[2:5]
    for f in src:
        (tmp_path / f.name).symlink_to(f)
    data = bytearray(src[1].read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(20000, len(data) - 100, 30):  # damage the entropy-coded data, keep the end marker
        data[i] = rng.integers(0, 256)
    (tmp_path / src[1].name).unlink()
    (tmp_path / src[1].name).write_bytes(bytes(data))
    with pytest.warns(DicomWarning, match=f"skipped {src[1].name}: .*decoder warning: .*Corrupt JPEG data"):
        out = read_series(tmp_path, backend="dicomsdl")
    assert out.shape == (2, 512, 512)
