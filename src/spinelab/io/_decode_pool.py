"""Pixel decoding for DICOM series: one file into one slot of a preallocated volume, in-process or in a pool.

Why processes and shared memory: every DICOM decoder (gdcm, libjpeg, openjpeg, dicomsdl) holds the GIL, so
threads do not scale, and pickling decoded slices back to the parent costs more than the decode for
uncompressed data (performance-anchors.md, 1.2). Instead the parent creates the output volume in a
shared-memory file that never has a name (``memfd_create``; elsewhere a ``/dev/shm`` file unlinked once the
decode ends), workers open the same file through ``/proc/<parent>/fd/<n>`` and write each decoded, rescaled
slice straight into its sorted slot, and return only ``(slot, error)`` pairs. Nothing is left in ``/dev/shm``
even when the parent is SIGKILLed.

Before any decoder touches a file, ``pixel_checks.check_pixel_data`` has compared its header with its pixel
data (``read_series`` does it in the header pass; ``decode_stored`` does it otherwise), and any warning a
decoder emits while decoding makes the slice fail: a warning there means a corrupt stream.

The pool is persistent (created on first use, reused by later reads) because starting workers costs more than
decoding a small series. It is shut down at interpreter exit and by :func:`shutdown_pool`; its workers die with
their parent (``PR_SET_PDEATHSIG``), and a worker that dies mid-decode costs only its own slice
(``_workers.run_isolated``); a crashing file is never re-decoded in the parent.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import mmap
import multiprocessing as mp
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.io._workers import new_pool, run_isolated
from spinelab.io.pixel_checks import CorruptPixelDataError, check_pixel_data

log = logging.getLogger(__name__)

__all__ = [
    "SliceTask",
    "DICOMSDL_VERIFIED_SYNTAXES",
    "decode_slices",
    "decode_stored",
    "shutdown_pool",
    "pool_pids",
    "decode_with_fallback",
]

#: Transfer syntaxes for which dicomsdl's stored values were verified identical to pydicom's (lossless only:
#: lossy JPEG baseline / J2K 4.91 decoders may legitimately differ by implementation, so they go to pydicom).
#: ``tests/io/test_dicom.py::test_dicomsdl_equals_pydicom`` re-checks every entry.
DICOMSDL_VERIFIED_SYNTAXES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.4.57",  # JPEG lossless
        "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1 (RSNA 2022)
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        # RLE lossless (1.2.840.10008.1.2.5) decodes identically but dicomsdl 0.109's RLE decoder overruns its
        # buffer on a corrupt stream (found by tests/io/test_fuzz.py), so RLE goes to pydicom.
    }
)


@dataclass(frozen=True)
class SliceTask:
    """One file to decode into one slot of the output volume.

    Args:
        slot: index along D in the sorted output.
        path: the DICOM file.
        backend: ``"dicomsdl"`` or ``"pydicom"``.
        slope, intercept: rescale applied to stored values (1, 0 to keep stored values).
        invert_max: for MONOCHROME1, ``stored = invert_max - stored`` before the rescale; ``None`` otherwise.
        checked: the caller already ran ``check_pixel_data`` on this file (it is not repeated).
        transfer_syntax: the file's transfer syntax (decides whether a failed decode may try dicomsdl).
        allow_dicomsdl: dicomsdl may open the file (``PixelSummary.native_safe`` and the same pixel offset).
    """

    slot: int
    path: str
    backend: str
    slope: float = 1.0
    intercept: float = 0.0
    invert_max: int | None = None
    checked: bool = False
    transfer_syntax: str | None = None
    allow_dicomsdl: bool = True


def decode_stored(path: str | Path, *, backend: str = "pydicom", frame: int | None = None,
                  checked: bool = False) -> np.ndarray:
    """Decode the stored pixel values of one DICOM file (no rescale, no inversion).

    Args:
        path: DICOM file.
        backend: ``"dicomsdl"`` or ``"pydicom"``.
        frame: for a multi-frame file, one frame; ``None`` returns every frame.
        checked: skip ``check_pixel_data`` (the caller ran it).

    Returns:
        ``(H, W)`` for single-frame files, ``(F, H, W)`` for multi-frame files (``frame=None``).

    Raises:
        CorruptPixelDataError: the header and pixel data disagree, or a decoder warned while decoding.
    """
    if not checked and not check_pixel_data(path).native_safe:
        backend = "pydicom"  # deflated or out of tag order: dicomsdl would misparse it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            arr = _decode(path, backend, frame)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:
            if isinstance(err, Exception):
                raise
            # pyo3 decoders (pylibjpeg-rle, ...) raise PanicException, a BaseException, on corrupt streams
            raise CorruptPixelDataError(f"decoder panicked: {err}") from None
    problems = [w for w in caught if not issubclass(w.category, DeprecationWarning | PendingDeprecationWarning)]
    if problems:
        raise CorruptPixelDataError(f"decoder warning: {problems[0].message}")
    return arr


def _decode(path: str | Path, backend: str, frame: int | None) -> np.ndarray:
    if backend == "dicomsdl":
        import dicomsdl

        # dicomsdl reports corrupt streams ("Corrupt JPEG data: premature end of data segment") through its own
        # logger, not Python warnings: collect them for this decode (the default logger must be restored, a
        # Python callback left installed hangs interpreter exit).
        messages: list[str] = []
        dicomsdl.set_logger_function(lambda level, msg: messages.append(msg) if _corruption(level, msg) else None)
        try:
            arr = _decode_dicomsdl(dicomsdl, path, frame)
        finally:
            dicomsdl.set_default_logger_function()
        if arr is not None:  # None: dicomsdl gave up on a multi-frame file and said so; pydicom decodes it
            if messages:
                raise CorruptPixelDataError(f"decoder warning: {messages[0]}")
            return arr
    import pydicom

    ds = pydicom.dcmread(str(path), force=True)
    arr = ds.pixel_array
    if frame is not None and arr.ndim == 3:
        arr = arr[frame]
    return arr


#: Words of libjpeg / openjpeg / charls messages that mean the coded data itself is damaged (libjpeg also warns
#: about format quirks that decode fine, e.g. "Invalid SOS parameters for sequential JPEG" in pydicom's
#: JPEG-lossy.dcm, which are not a reason to drop a slice).
_CORRUPTION_WORDS = ("corrupt", "premature", "truncat", "bad huffman", "failed", "invalid data", "overflow")


def _corruption(level: Any, msg: str) -> bool:
    """Whether a dicomsdl log message reports damaged data (any error, or a warning naming corruption)."""
    return int(level) >= 30 or (int(level) >= 20 and any(w in msg.lower() for w in _CORRUPTION_WORDS))


def _decode_dicomsdl(dicomsdl: Any, path: str | Path, frame: int | None) -> np.ndarray | None:
    """dicomsdl's decode; ``None`` when pydicom must decode the file instead."""
    dset = dicomsdl.open(str(path))
    if str(dset.getDataElement("PixelData").vr()).endswith("NONE"):
        # dicomsdl quit parsing before the pixels; copyFrameData would dereference nothing
        raise ValueError("dicomsdl found no PixelData")
    info = dset.getPixelDataInfo()
    n_frames = int(info.get("NumberOfFrames") or 1)
    shape = (int(info["Rows"]), int(info["Cols"]))
    dtype = np.dtype(info["dtype"])
    if n_frames == 1 or frame is not None:
        out = np.empty(shape, dtype=dtype)
        dset.copyFrameData(frame or 0, out)
        return out
    out = np.empty((n_frames, *shape), dtype=dtype)
    try:
        for i in range(n_frames):
            dset.copyFrameData(i, out[i])
        return out
    except Exception:  # noqa: BLE001
        # dicomsdl 0.109 cannot index frames > 0 of encapsulated multi-frame data without a basic offset
        # table (e.g. pydicom's emri_small_jpeg_*); pydicom can, so fall back to it for the whole file.
        return None


#: Syntaxes pydicom's plugins cannot decode (12-bit JPEG Extended), the only case where a file pydicom fails on
#: goes on to dicomsdl: on any other syntax a pydicom failure means a bad stream, and dicomsdl's native
#: decoders are not safe on bad streams (its RLE decoder corrupts the heap).
PYDICOM_GAPS: frozenset[str] = frozenset({"1.2.840.10008.1.2.4.51"})


def decode_with_fallback(path: str | Path, *, backend: str, checked: bool = False,
                         transfer_syntax: str | None = None, allow_dicomsdl: bool = True) -> np.ndarray:
    """``decode_stored`` with ``backend``; if that fails, the other backend where it can help.

    dicomsdl failing falls back to pydicom (dicomsdl cannot index frames of some encapsulated multi-frame
    files); pydicom failing falls back to dicomsdl only for ``PYDICOM_GAPS``. The first error is raised. A file
    whose header and pixel data disagree (``CorruptPixelDataError``) is not retried: the file is bad.

    Args:
        path: the DICOM file.
        backend: ``"dicomsdl"`` or ``"pydicom"``.
        checked: the caller ran ``check_pixel_data`` already.
        transfer_syntax: the file's syntax, when the caller knows it (read from the file otherwise).
        allow_dicomsdl: ``False`` keeps dicomsdl away from the file entirely.
    """
    if not checked:
        summary = check_pixel_data(path)
        transfer_syntax = summary.transfer_syntax
        allow_dicomsdl = allow_dicomsdl and summary.native_safe
    if not allow_dicomsdl:
        backend = "pydicom"
    try:
        return decode_stored(path, backend=backend, checked=True)
    except CorruptPixelDataError:
        raise
    except Exception as first:  # noqa: BLE001
        if backend == "pydicom" and (transfer_syntax not in PYDICOM_GAPS or not allow_dicomsdl):
            raise
        other = "pydicom" if backend == "dicomsdl" else "dicomsdl"
        try:
            return decode_stored(path, backend=other, checked=True)
        except Exception:  # noqa: BLE001
            raise first from None


def _apply(stored: np.ndarray, out: np.ndarray, task: SliceTask) -> None:
    """Write ``rescale(invert(stored))`` into ``out`` without float64 temporaries."""
    if stored.shape != out.shape:
        raise ValueError(f"decoded shape {stored.shape} differs from the header's {out.shape}")
    if task.invert_max is not None:
        stored = (np.int32(task.invert_max) - stored.astype(np.int32)).astype(stored.dtype)
    if out.dtype == np.int16:
        # Integer rescale with wrap-around arithmetic in the stored dtype: exact because the caller chose int16
        # only when every possible result fits in int16 (so the modular result equals the true one).
        if stored.dtype.itemsize != 2:
            stored = stored.astype(np.int32)
            np.add(stored * int(task.slope), int(task.intercept), out=out, casting="unsafe")
            return
        slope = int(task.slope)
        if slope != 1:
            stored = stored * np.array(slope & 0xFFFF, dtype=np.uint16).view(stored.dtype)
        wrapped = np.array(int(task.intercept) & 0xFFFF, dtype=np.uint16).view(stored.dtype)
        np.add(stored, wrapped, out=out, casting="unsafe")
    else:
        np.multiply(stored, np.float32(task.slope), out=out, casting="unsafe")
        if task.intercept:
            out += np.float32(task.intercept)


def decode_into(out: np.ndarray, tasks: Sequence[SliceTask]) -> list[tuple[int, str | None]]:
    """Decode each task into ``out[task.slot]``; return ``(slot, error message or None)`` per task."""
    results: list[tuple[int, str | None]] = []
    for task in tasks:
        try:
            stored = decode_with_fallback(task.path, backend=task.backend, checked=task.checked,
                                          transfer_syntax=task.transfer_syntax, allow_dicomsdl=task.allow_dicomsdl)
            if stored.ndim != 2:
                raise ValueError(f"expected one frame, got pixel array of shape {stored.shape}")
            _apply(stored, out[task.slot], task)
            results.append((task.slot, None))
        except Exception as err:  # noqa: BLE001 - any decoder failure is reported per file, not raised
            results.append((task.slot, f"{type(err).__name__}: {err}"))
    return results


def _worker_decode(
    buf_path: str, shape: tuple[int, int, int], dtype: str, tasks: Sequence[SliceTask]
) -> list[tuple[int, str | None]]:
    """Pool entry point: map the shared output file and decode ``tasks`` into it."""
    arr = np.memmap(buf_path, dtype=np.dtype(dtype), mode="r+", shape=shape)
    try:
        return decode_into(arr, tasks)
    finally:
        del arr


# --- the persistent pool ----------------------------------------------------------------------------------
_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0
_POOL_LOCK = threading.Lock()


def _get_pool(workers: int) -> ProcessPoolExecutor:
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        # An existing pool is reused even when ``workers`` differs: replacing it could cancel decodes that
        # another thread has in flight. Call ``shutdown_pool()`` first to change the size.
        if _POOL is None:
            _POOL = new_pool(workers)
            _POOL_WORKERS = workers
        return _POOL


def shutdown_pool() -> None:
    """Stop the persistent decode pool (it restarts on the next parallel read)."""
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=True, cancel_futures=True)
            _POOL = None
            _POOL_WORKERS = 0


def pool_pids() -> list[int]:
    """Process ids of the live pool workers (for leak tests); empty when no pool is running."""
    with _POOL_LOCK:
        if _POOL is None:
            return []
        return [p.pid for p in getattr(_POOL, "_processes", {}).values() if p.pid is not None]


atexit.register(shutdown_pool)


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _shared_buffer(nbytes: int) -> tuple[int, str, str | None]:
    """``(fd, path workers open, name to unlink or None)`` of a new shared-memory file of ``nbytes``.

    Linux: an anonymous ``memfd`` (it never appears in ``/dev/shm``, so a SIGKILL leaves nothing behind) that
    workers open through ``/proc/<pid>/fd/<fd>``. Elsewhere: a ``/dev/shm`` (or temp) file, unlinked after use.
    """
    if hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd"):
        fd = os.memfd_create("spinelab-decode", os.MFD_CLOEXEC)
        os.ftruncate(fd, nbytes)
        return fd, f"/proc/{os.getpid()}/fd/{fd}", None
    fd, buf_path = tempfile.mkstemp(prefix="spinelab-decode-", suffix=".raw", dir=_shm_dir())
    os.ftruncate(fd, nbytes)
    return fd, buf_path, buf_path


def decode_slices(
    tasks: Sequence[SliceTask], shape: tuple[int, int, int], dtype: np.dtype, *, workers: int,
    isolate: bool = False,
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode every task into a new ``(D, H, W)`` array of ``dtype``.

    Args:
        tasks: one per slot ``0..D-1``.
        shape: output shape ``(D, H, W)``.
        dtype: ``int16`` or ``float32``.
        workers: processes to use; ``<= 1`` decodes in this process unless ``isolate``.
        isolate: decode in worker processes even with one worker (a crashing decoder then costs its slice,
            not this process). Inside a daemon process (a pool worker) decoding is always in-process.

    Returns:
        The volume and a list of ``(slot, error)`` for files that failed to decode or whose decoder crashed
        its worker (their slot holds zeros).
    """
    dtype = np.dtype(dtype)
    if (workers <= 1 and not isolate) or mp.current_process().daemon:
        out = np.zeros(shape, dtype=dtype)
        return out, [(s, e) for s, e in decode_into(out, tasks) if e is not None]
    workers = max(workers, 1)
    nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
    fd, worker_path, named = _shared_buffer(nbytes)
    try:
        mapping = mmap.mmap(fd, nbytes)
        out = np.frombuffer(mapping, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        # Contiguous chunks: each worker touches neighbouring slots, and a few big messages beat many small.
        n_chunks = min(len(tasks), workers * 4)
        step = -(-len(tasks) // n_chunks)
        chunks = [list(tasks[i:i + step]) for i in range(0, len(tasks), step)]
        try:
            errors, crashed = _run_chunks(workers, worker_path, shape, dtype, chunks)
        except OSError as err:
            # Processes cannot start here at all (no crash involved), so decoding in this process is safe.
            log.warning("decode pool could not start (%s); decoding in-process", err)
            shutdown_pool()
            return out, [(s, e) for s, e in decode_into(out, tasks) if e is not None]
        if crashed:
            # Which slice of a crashed chunk killed its worker: each of its slices alone in a fresh worker.
            more, _ = _run_chunks(workers, worker_path, shape, dtype, [[t] for c in crashed for t in c])
            errors += more
    finally:
        os.close(fd)
        if named:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(named)
    return out, errors


def _run_chunks(workers: int, worker_path: str, shape: tuple[int, int, int], dtype: np.dtype,
                chunks: list[list[SliceTask]]) -> tuple[list[tuple[int, str]], list[list[SliceTask]]]:
    """Decode ``chunks`` in the pool: ``(slot errors, chunks whose worker crashed)``."""
    errors: list[tuple[int, str]] = []
    crashed: list[list[SliceTask]] = []
    args = [(worker_path, shape, dtype.str, c) for c in chunks]
    for i, result, err in run_isolated(lambda: _get_pool(workers), shutdown_pool, _worker_decode, args):
        if err is None:
            errors.extend((s, e) for s, e in result if e is not None)
        elif len(chunks[i]) == 1:
            errors.append((chunks[i][0].slot, err))
        else:
            crashed.append(chunks[i])
    return errors, crashed
