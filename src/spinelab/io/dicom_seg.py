"""DICOM SEG of vertebra label maps, on the frames of the source CT series (highdicom).

Why by world position: a label map in spinelab lives on some grid with its affine (the stored grid of
``read_series``, or the canonical grid the models see). A PACS viewer overlays a SEG frame on the source image
it references, so each source frame's pixels are looked up in the label map through the affine: the world
position of pixel ``(r, c)`` of a frame is ``IPP + c * PixelSpacing[1] * row_cosines + r * PixelSpacing[0] *
column_cosines`` (DICOM PS3.3 C.7.6.2.1.1), mapped into the label map by ``inv(affine)`` and rounded to the
nearest voxel. No flip or slice order is assumed: a series stored feet to head, or in any in-plane
orientation, lands on its own frames.

Codes: the segmented property types are SNOMED CT vertebra codes as pydicom ships them from the DICOM
standard (CID 7151 / 7603: C1 vertebra 14806007, C2 39976000, C3 113205007, C4 5329002, C5 36978003,
C6 36054005, C7 87391001, T1 64864005), the category is "Anatomical Structure" (SCT 91723000, CID 7150).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spinelab import __version__
from spinelab.errors import InputError
from spinelab.io.volume import Volume

__all__ = ["SourceSeries", "read_source_series", "labels_on_frames", "vertebra_code", "build_vertebra_seg",
           "ranges_label_map", "quiet_name_warning", "MANUFACTURER", "VERTEBRA_CODES"]

log = logging.getLogger("spinelab")

MANUFACTURER = "spinelab"
#: patient and study attributes highdicom copies from the source into a SEG or SR
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "StudyID", "AccessionNumber", "ReferringPhysicianName")
#: pydicom's ``codes.SCT`` keyword of each vertebra name (values listed in the module docstring)
VERTEBRA_CODES: dict[str, str] = {**{f"C{i}": f"C{i}Vertebra" for i in range(1, 8)},
                                  **{f"T{i}": f"T{i}Vertebra" for i in range(1, 13)},
                                  **{f"L{i}": f"L{i}Vertebra" for i in range(1, 6)}}


def vertebra_code(name: str) -> Any:
    """The SNOMED CT code of a vertebra (``"C1"`` .. ``"C7"``, ``"T1"`` .. ``"T12"``, ``"L1"`` .. ``"L5"``)."""
    from pydicom.sr.codedict import codes

    return getattr(codes.SCT, VERTEBRA_CODES[name])


@dataclass
class SourceSeries:
    """The headers of one source series, as the SEG and SR reference them.

    Args:
        folder: where the files were read.
        datasets: one pydicom dataset per image file (headers only, no pixel data), in file-name order.
        paths: the file of each dataset.
    """

    folder: Path
    datasets: list[Any]
    paths: list[Path]

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)


def read_source_series(folder: str | Path, series_uid: str | None = None) -> SourceSeries:
    """Headers of the image files of one series in ``folder`` (``series_uid``: which one when there are several).

    An empty SOPInstanceUID or SOPClassUID is taken from the file meta (MediaStorageSOPInstanceUID /
    MediaStorageSOPClassUID), which by definition hold the same values; missing type 2 patient and study
    attributes (PatientBirthDate, StudyID, ...) are added empty, as the standard allows, and a missing
    SliceThickness is the step between slices (in memory only).

    Raises:
        InputError: no image of that series, or an empty StudyInstanceUID / SeriesInstanceUID (a SEG or SR
            must name the study and series it belongs to).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    files = [folder] if folder.is_file() else sorted(p for p in folder.iterdir()
                                                      if p.is_file() and not p.name.startswith("."))
    datasets, paths = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "Rows" not in ds or "ImagePositionPatient" not in ds:
            continue
        if series_uid is not None and str(ds.get("SeriesInstanceUID", "") or "") != series_uid:
            continue
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                              ("SOPClassUID", "MediaStorageSOPClassUID")):
            if not str(ds.get(key, "") or "") and meta is not None and meta.get(meta_key):
                setattr(ds, key, str(meta.get(meta_key)))
        for key in _TYPE2_COPIED:  # type 2 (present, may be empty) in every image IOD; some writers omit them
            if key not in ds:
                setattr(ds, key, "")
        datasets.append(ds)
        paths.append(path)
    if not datasets:
        raise InputError(folder, f"no DICOM image of series {series_uid or '<any>'} to reference")
    _fill_slice_thickness(datasets)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        empty = [p for p, ds in zip(paths, datasets, strict=True) if not str(ds.get(key, "") or "")]
        if empty:
            raise InputError(empty[0], f"empty {key}: a DICOM SEG or SR cannot reference this series")
    return SourceSeries(folder, datasets, paths)


def _fill_slice_thickness(datasets: list[Any]) -> None:
    """A missing SliceThickness (the SEG's pixel measures need one) becomes the median step between slice
    positions along the normal, as ``read_series`` measures it (1 mm for a single slice)."""
    if all(str(ds.get("SliceThickness", "") or "") for ds in datasets):
        return
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    along = np.sort([float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in datasets])
    steps = np.diff(along)
    step = float(np.median(steps[steps > 1e-3])) if np.any(steps > 1e-3) else 1.0
    for ds in datasets:
        if not str(ds.get("SliceThickness", "") or ""):
            ds.SliceThickness = round(step, 4)


@contextmanager
def quiet_name_warning() -> Iterator[None]:
    """highdicom warns about a one-part PatientName it copies from the source (e.g. an anonymised ``12345``):
    not ours to fix, and said once per file it would drown the log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name")
        yield


def _frame_world(ds: Any) -> np.ndarray:
    """``(Rows, Columns, 3)`` LPS mm of every pixel centre of one single-frame image."""
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    rows, cols = int(ds.Rows), int(ds.Columns)
    r = np.arange(rows, dtype=np.float64)[:, None, None]
    c = np.arange(cols, dtype=np.float64)[None, :, None]
    return ipp + c * col_spacing * iop[:3] + r * row_spacing * iop[3:]


def labels_on_frames(labels: Volume, datasets: Sequence[Any]) -> np.ndarray:
    """The label map sampled at every pixel centre of each source frame (nearest voxel, 0 outside).

    Returns:
        ``(F, Rows, Columns)`` array of ``labels``' dtype, in ``datasets`` order.
    """
    inv = np.linalg.inv(labels.affine)
    shape = np.asarray(labels.shape)
    array = np.asarray(labels.array)
    out = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=array.dtype)
    for f, ds in enumerate(datasets):
        index = _frame_world(ds) @ inv[:3, :3].T + inv[:3, 3]
        nearest = np.rint(index).astype(np.int64)
        inside = np.all((nearest >= 0) & (nearest < shape), axis=-1)
        out[f][inside] = array[tuple(nearest[inside].T)]
    return out


def ranges_label_map(grid: Volume, ranges: dict[str, dict[str, Any]], box: Sequence[float] | None,
                     names: Sequence[str]) -> Volume:
    """A label map on ``grid`` (the canonical grid a slice route's ranges and crop box refer to): value ``i + 1``
    (``names[i]``) in slices ``start_index .. end_index`` (inclusive) inside ``box`` = ``[x0, y0, x1, y1]``
    (columns, rows; end exclusive; the whole slice when ``None``). A later vertebra wins a shared slice."""
    depth, height, width = grid.shape
    out = np.zeros(grid.shape, dtype=np.uint8)
    x0, y0, x1, y1 = (0, 0, width, height) if box is None else (
        int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3])))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    for value, name in enumerate(names, start=1):
        r = ranges.get(name)
        if not r or r.get("start_index") is None or r.get("end_index") is None:
            continue
        lo, hi = sorted((int(r["start_index"]), int(r["end_index"])))
        out[max(0, lo):min(depth, hi + 1), y0:y1, x0:x1] = value
    return Volume(array=out, affine=grid.affine, is_label=True, meta={"source": grid.meta.get("source")})


def build_vertebra_seg(labels: Volume, source: SourceSeries, names: dict[int, str], *,
                       algorithm: str, description: str, series_number: int = 901) -> Any:
    """A DICOM SEG (highdicom, binary) of the label values in ``names`` (value -> vertebra name), on the
    source series' frames.

    Values absent from the frames get no segment; segments are numbered 1.. in label order. Frames without
    any segment are left out (highdicom's ``omit_empty_frames``), each kept frame references its source image.

    Raises:
        InputError: no labelled voxel falls on any source frame.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frames = labels_on_frames(labels, source.datasets)
    present = [v for v in sorted(names) if np.any(frames == v)]
    if not present:
        raise InputError(source.folder, "no labelled voxel lies on the source frames: nothing to write as a SEG")
    lut = np.zeros(max(int(frames.max()), max(names)) + 1, dtype=np.uint8)
    algo = hd.AlgorithmIdentificationSequence(name=f"spinelab {algorithm}", version=__version__,
                                              family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, value in enumerate(present, start=1):
        lut[value] = number
        name = names[value]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=vertebra_code(name), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo, tracking_uid=hd.UID(), tracking_id=f"{name} ({algorithm})"))
    with quiet_name_warning():
        return hd.seg.Segmentation(
            source_images=source.datasets, pixel_array=lut[frames],
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=f"spinelab {algorithm}",
            software_versions=__version__, device_serial_number="0", content_description=description[:64],
            content_label="VERTEBRAE", series_description=description[:64])
