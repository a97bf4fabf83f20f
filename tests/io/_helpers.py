"""Small synthetic volumes and DICOM series with known geometry for the io tests."""

from __future__ import annotations

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
