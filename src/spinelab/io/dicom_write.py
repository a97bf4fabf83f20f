"""Write a ``Volume`` as a DICOM series (one file per slice), uncompressed or compressed.

Used by the synthetic generators, the benchmarks and the tests. Geometry comes from the volume's affine,
never from assumptions: each slice's ImagePositionPatient is ``affine @ (d, 0, 0, 1)`` and
ImageOrientationPatient holds the column (W) and row (H) direction cosines.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from spinelab.io.atomic import atomic_path
from spinelab.io.volume import Volume

__all__ = ["write_series", "TRANSFER_SYNTAXES", "dicom_geometry", "write_malformed", "MALFORMED_KINDS"]

#: Names accepted for ``transfer_syntax`` and the UID each one writes.
TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "jpeg_lossless": JPEGLosslessSV1,  # 1.2.840.10008.1.2.4.70, the RSNA 2022 syntax
    "jpeg2000": JPEG2000Lossless,  # 1.2.840.10008.1.2.4.90
    "rle": RLELossless,
}


def dicom_geometry(affine: np.ndarray) -> tuple[list[float], list[float], float]:
    """Split a (D, H, W) -> LPS affine into ImageOrientationPatient, PixelSpacing and slice spacing."""
    col_step = affine[:3, 2]  # moving along W (to the next column)
    row_step = affine[:3, 1]  # moving along H (to the next row)
    dw, dh = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    iop = [*(col_step / dw).tolist(), *(row_step / dh).tolist()]
    return iop, [dh, dw], float(np.linalg.norm(affine[:3, 0]))


def write_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    file_names: Sequence[str] | None = None,
    transfer_syntax: str | Sequence[str] = "explicit",
    modality: str = "CT",
    rescale_intercept: float | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "",
    series_number: int = 1,
    instance_numbers: Sequence[int] | None = None,
    patient_id: str = "ANON",
    slice_thickness: float | None = None,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
) -> list[Path]:
    """Write ``volume`` slice by slice as DICOM files.

    Args:
        volume: CT in HU (any integer or float dtype) or MR intensities; ``array[d]`` becomes one file.
        out_dir: folder to write into (created).
        file_names: file name of each slice in array order; default ``<instance number>.dcm``.
        transfer_syntax: one name from ``TRANSFER_SYNTAXES`` for all slices, or one per slice.
        modality: ``"CT"`` (stored = HU - intercept, unsigned) or ``"MR"`` (stored = value, unsigned).
        rescale_intercept: CT only; default -1024.
        study_uid, series_uid: default freshly generated.
        instance_numbers: InstanceNumber per slice; default 1..D in array order.
        bits_stored: BitsStored (12 for typical CT, up to 16).
        photometric: ``MONOCHROME2`` or ``MONOCHROME1`` (stored values are then inverted).

    Returns:
        The written paths, in array order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    depth = volume.shape[0]
    syntaxes = [transfer_syntax] * depth if isinstance(transfer_syntax, str) else list(transfer_syntax)
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, depth + 1))
    names = list(file_names) if file_names is not None else [f"{n}.dcm" for n in numbers]
    if not (len(syntaxes) == len(numbers) == len(names) == depth):
        raise ValueError("file_names, instance_numbers and transfer_syntax must have one entry per slice")
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    intercept = (-1024.0 if rescale_intercept is None else rescale_intercept) if modality == "CT" else 0.0
    max_stored = (1 << bits_stored) - 1
    stored = np.clip(np.rint(np.asarray(volume.array, dtype=np.float64) - intercept), 0, max_stored)
    stored = stored.astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (max_stored - stored).astype(np.uint16)
    iop, pixel_spacing, spacing = dicom_geometry(volume.affine)
    thickness = spacing if slice_thickness is None else slice_thickness
    now = _dt.datetime(2022, 1, 1)
    paths = []
    for d in range(depth):
        ipp = volume.voxel_to_world(np.array([d, 0.0, 0.0]))
        ds = _base_dataset(modality, study_uid, series_uid, patient_id, now)
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = int(numbers[d])
        ds.ImagePositionPatient = [float(f"{v:.6f}") for v in ipp]
        ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in iop]
        ds.PixelSpacing = [float(f"{v:.6f}") for v in pixel_spacing]
        ds.SliceThickness = float(f"{thickness:.4f}")
        ds.SliceLocation = float(f"{ipp[2]:.6f}")
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 0
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1.0, "HU"
        ds.PixelData = stored[d].tobytes()
        path = out_dir / names[d]
        _save(ds, path, syntaxes[d])
        paths.append(path)
    return paths


def _base_dataset(modality: str, study_uid: str, series_uid: str, patient_id: str, when: _dt.datetime) -> Dataset:
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = study_uid + ".1" if len(study_uid) < 62 else study_uid
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyDate = ds.SeriesDate = when.strftime("%Y%m%d")
    ds.Manufacturer = "spinelab-synthetic"
    return ds


def _save(ds: Dataset, path: Path, syntax: str) -> None:
    if syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {syntax!r}; choose from {sorted(TRANSFER_SYNTAXES)}")
    uid = TRANSFER_SYNTAXES[syntax]
    with atomic_path(path, suffix=".dcm") as tmp:
        if syntax in ("explicit", "implicit"):
            ds.file_meta.TransferSyntaxUID = uid
            ds.save_as(tmp, enforce_file_format=True, little_endian=True, implicit_vr=syntax == "implicit")
        elif syntax in ("jpeg2000", "rle"):
            ds.compress(uid, encoding_plugin="pylibjpeg" if syntax == "jpeg2000" else "")
            ds.save_as(tmp, enforce_file_format=True)
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(tmp, enforce_file_format=True)
            _gdcm_transcode_jpeg_lossless(tmp)


def _gdcm_transcode_jpeg_lossless(path: Path) -> None:
    """Re-encode a file in place to JPEG Lossless SV1 (4.70); pydicom cannot encode it, gdcm can."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise OSError(f"gdcm could not read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise OSError(f"gdcm could not encode {path} as JPEG Lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise OSError(f"gdcm could not write {path}")


#: What ``write_malformed`` can do to a good file, and what each case stands for.
MALFORMED_KINDS: dict[str, str] = {
    "truncated": "the file cut at 60 % of its length (inside the pixel data)",
    "short_pixels": "a consistent file whose PixelData holds half the bytes Rows x Columns needs",
    "oversized_header": "Rows = Columns = 65535 with 8 kB of pixel data (dicomsdl used to segfault)",
    "wrong_bits": "BitsAllocated 8 over 16-bit pixel data",
    "zero_rows": "Rows 0",
    "stream_cut": "compressed only: the stream cut in half with consistent item lengths (no end marker)",
    "empty_fragment": "compressed only: an empty pixel data fragment",
    "slope_zero": "RescaleSlope 0 (a blank slice)",
    "slope_huge": "RescaleSlope 1e9 (1e12 HU)",
    "slope_nan": "RescaleSlope NaN",
}


def write_malformed(src: str | Path, dst: str | Path, kind: str) -> Path:
    """Write a copy of the good DICOM file ``src`` to ``dst``, broken as ``MALFORMED_KINDS[kind]`` says.

    Used by the malformed-input corpus (``tests/io/test_malformed.py``) and the fuzzer's seeds.
    """
    from pydicom.encaps import encapsulate, generate_fragments

    src, dst = Path(src), Path(dst)
    if kind not in MALFORMED_KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {sorted(MALFORMED_KINDS)}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        data = src.read_bytes()
        dst.write_bytes(data[: int(len(data) * 0.6)])
        return dst
    ds = pydicom.dcmread(src)
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed
    if kind in ("stream_cut", "empty_fragment") and not compressed:
        raise ValueError(f"{kind} needs a compressed file, {src} is uncompressed")
    if kind == "short_pixels":
        if compressed:
            raise ValueError("short_pixels needs an uncompressed file")
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    elif kind == "oversized_header":
        ds.Rows = ds.Columns = 65535
        ds.PixelData = bytes(8192) if not compressed else encapsulate([b"\xff\xd8" + bytes(8188) + b"\xff\xd9"])
    elif kind == "wrong_bits":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    elif kind == "zero_rows":
        ds.Rows = 0
    elif kind == "stream_cut":
        frag = b"".join(list(generate_fragments(ds.PixelData))[1:])  # item 0 is the offset table
        ds.PixelData = encapsulate([frag[: len(frag) // 2 & ~1]])
    elif kind == "empty_fragment":
        frags = list(generate_fragments(ds.PixelData))[1:]
        # an empty item in the middle: written by hand, pydicom's encapsulate refuses it
        items = b"".join(b"\xfe\xff\x00\xe0" + len(f).to_bytes(4, "little") + f for f in [frags[0], b"", *frags[1:]])
        ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + items + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    else:
        ds.RescaleSlope = {"slope_zero": 0.0, "slope_huge": 1e9, "slope_nan": "NaN"}[kind]
    ds.save_as(dst, enforce_file_format=False)
    return dst


# pydicom is imported for its side effect of registering the pixel-data handlers used by ``compress``.
_ = pydicom.__version__
