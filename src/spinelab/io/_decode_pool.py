"""Pixel decoding for DICOM series: one file into one slot of a preallocated volume, in-process or in a pool.

Why processes and shared memory: every DICOM decoder (gdcm, libjpeg, openjpeg, dicomsdl) holds the GIL, so
threads do not scale, and pickling decoded slices back to the parent costs more than the decode for
uncompressed data (performance-anchors.md, 1.2). Instead the parent creates the output volume in a
memory-mapped file under ``/dev/shm``, workers map the same file and write each decoded, rescaled slice
straight into its sorted slot, and return only ``(slot, error)`` pairs.

The pool is persistent (created on first use, reused by later reads) because starting workers costs more than
decoding a small series. It is shut down at interpreter exit and by :func:`shutdown_pool`, so no process leaks.
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
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "SliceTask",
    "DICOMSDL_VERIFIED_SYNTAXES",
    "decode_slices",
    "decode_stored",
    "shutdown_pool",
    "pool_pids",
    "check_native_extent",
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
        "1.2.840.10008.1.2.5",  # RLE lossless
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
    """

    slot: int
    path: str
    backend: str
    slope: float = 1.0
    intercept: float = 0.0
    invert_max: int | None = None


def decode_stored(path: str | Path, *, backend: str = "pydicom", frame: int | None = None) -> np.ndarray:
    """Decode the stored pixel values of one DICOM file (no rescale, no inversion).

    Args:
        path: DICOM file.
        backend: ``"dicomsdl"`` or ``"pydicom"``.
        frame: for a multi-frame file, one frame; ``None`` returns every frame.

    Returns:
        ``(H, W)`` for single-frame files, ``(F, H, W)`` for multi-frame files (``frame=None``).
    """
    if backend == "dicomsdl":
        import dicomsdl

        check_native_extent(path)
        dset = dicomsdl.open(str(path))
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
            pass
    import pydicom

    ds = pydicom.dcmread(str(path), force=True)
    arr = ds.pixel_array
    if frame is not None and arr.ndim == 3:
        arr = arr[frame]
    return arr


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def check_native_extent(path: str | Path, *, head_bytes: int = 65536) -> None:
    """Raise ``ValueError`` if uncompressed pixel data runs past the end of the file.

    dicomsdl 0.109 trusts the element length of native pixel data and crashes the process (SIGSEGV) on a
    truncated file; this check turns that into an ordinary, per-file error. Encapsulated (compressed) data has
    an undefined length and dicomsdl raises a Python error on truncation, so it is not checked. Only the
    first ``head_bytes`` are read unless the PixelData tag lies further in.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        data = fh.read(head_bytes)
        if _PIXEL_DATA_TAG not in data and size > head_bytes:
            data += fh.read()
    pos = data.find(_PIXEL_DATA_TAG)
    if pos < 0:
        raise ValueError("no PixelData element found")
    if data[pos + 4:pos + 6] in (b"OW", b"OB", b"OD", b"OF", b"OL", b"UN"):  # explicit VR: 2 reserved bytes
        header, length = 12, int.from_bytes(data[pos + 8:pos + 12], "little")
    else:  # implicit VR
        header, length = 8, int.from_bytes(data[pos + 4:pos + 8], "little")
    if length != 0xFFFFFFFF and pos + header + length > size:
        raise ValueError(f"pixel data truncated: {size - pos - header} of {length} bytes present")


def decode_with_fallback(path: str | Path, *, backend: str) -> np.ndarray:
    """``decode_stored`` with ``backend``, then with the other backend if that fails.

    Each library has gaps (pydicom's plugins cannot decode 12-bit JPEG Extended 4.51; dicomsdl cannot index
    frames of some encapsulated multi-frame files), so a file fails only when both fail; the first error is
    raised.
    """
    try:
        return decode_stored(path, backend=backend)
    except Exception as first:  # noqa: BLE001
        other = "pydicom" if backend == "dicomsdl" else "dicomsdl"
        try:
            return decode_stored(path, backend=other)
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
            stored = decode_with_fallback(task.path, backend=task.backend)
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
            # fork (Linux): workers start in milliseconds and never re-import the caller's ``__main__`` (spawn
            # and forkserver do, which breaks scripts without a main guard). Workers only decode, so threads
            # the parent may hold (torch, OpenMP) are never touched in them.
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            # PDEATHSIG fires when the *thread* that forked the worker ends, so it is only safe to ask for it
            # when the pool is created from the main thread.
            in_main = threading.current_thread() is threading.main_thread()
            _POOL = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_exit_with_parent,
                                        initargs=(in_main,))
            _POOL_WORKERS = workers
        return _POOL


def _exit_with_parent(enabled: bool) -> None:
    """Ask Linux to SIGTERM this worker when its parent dies, so a killed reader leaves no orphans."""
    if not enabled:
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc: rely on atexit only
        pass


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


def decode_slices(
    tasks: Sequence[SliceTask], shape: tuple[int, int, int], dtype: np.dtype, *, workers: int
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode every task into a new ``(D, H, W)`` array of ``dtype``.

    Args:
        tasks: one per slot ``0..D-1``.
        shape: output shape ``(D, H, W)``.
        dtype: ``int16`` or ``float32``.
        workers: processes to use; ``<= 1`` decodes in this process.

    Returns:
        The volume and a list of ``(slot, error)`` for files that failed to decode (their slot holds zeros).
    """
    dtype = np.dtype(dtype)
    in_process = workers <= 1 or mp.current_process().daemon
    if in_process:
        out = np.zeros(shape, dtype=dtype)
        results = decode_into(out, tasks)
        return out, [(s, e) for s, e in results if e is not None]
    nbytes = int(np.prod(shape)) * dtype.itemsize
    fd, buf_path = tempfile.mkstemp(prefix="spinelab-decode-", suffix=".raw", dir=_shm_dir())
    try:
        os.ftruncate(fd, max(nbytes, 1))
        mapping = mmap.mmap(fd, max(nbytes, 1))
        out = np.frombuffer(mapping, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        # Contiguous chunks: each worker touches neighbouring slots, and a few big messages beat many small.
        n_chunks = min(len(tasks), workers * 4)
        step = -(-len(tasks) // n_chunks)
        chunks = [list(tasks[i:i + step]) for i in range(0, len(tasks), step)]
        errors: list[tuple[int, str]] = []
        try:
            pool = _get_pool(workers)
            futures = [pool.submit(_worker_decode, buf_path, shape, dtype.str, c) for c in chunks]
            for fut in futures:
                errors.extend((s, e) for s, e in fut.result() if e is not None)
        except (BrokenProcessPool, OSError, RuntimeError) as err:
            # A worker died (out of memory, killed) or processes cannot start here: decode in-process instead.
            log.warning("decode pool failed (%s); decoding in-process", err)
            shutdown_pool()
            errors = [(s, e) for s, e in decode_into(out, tasks) if e is not None]
    finally:
        os.close(fd)
        # The mapping keeps the pages alive after the name is gone; the memory is freed with the array.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(buf_path)
    return out, errors
