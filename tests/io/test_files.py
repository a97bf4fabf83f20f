"""Folder listing that never opens a FIFO or device, and the one content-based "is this DICOM" rule."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pydicom
import pytest

from spinelab.errors import InputError
from spinelab.io.files import entry_kind, is_dicom_file, list_folder, require_regular_or_dir
from tests.io._helpers import ct_volume, write


@pytest.fixture
def odd_folder(tmp_path, rng, oblique_affine):
    folder = tmp_path / "series"
    paths = write(ct_volume(rng, oblique_affine, (2, 16, 16)), folder)
    os.mkfifo(folder / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock"))
    (folder / "loop").symlink_to(folder / "loop")
    (folder / "dangling").symlink_to(folder / "missing")
    (folder / "sub").mkdir()
    (folder / ".hidden").write_text("x")
    yield folder, paths
    sock.close()


def test_entry_kinds(odd_folder):
    folder, paths = odd_folder
    assert entry_kind(paths[0]) == "file"
    assert entry_kind(folder / "sub") == "folder"
    assert entry_kind(folder / "pipe") == "named pipe (FIFO)"
    assert entry_kind(folder / "sock") == "socket"
    assert entry_kind(folder / "loop") == "symlink loop"
    assert entry_kind(folder / "dangling") == "broken symlink"
    assert entry_kind("/dev/null") == "device file"


def test_list_folder_names_what_it_does_not_read(odd_folder):
    folder, paths = odd_folder
    files, skipped = list_folder(folder)
    assert files == sorted(paths)
    reasons = {p.name: why for p, why in skipped}
    assert set(reasons) == {"pipe", "sock", "loop", "dangling", "sub"}
    assert reasons["pipe"] == "named pipe (FIFO), not opened"
    assert reasons["sub"].startswith("sub-folder not read")


def test_require_regular_or_dir(tmp_path):
    assert require_regular_or_dir(tmp_path) == "folder"
    with pytest.raises(InputError, match="is a device file, not a regular file or folder"):
        require_regular_or_dir(Path("/dev/zero"))
    with pytest.raises(InputError, match="does not exist"):
        require_regular_or_dir(tmp_path / "nope")


def test_is_dicom_file_by_content(odd_folder, tmp_path):
    folder, paths = odd_folder
    assert is_dicom_file(paths[0])
    raw = tmp_path / "raw"  # no preamble, no file meta: starts with a group 0008 element
    ds = pydicom.dcmread(paths[0])
    del ds.file_meta
    ds.preamble = None
    ds.save_as(raw, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert raw.read_bytes()[:2] == b"\x08\x00" and is_dicom_file(raw)
    (tmp_path / "zeros.dcm").write_bytes(bytes(200))  # a .dcm name is not DICOM
    assert not is_dicom_file(tmp_path / "zeros.dcm")
    assert not is_dicom_file(folder / "pipe")  # returns at once: a FIFO is never opened
    assert not is_dicom_file("/dev/zero") and not is_dicom_file(folder / "loop")
