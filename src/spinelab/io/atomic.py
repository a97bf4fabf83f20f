"""Write-to-temporary-then-rename helpers shared by every writer.

A killed process must never leave a half-written output behind: readers either see the old file or the
complete new one, because ``os.replace`` is atomic within one file system. The finished file gets the mode
a plain ``open()`` would give (``0o666`` less the umask, so 0644 under umask 022), not ``mkstemp``'s 0600,
so other users, web servers and containers can read models, submissions and reports. A write that fails
(disk full, read-only file system, permission denied) removes its temporary file and raises an ``OSError``
of the usual kind (``errno`` kept) that names the destination rather than the temporary, so callers can
catch ``OSError`` as for any write, and the command line prints one line with the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from errno import ENOSPC
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "atomic_save_npy", "atomic_write_csv",
           "current_umask", "TEMP_MARKER"]

# Every temporary is named ``.<name>.<random>.tmp<suffix>``: readers (the cache, the study loop) skip names
# holding this marker, and a test looks for it to prove nothing was left behind.
TEMP_MARKER = ".tmp"


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` alone must set one)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Args:
        path: final destination.
        suffix: suffix of the temporary file (some writers pick the format from it); defaults to the
            destination's full suffix, e.g. ``.nii.gz``.

    Yields:
        The temporary path to write to. It is removed if the block raises.

    Raises:
        OSError: the folder cannot be created (naming the folder), or writing or renaming fails (naming
            ``path``): no space, read-only, permission, a folder in the way; the temporary is gone by then.
    """
    path = Path(path)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMP_MARKER}{suffix}", dir=path.parent)
        os.close(fd)
    except OSError as err:
        _reraise_naming(path, err, None)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # After the block: a writer may have replaced the file rather than written into it.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except OSError as err:
        _reraise_naming(path, err, tmp_path)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def _reraise_naming(path: Path, err: OSError, tmp: Path | None) -> None:
    """Raise ``err`` again, or the same kind of ``OSError`` naming ``path`` where it names the temporary or
    nothing; a short write without an errno (numpy's ``tofile``) on a full disk becomes ``ENOSPC``."""
    code, reason = err.errno, err.strerror or str(err) or type(err).__name__
    if code is None:
        with contextlib.suppress(OSError):
            if os.statvfs(path.parent).f_bavail == 0:
                code, reason = ENOSPC, f"{os.strerror(ENOSPC)} ({reason})"
    if code == err.errno and err.filename is not None and (tmp is None or err.filename != str(tmp)):
        raise err
    raise OSError(code, reason, str(path)) from err


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def atomic_save_npy(path: str | Path, array: Any) -> Path:
    """Save a numpy array as ``.npy`` atomically and return the path."""
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)
    return Path(path)


def atomic_write_csv(path: str | Path, frame: Any, *, index: bool = False) -> Path:
    """Write a pandas DataFrame as CSV atomically and return the path."""
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=index)
    return Path(path)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
