"""A tiny CT series written slice by slice with pydicom, for the SEG, SR and PACS tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom


def tiny_ct_series(tmp_path: Path, *, rows: int = 6, cols: int = 5, slices: int = 4, reverse: bool = False,
                   iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0)) -> Path:
    """A small CT series written slice by slice (file order head to feet when ``reverse``; ``iop``: the
    ImageOrientationPatient of every slice)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = tmp_path / "tiny"
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(slices):
        z = (slices - 1 - k if reverse else k) * 2.0
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "P1", "Test^Patient"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-10.0, -20.0, z]
        ds.ImageOrientationPatient = list(iop)
        ds.PixelSpacing = [1.5, 1.0]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.zeros((rows, cols), np.uint16).tobytes()
        ds.save_as(folder / f"{k + 1}.dcm", enforce_file_format=True)
    return folder
