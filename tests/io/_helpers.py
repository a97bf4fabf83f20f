"""Small synthetic volumes and DICOM series with known geometry for the io tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from spinelab.io.dicom_write import write_series
from spinelab.io.volume import Volume


def ct_volume(rng: np.random.Generator, affine: np.ndarray, shape: tuple[int, int, int] = (8, 64, 64)) -> Volume:
    """A CT-like int16 volume (HU in -1024..3071) with a distinct pattern per slice."""
    arr = rng.integers(-1024, 3071, size=shape).astype(np.int16)
    arr[:, 0, 0] = np.arange(shape[0]) * 10  # slice fingerprint
    return Volume(array=arr, affine=affine)


def write(vol: Volume, folder: Path, **kwargs) -> list[Path]:
    return write_series(vol, folder, **kwargs)


def shm_decode_files() -> set[str]:
    """Names of ``spinelab-decode-*`` files in ``/dev/shm`` now."""
    return {f for f in os.listdir("/dev/shm") if f.startswith("spinelab-decode-")} if os.path.isdir("/dev/shm") \
        else set()


def leaked_shm_files(before: set[str], settle_s: float = 2.0) -> set[str]:
    """Decode buffers that appeared since ``before`` and are still there after ``settle_s``.

    Other spinelab processes on the machine (older versions name their buffer) create such files for the
    length of one decode; a leak is one that stays.
    """
    new = shm_decode_files() - before
    if new:
        time.sleep(settle_s)
        new &= shm_decode_files()
    return new
