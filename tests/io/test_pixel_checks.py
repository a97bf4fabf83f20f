"""Header / pixel-data checks: every inconsistency found before a decoder runs, real files accepted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_fragments

from spinelab.io.dicom_write import write_malformed
from spinelab.io.pixel_checks import MAX_DIM, CorruptPixelDataError, check_pixel_data, looks_like_element
from tests.io._helpers import ct_volume, write

REAL = ("totalsegmentator/example_ct_dicom_j2k", "totalsegmentator/example_ct_dicom_jpegls1_derived")


@pytest.fixture
def native(tmp_path, rng, oblique_affine) -> Path:
    return write(ct_volume(rng, oblique_affine, (1, 32, 40)), tmp_path / "good")[0]


def test_real_files_pass_with_their_layout(realdata):
    files = [f for d in REAL for f in sorted((realdata / d).iterdir())]
    files += sorted((realdata / "pydicom_data").glob("*.dcm"))
    summaries = [check_pixel_data(f) for f in files]
    assert all(s.checked for s in summaries)
    j2k = summaries[0]
    assert (j2k.rows, j2k.cols, j2k.bits_allocated, j2k.frames, j2k.encapsulated) == (512, 512, 16, 1, True)
    assert {s.frames for s in summaries} == {1, 10}  # the enhanced MR files are multi-frame


def test_native_layout(native):
    s = check_pixel_data(native)
    assert (s.rows, s.cols, s.samples, s.bits_allocated, s.bits_stored, s.encapsulated) == (32, 40, 1, 16, 12, False)


@pytest.mark.parametrize(("kind", "message"), [
    ("truncated", "pixel data truncated"),
    ("short_pixels", r"PixelData holds 1280 bytes but .* = 2560"),
    ("oversized_header", "image size 65535x65535 outside"),
    ("wrong_bits", r"PixelData holds 2560 bytes but .*32x40x1x1x1 = 1280"),
    ("zero_rows", "image size 0x40"),
])
def test_native_corruptions_are_named(native, tmp_path, kind, message):
    bad = write_malformed(native, tmp_path / f"{kind}.dcm", kind)
    with pytest.raises(CorruptPixelDataError, match=message):
        check_pixel_data(bad)


@pytest.mark.parametrize(("kind", "message"), [
    ("truncated", "file ends inside pixel data fragment 1"),
    ("stream_cut", r"no end-of-image marker \(FF D9\)"),
    ("empty_fragment", "empty pixel data fragment"),
    ("wrong_bits", "compressed stream holds 12-bit samples, BitsAllocated is 8"),
    ("oversized_header", "outside 1..16384"),
])
def test_compressed_corruptions_are_named(realdata, tmp_path, kind, message):
    src = sorted((realdata / REAL[0]).iterdir())[0]
    with pytest.raises(CorruptPixelDataError, match=message):
        check_pixel_data(write_malformed(src, tmp_path / "bad", kind))


def test_stream_size_must_match_header(realdata, tmp_path):
    src = sorted((realdata / REAL[1]).iterdir())[0]  # JPEG Lossless SV1
    ds = pydicom.dcmread(src)
    ds.Rows = 256  # the stream still codes 512 rows: a decoder would overflow a 256-row buffer
    ds.save_as(tmp_path / "x.dcm")
    with pytest.raises(CorruptPixelDataError, match="compressed stream is 512x512, the header says 256x512"):
        check_pixel_data(tmp_path / "x.dcm")


def test_rle_segment_table_checked(realdata, tmp_path):
    ds = pydicom.dcmread(realdata / "pydicom_data" / "emri_small_RLE.dcm")
    frags = list(generate_fragments(ds.PixelData))[1:]  # item 0 is the (empty) offset table
    frags[0] = (5).to_bytes(4, "little") + frags[0][4:]  # 5 segments for 16-bit grey (needs 2)
    ds.PixelData = encapsulate(frags)
    ds.save_as(tmp_path / "rle.dcm")
    with pytest.raises(CorruptPixelDataError, match="RLE header has 5 segments"):
        check_pixel_data(tmp_path / "rle.dcm")


def test_limits_and_structure(native, tmp_path):
    ds = pydicom.dcmread(native)
    ds.Rows, ds.Columns = MAX_DIM + 1, 1
    ds.PixelData = bytes(2 * (MAX_DIM + 1))
    ds.save_as(tmp_path / "tall.dcm")
    with pytest.raises(CorruptPixelDataError, match="outside 1..16384"):
        check_pixel_data(tmp_path / "tall.dcm")
    ds = pydicom.dcmread(native)
    ds.BitsStored = 17
    ds.save_as(tmp_path / "bits.dcm")
    with pytest.raises(CorruptPixelDataError, match="BitsStored 17 outside"):
        check_pixel_data(tmp_path / "bits.dcm")
    data = bytearray(native.read_bytes())
    pos = data.find(b"\x28\x00\x10\x00")  # Rows: give it an element length far past the end of the file
    data[pos + 6:pos + 8] = (0xFFF0).to_bytes(2, "little")
    (tmp_path / "len.dcm").write_bytes(bytes(data))
    with pytest.raises(CorruptPixelDataError, match="file ends inside"):
        check_pixel_data(tmp_path / "len.dcm")
    (tmp_path / "tiny.dcm").write_bytes(b"DICM")
    with pytest.raises(CorruptPixelDataError, match="too short"):
        check_pixel_data(tmp_path / "tiny.dcm")


def test_header_only_file_has_no_pixel_data(native, tmp_path):
    ds = pydicom.dcmread(native)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(CorruptPixelDataError, match="no PixelData element"):
        check_pixel_data(tmp_path / "nopix.dcm")


def test_looks_like_element():
    assert looks_like_element(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")  # explicit VR group 0008
    assert looks_like_element(b"\x08\x00\x05\x00\x0a\x00\x00\x00ISO_IR 100")  # implicit VR
    assert not looks_like_element(b"\x10\x00\x10\x00PN\x04\x00ANON")  # group 0010 first: not a DICOM start
    assert not looks_like_element(np.zeros(8, np.uint8).tobytes())
