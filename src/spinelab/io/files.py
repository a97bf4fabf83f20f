"""What is in a folder, without opening anything that is not a regular file.

Opening a named pipe blocks forever and reading a device never ends, so every entry is classified with
``os.stat`` (which follows symlinks but never opens) before any read. One function decides "is this file
DICOM" for the whole package: :func:`is_dicom_file`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from spinelab.errors import InputError
from spinelab.io.pixel_checks import looks_like_element

__all__ = ["is_dicom_file", "list_folder", "require_regular_or_dir", "entry_kind", "file_sha256"]


def entry_kind(path: str | Path) -> str:
    """``"file"``, ``"folder"``, or why the entry cannot be read (broken symlink, named pipe, ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop"
        if err.errno == errno.ENOENT and os.path.islink(path):
            return "broken symlink"
        return f"cannot be read ({err.strerror})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "not a regular file"


def require_regular_or_dir(path: Path) -> str:
    """``"file"`` or ``"folder"``; ``InputError`` for a missing path or anything else (device, FIFO, ...)."""
    kind = entry_kind(path)
    if kind in ("file", "folder"):
        return kind
    if kind.startswith("cannot be read") and not os.path.lexists(path):
        raise InputError(path, "does not exist")
    raise InputError(path, f"is a {kind}, not a regular file or folder" if not kind.startswith("cannot")
                     else kind)


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is a regular file holding DICOM, judged by its content, never by its name.

    True for Part-10 files (``DICM`` after the 128-byte preamble) and for files without a preamble that start
    with a group 0002 or 0008 element (little endian, explicit or implicit VR). FIFOs, sockets and devices are
    never opened.
    """
    if entry_kind(path) != "file":
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or looks_like_element(head)


def list_folder(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Regular files directly in ``folder`` (sorted, hidden names left out) and the entries not read.

    Returns:
        ``(files, skipped)`` where ``skipped`` holds ``(path, reason)`` for sub-folders, FIFOs, sockets,
        devices, broken symlinks and symlink loops.
    """
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise InputError(folder, f"cannot list folder ({err.strerror})") from err
    for name in names:
        if name.startswith("."):
            continue
        p = folder / name
        kind = entry_kind(p)
        if kind == "file":
            files.append(p)
        elif kind == "folder":
            skipped.append((p, "sub-folder not read (a series is the files directly in one folder)"))
        else:
            skipped.append((p, f"{kind}, not opened"))
    return files, skipped


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (weights in provenance.json, study results, checksums).

    Raises:
        InputError: the file cannot be read.
    """
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
    return digest.hexdigest()
