"""NIfTI files as ``Volume``: reading (with the RAS -> LPS and axis-order conversion) and atomic writing.

Axis convention: ``Volume.array`` is the file's data transposed to ``(k, j, i)``, so that the D axis is the file's
third axis, like a DICOM slice stack; the affine is converted from nibabel's RAS+ to LPS and its columns permuted
to match. ``write_nifti`` undoes both, so ``read_nifti(write_nifti(v))`` returns the same array (values, dtype)
and the same affine (to the float32 precision of the NIfTI-1 sform).

Label maps: ``is_label=None`` decides from the data (integral, non-negative, at most 256 distinct values).
Label maps stored as floats (e.g. SCT's float64 level maps) are cast to the smallest integer dtype that holds
their values; integer label maps keep their dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spinelab.errors import InputError
from spinelab.io.atomic import atomic_path
from spinelab.io.volume import LPS_TO_RAS, Volume

__all__ = ["read_nifti", "write_nifti", "is_nifti_file", "smallest_int_dtype"]

_MAX_AUTO_LABELS = 256
#: Largest accepted size per spatial axis and in total (bytes) of a NIfTI image.
MAX_NIFTI_DIM = 16384
MAX_NIFTI_BYTES = 1 << 33


def is_nifti_file(path: str | Path) -> bool:
    """Whether ``path`` is a NIfTI file, judged by its header bytes (gzip-aware), not only its suffix."""
    import gzip

    path = Path(path)
    if not path.is_file():
        return False
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            header = fh.read(348 + 4)
    except OSError:
        return False
    if len(header) < 348:
        return False
    magic = header[344:348]
    return magic in (b"n+1\x00", b"ni1\x00") or header[4:8] in (b"n+2\x00", b"ni2\x00")


def smallest_int_dtype(array: np.ndarray) -> np.dtype:
    """Smallest integer dtype (unsigned first) holding every value of an integral ``array``."""
    if array.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(np.min(array)), int(np.max(array))
    for dt in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _looks_like_labels(data: np.ndarray) -> bool:
    if data.dtype.kind == "b":
        return True
    if data.dtype.kind == "f" and not np.array_equal(data, np.rint(data)):
        return False
    if data.size and float(np.min(data)) < 0:
        return False
    return len(np.unique(data)) <= _MAX_AUTO_LABELS


def read_nifti(path: str | Path, *, is_label: bool | None = None) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file.

    Args:
        path: the file.
        is_label: treat as a label map; ``None`` decides from the data (see module docstring).

    Returns:
        ``Volume`` with ``array`` ``(K, J, I)`` = the file's axes reversed, the LPS affine and
        ``meta`` (``source``, ``format``, ``dtype_on_disk``, ``warnings``).

    Raises:
        InputError: missing file, not NIfTI, not a 3-D image, a header claiming an absurd size (see
            ``MAX_NIFTI_*``) or more data than the file holds, non-positive or NaN pixdims, a NaN/infinite or
            singular affine, truncated data.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist or is not a file")
    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001 - nibabel raises many types on bad files
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    _check_header(path, img)  # before the data is read: a header can claim terabytes
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - truncated / corrupt data: one typed error
        raise InputError(path, f"NIfTI data could not be read ({type(err).__name__}: {err})") from err
    if data.dtype.kind not in "biuf":
        raise InputError(path, f"unsupported NIfTI data type {data.dtype} (expected integer or float voxels)")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3-D image, got shape {data.shape}")
    disk_dtype = str(img.get_data_dtype())
    label = _looks_like_labels(data) if is_label is None else bool(is_label)
    if label and data.dtype.kind in "fb":
        if data.dtype.kind == "f" and not np.array_equal(data, np.rint(data)):
            raise InputError(path, "is_label=True but the values are not integral")
        data = data.astype(smallest_int_dtype(data))
    ras = np.asarray(img.affine, dtype=np.float64)
    lps = LPS_TO_RAS @ ras  # the diagonal flip is its own inverse
    affine = np.eye(4)
    affine[:, :3] = lps[:, [2, 1, 0]]
    affine[:, 3] = lps[:, 3]
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    meta = {"source": str(path), "format": "nifti", "dtype_on_disk": disk_dtype, "warnings": []}
    return Volume(array=array, affine=affine, meta=meta, is_label=label)


def _check_header(path: Path, img: Any) -> None:
    """Refuse headers that would give a huge allocation, a meaningless grid or a NaN affine."""
    hdr = img.header
    shape = tuple(int(n) for n in hdr.get_data_shape())
    if any(n < 1 for n in shape):
        raise InputError(path, f"NIfTI header has an empty dimension (shape {shape})")
    if any(n > MAX_NIFTI_DIM for n in shape[:3]):
        raise InputError(path, f"NIfTI header claims shape {shape} (limit {MAX_NIFTI_DIM} per axis)")
    nbytes = int(np.prod(shape, dtype=np.float64) * hdr.get_data_dtype().itemsize)
    if nbytes > MAX_NIFTI_BYTES:
        raise InputError(path, f"NIfTI header claims {nbytes} bytes of data (limit {MAX_NIFTI_BYTES})")
    size = path.stat().st_size
    offset = int(hdr.get_data_offset())
    compressed = path.name.endswith(".gz")
    # deflate expands at most ~1032:1, so a gzip file this small cannot hold what the header claims.
    if (offset + nbytes > size) if not compressed else (nbytes > 1032 * size + (1 << 20)):
        raise InputError(path, f"NIfTI file too small for its header ({size} bytes on disk, shape {shape})")
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as fobj:  # nibabel's loaded header has pixdims already "fixed" (abs, 1)
        raw = type(hdr).from_fileobj(fobj, check=False)
    zooms = np.asarray(raw["pixdim"][1:1 + min(3, len(shape))], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(path, f"NIfTI voxel sizes (pixdim) must be finite and positive, got {zooms.tolist()}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(path, "NIfTI affine (sform/qform) holds NaN or infinite values")
    scale = float(np.prod(np.linalg.norm(affine[:3, :3], axis=0)))
    if scale == 0 or abs(float(np.linalg.det(affine[:3, :3]))) < 1e-6 * scale:
        raise InputError(path, "NIfTI affine is singular (a zero or repeated axis direction)")


def write_nifti(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as NIfTI-1 atomically (``.nii`` or ``.nii.gz`` by suffix).

    Args:
        volume: the image or label map; its dtype is kept.
        path: destination.

    Returns:
        ``path``.
    """
    import nibabel as nib

    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise InputError(path, "NIfTI output must end in .nii or .nii.gz")
    lps = np.eye(4)
    lps[:, [2, 1, 0]] = volume.affine[:, :3]
    lps[:, 3] = volume.affine[:, 3]
    ras = LPS_TO_RAS @ lps
    data = np.asarray(volume.array).transpose(2, 1, 0)
    img = nib.Nifti1Image(data, ras)
    img.set_data_dtype(data.dtype)
    img.set_qform(ras, code=1)
    img.set_sform(ras, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
