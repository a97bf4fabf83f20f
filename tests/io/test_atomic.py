"""Atomic writes: complete or absent, the user's umask, an OSError naming the destination and no temporary
on failure."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinelab.io.atomic import (
    atomic_path,
    atomic_save_npy,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    current_umask,
)
from tests._tmpfs import leftovers, small_tmpfs


@pytest.fixture
def umask() -> Iterator[callable]:
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


WRITERS = {
    "text": lambda p: atomic_write_text(p / "a.txt", "hello\n"),
    "json": lambda p: atomic_write_json(p / "a.json", {"x": np.float32(1.5)}),
    "csv": lambda p: atomic_write_csv(p / "a.csv", pd.DataFrame({"x": [1, 2]})),
    "npy": lambda p: atomic_save_npy(p / "a.npy", np.arange(4, dtype=np.int16)),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_follow_the_umask(kind: str, mask: int, expected: int, umask, tmp_path: Path) -> None:
    umask(mask)
    path = WRITERS[kind](tmp_path)
    assert _mode(path) == expected
    assert current_umask() == mask
    assert leftovers(tmp_path) == []


def test_a_replaced_file_gets_the_umask_mode_too(umask, tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.unlink()  # some writers create their file anew instead of writing into the temporary
        tmp.write_bytes(b"x")
        os.chmod(tmp, 0o600)
    assert _mode(target) == 0o644 and target.read_bytes() == b"x"


def test_a_failing_block_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "keep.txt", "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_parent_that_is_a_file_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as info:
        atomic_write_json(tmp_path / "file" / "a.json", {})
    assert info.value.errno in (errno.EEXIST, errno.ENOTDIR) and info.value.filename == str(tmp_path / "file")


def test_destination_that_is_a_folder_names_it_not_the_temporary(tmp_path: Path) -> None:
    (tmp_path / "a.json").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        atomic_write_json(tmp_path / "a.json", {})
    assert info.value.filename == str(tmp_path / "a.json") and info.value.strerror == "Is a directory"
    assert leftovers(tmp_path) == []


def test_disk_full_names_the_destination_and_leaves_no_temporary(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "full", "8k") as full:
        atomic_write_text(full / "small.txt", "fits\n")
        with pytest.raises(OSError, match="No space left on device") as info:
            atomic_save_npy(full / "big.npy", np.zeros(64 * 1024, dtype=np.int16))  # numpy: a bare short write
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(full / "big.npy")
        with pytest.raises(OSError) as info:
            atomic_write_text(full / "big.txt", "x" * 64 * 1024)  # Python: ENOSPC naming the temporary
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(full / "big.txt")
        assert sorted(p.name for p in full.iterdir()) == ["small.txt"]
