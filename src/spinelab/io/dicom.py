"""Reading DICOM series into ``Volume``: header pass, series selection, geometry rules and parallel decode.

``read_series(folder)`` lists the folder, reads every header (``stop_before_pixels``), groups files by
SeriesInstanceUID, picks one series, sorts its slices along the slice normal (cross product of the
ImageOrientationPatient cosines) by the projection of ImagePositionPatient on it -- never by file name or
InstanceNumber -- and then decodes each file straight into its sorted slot (``_decode_pool``).

Values: CT (and any non-MR modality) in rescaled units (HU), ``int16`` when every possible value is an exact
int16, else ``float32``; MR keeps its stored values (no rescale), ``int16`` when they fit, else ``float32``.
MONOCHROME1 stored values are inverted (``max_stored - stored``) before the rescale.

Speed: the header pass uses dicomsdl for Part-10 files (pydicom for the rest, and for ``backend="pydicom"``);
``backend="auto"`` decodes the lossless syntaxes in ``_decode_pool.DICOMSDL_VERIFIED_SYNTAXES`` with dicomsdl
(tested equal to pydicom) and everything else (lossy JPEG 4.50/4.51/4.91, big endian, ...) with pydicom.

``slice_ids`` are the file names without a ``.dcm``/``.dicom``/``.ima`` suffix (``'101'`` for ``101.dcm``;
``'CT.1.2.3'`` stays whole), i.e. RSNA's ``slice_number`` / ``instance_number``.

Rules (each is a warning -- in ``meta["warnings"]`` and through ``warnings.warn(DicomWarning)`` -- or an
``InputError`` naming the file(s)):

| situation | behaviour |
|---|---|
| path missing, or an empty folder | error |
| no readable DICOM image among the files | error listing what was found |
| non-DICOM file (by content), corrupt header, or a DICOM without pixels among good slices | warning, skipped (named) |
| header and pixel data disagree (see ``pixel_checks``: limits, length, fragments, end marker) | warning, skipped |
| a decoder warning (pydicom / pylibjpeg / dicomsdl) while decoding a slice | corrupt: warning, slice dropped |
| rescale not finite, ``abs(slope)`` outside [1e-4, 1e4] or ``abs(intercept)`` > 1e5 (not MR) | warning, dropped |
| FIFO, socket, device, broken symlink or symlink loop in the folder | warning, never opened (named) |
| a sub-folder inside a series folder | warning naming it; its files are not part of the series |
| the path itself is a device, FIFO or socket (e.g. ``/dev/zero``) | error |
| pixels fail with dicomsdl | pydicom is tried; a pydicom failure goes on to dicomsdl only for 12-bit JPEG 4.51 |
| a decoder crashes its worker (segfault, abort) | that slice alone dropped (named); the read goes on |
| file whose pixels fail to decode among good slices | warning, slice dropped (named), geometry recomputed |
| hidden files (name starts with ``.``) | ignored silently |
| several series; ``series`` missing or matching several | ``SeriesSelectionError`` listing uid, description, n files |
| empty Series/Study/SOP Instance UID | warning; files with an empty series UID form one series |
| mixed image sizes or orientations | error listing sizes; ``mixed_sizes="majority"`` keeps the most common, warns |
| duplicate positions (same IPP along the normal) | identical pixels: warning, one kept; different pixels: error |
| missing slices (a step > 1.5 x median spacing) | warning; the affine still uses the mean step |
| uneven spacing (a step off the median by > 1 % and > 0.01 mm) | warning; the affine uses the mean step |
| gantry tilt (stack direction > 0.1 deg off the normal) | warning; the affine is exact (sheared) |
| non-orthogonal or non-unit orientation cosines | warning |
| no PixelSpacing | warning, 1 mm assumed |
| a single slice | warning; slice spacing = SliceThickness (or 1 mm) |
| multi-frame (enhanced) file | error in ``read_series``; decode it with ``read_dicom_pixels`` |
| no ImagePositionPatient / ImageOrientationPatient | error |
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.errors import InputError, SeriesSelectionError
from spinelab.io import _decode_pool
from spinelab.io.files import is_dicom_file, list_folder, require_regular_or_dir
from spinelab.io.pixel_checks import CorruptPixelDataError, check_layout, check_pixel_data
from spinelab.io.series_checks import SliceHeader, check_sizes, find_duplicates, slice_normal, sort_and_measure
from spinelab.io.volume import Volume

__all__ = ["read_series", "list_series", "read_dicom_pixels", "is_dicom_file", "slice_id", "DicomWarning",
           "MAX_ABS_SLOPE", "MAX_ABS_INTERCEPT"]

log = logging.getLogger(__name__)

#: Rescale values accepted for CT (and any rescaled modality): finite, 1/MAX <= |slope| <= MAX, |intercept| <= MAX.
MAX_ABS_SLOPE = 1e4
MAX_ABS_INTERCEPT = 1e5
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_HEADER_TAGS = [
    "SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID", "SeriesDescription", "SeriesNumber", "Modality",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "InstanceNumber",
    "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation", "BitsStored", "BitsAllocated",
    "PixelRepresentation", "NumberOfFrames", "SamplesPerPixel", "SliceThickness", "PatientID",
]


class DicomWarning(UserWarning):
    """A DICOM series was read, but something about it deserves attention (gap, tilt, skipped file...)."""


def slice_id(path: Path) -> str:
    """A slice file's id in ``Volume.slice_ids``: its name without a ``.dcm``/``.dicom``/``.ima`` suffix."""
    name = path.name
    return name[: -len(path.suffix)] if path.suffix.lower() in _DICOM_SUFFIXES else name


def _float_list(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _int_or_none(value: Any) -> int | None:
    """An IS value as int; ``None`` when missing or garbage (a corrupt number never stops a read)."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


def _read_header(path: Path) -> dict[str, Any] | str:
    """Header fields of one file, or a string saying why it is not a usable DICOM image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=_HEADER_TAGS)
        rows, cols = ds.get("Rows"), ds.get("Columns")
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError,
            OverflowError, IndexError) as err:
        return f"not a readable DICOM file ({type(err).__name__}: {err})"
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on garbage; report, do not crash
        return f"not a readable DICOM file ({type(err).__name__}: {err})"
    if not rows or not cols:
        has_meta = bool(getattr(ds, "file_meta", None)) and "TransferSyntaxUID" in ds.file_meta
        return "DICOM file without an image (no Rows/Columns)" if has_meta or len(ds) else "not a DICOM file"
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if getattr(ds, "file_meta", None) else ""
    ipp = _float_list(ds.get("ImagePositionPatient"), 3) if "ImagePositionPatient" in ds else None
    iop = _float_list(ds.get("ImageOrientationPatient"), 6) if "ImageOrientationPatient" in ds else None
    ps = _float_list(ds.get("PixelSpacing"), 2) if "PixelSpacing" in ds else None

    def num(key: str, default: float) -> float:
        value = ds.get(key)
        try:
            return float(value) if value not in (None, "") else default
        except (TypeError, ValueError):
            return float("nan") if key.startswith("Rescale") else default

    instance = _int_or_none(ds.get("InstanceNumber"))
    return {
        "path": path,
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "sop_uid": str(ds.get("SOPInstanceUID", "") or ""),
        "description": str(ds.get("SeriesDescription", "") or ""),
        "series_number": _int_or_none(ds.get("SeriesNumber")),
        "modality": str(ds.get("Modality", "") or ""),
        "patient_id": str(ds.get("PatientID", "") or ""),
        "transfer_syntax": ts,
        "rows": int(rows),
        "cols": int(cols),
        "ipp": ipp,
        "iop": iop,
        "pixel_spacing": tuple(ps.tolist()) if ps is not None else None,
        "instance_number": instance,
        "slope": num("RescaleSlope", 1.0),
        "intercept": num("RescaleIntercept", 0.0),
        "photometric": str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2"),
        "bits_stored": int(num("BitsStored", 16)),
        "bits_allocated": int(num("BitsAllocated", 16)),
        "signed": int(num("PixelRepresentation", 0)) == 1,
        "frames": int(num("NumberOfFrames", 1)),
        "samples": int(num("SamplesPerPixel", 1)),
        "thickness": num("SliceThickness", 0.0) or None,
    }


def _read_header_dicomsdl(path: Path, pixel_offset: int) -> dict[str, Any] | None:
    """Fast header read with dicomsdl (about 6x pydicom's); ``None`` when pydicom should read the file instead.

    Only Part-10 files (``DICM`` after the preamble) are tried, and only after ``check_pixel_data`` accepted
    the file's structure (dicomsdl trusts lengths and can crash the process on a corrupt file).
    """
    try:
        import dicomsdl
    except ImportError:
        return None
    try:
        with path.open("rb") as fh:
            if fh.read(132)[128:132] != b"DICM":
                return None
        d = dicomsdl.open(str(path))
        if d.getDataElement("PixelData").offset() != pixel_offset:
            return None  # dicomsdl parsed the file differently: pydicom reads (and decodes) it instead
        get = d.getValue if hasattr(d, "getValue") else lambda k: getattr(d, k)
        values = {k: get(k) for k in _HEADER_TAGS}
        ts = str(d.TransferSyntaxUID or "")
    except Exception:  # noqa: BLE001 - anything odd goes to pydicom, which reports it properly
        return None
    rows, cols = values["Rows"], values["Columns"]
    if not rows or not cols:
        return None

    def num(key: str, default: float) -> float:
        v = values[key]
        if isinstance(v, list | tuple):
            v = v[0] if v else None
        try:
            return float(v) if v not in (None, "") else default
        except (TypeError, ValueError):
            return float("nan") if key.startswith("Rescale") else default

    ipp = _float_list(values["ImagePositionPatient"], 3) if values["ImagePositionPatient"] is not None else None
    iop = _float_list(values["ImageOrientationPatient"], 6) if values["ImageOrientationPatient"] is not None \
        else None
    ps = _float_list(values["PixelSpacing"], 2) if values["PixelSpacing"] is not None else None
    instance = values["InstanceNumber"]
    return {
        "path": path,
        "series_uid": str(values["SeriesInstanceUID"] or ""),
        "study_uid": str(values["StudyInstanceUID"] or ""),
        "sop_uid": str(values["SOPInstanceUID"] or ""),
        "description": str(values["SeriesDescription"] or ""),
        "series_number": _int_or_none(values["SeriesNumber"]),
        "modality": str(values["Modality"] or ""),
        "patient_id": str(values["PatientID"] or ""),
        "transfer_syntax": ts,
        "rows": int(rows),
        "cols": int(cols),
        "ipp": ipp,
        "iop": iop,
        "pixel_spacing": tuple(ps.tolist()) if ps is not None else None,
        "instance_number": int(instance) if isinstance(instance, int | float) else None,
        "slope": num("RescaleSlope", 1.0),
        "intercept": num("RescaleIntercept", 0.0),
        "photometric": str(values["PhotometricInterpretation"] or "MONOCHROME2").strip(),
        "bits_stored": int(num("BitsStored", 16)),
        "bits_allocated": int(num("BitsAllocated", 16)),
        "signed": int(num("PixelRepresentation", 0)) == 1,
        "frames": int(num("NumberOfFrames", 1)),
        "samples": int(num("SamplesPerPixel", 1)),
        "thickness": num("SliceThickness", 0.0) or None,
    }


def _read_checked(path: Path, fast: bool) -> dict[str, Any] | str:
    """Header of one file after the pixel-data checks, or why the file is skipped."""
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    if not is_dicom_file(path):
        return "not a DICOM file"
    try:
        summary = check_pixel_data(path)
    except CorruptPixelDataError as err:
        if str(err) == "no PixelData element":
            return "DICOM file without an image (no pixel data)"
        return f"corrupt header or pixel data ({err})"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    # dicomsdl parses natively, so it only sees files whose structure the walk above accepted, and only
    # decodes them if it found the pixel data where the walk did.
    try:
        fast_h = _read_header_dicomsdl(path, summary.pixel_offset) if fast and summary.native_safe else None
        h = fast_h or _read_header(path)
    except (TypeError, ValueError, OverflowError, IndexError, KeyError) as err:
        # a value of the wrong multiplicity or type (e.g. a Columns holding two numbers)
        return f"corrupt header ({type(err).__name__}: {err})"
    if isinstance(h, str):
        return h
    if summary.checked and (h["rows"], h["cols"]) != (summary.rows, summary.cols):
        return f"inconsistent header (Rows/Columns read as {h['rows']}x{h['cols']} and {summary.rows}x{summary.cols})"
    try:  # the same limits on the values the reader will use (the walk cannot reach into deflated files)
        check_layout(h["rows"], h["cols"], h["samples"], h["bits_allocated"], h["bits_stored"], h["frames"])
    except CorruptPixelDataError as err:
        return f"corrupt header or pixel data ({err})"
    h["pixel_checked"] = summary.checked
    h["dicomsdl_ok"] = fast_h is not None or (not fast and summary.native_safe)
    return h


def _scan(path: Path, *, fast: bool = True) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Read every header under ``path`` (a folder or one file). Returns image headers and skipped entries."""
    if require_regular_or_dir(path) == "file":
        files, skipped = [path], []
    else:
        files, skipped = list_folder(path)
        if not files and not skipped:
            raise InputError(path, "folder is empty (no files to read as DICOM)")
    headers = []
    for f in files:
        h = _read_checked(f, fast)
        if isinstance(h, str):
            skipped.append((f, h))
        else:
            headers.append(h)
    if not headers:
        what = "; ".join(f"{p.name}: {why}" for p, why in skipped[:5])
        raise InputError(path, f"no readable DICOM image among {len(files)} file(s) ({what})")
    return headers, skipped


def _group(headers: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for h in headers:
        groups.setdefault(h["series_uid"], []).append(h)
    return groups


def _summary(uid: str, hs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "description": Counter(h["description"] for h in hs).most_common(1)[0][0],
        "modality": Counter(h["modality"] for h in hs).most_common(1)[0][0],
        "n_files": len(hs),
        "transfer_syntaxes": sorted({h["transfer_syntax"] for h in hs}),
        "files": [str(h["path"]) for h in sorted(hs, key=lambda h: h["path"].name)],
    }


def list_series(path: str | Path) -> list[dict[str, Any]]:
    """Every image series in a folder.

    Args:
        path: a folder of DICOM files (or one file).

    Returns:
        One dict per series, largest first: ``uid``, ``description``, ``modality``, ``n_files``,
        ``transfer_syntaxes`` (sorted list) and ``files`` (sorted paths).

    Raises:
        InputError: missing path, empty folder, or no readable DICOM image.
    """
    headers, _ = _scan(Path(path))
    out = [_summary(uid, hs) for uid, hs in _group(headers).items()]
    return sorted(out, key=lambda s: (-s["n_files"], s["uid"]))


def _select(path: Path, groups: dict[str, list[dict[str, Any]]], series: str | None) -> str:
    def listing() -> str:
        return "; ".join(f"uid={s['uid'] or '<empty>'} description={s['description']!r} n_files={s['n_files']}"
                         for s in (_summary(u, hs) for u, hs in groups.items()))

    if series is None:
        if len(groups) == 1:
            return next(iter(groups))
        raise SeriesSelectionError(path, f"{len(groups)} series found, pass series= (uid or description): "
                                         f"{listing()}")
    if series in groups:
        return series
    matches = [u for u, hs in groups.items() if _summary(u, hs)["description"].lower() == series.lower()]
    if len(matches) == 1:
        return matches[0]
    why = "matches several series" if matches else "matches no series uid or description"
    raise SeriesSelectionError(path, f"series {series!r} {why}: {listing()}")


def _output_dtype(hs: list[dict[str, Any]], rescale: bool) -> tuple[np.dtype, bool]:
    """``(dtype to decode into, whether to try int16 after decoding)``."""
    exact = True
    lo_all, hi_all = 0.0, 0.0
    for h in hs:
        bits = h["bits_stored"]
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if h["signed"] else (0, (1 << bits) - 1)
        slope, inter = (h["slope"], h["intercept"]) if rescale else (1.0, 0.0)
        if not (float(slope).is_integer() and float(inter).is_integer()):
            exact = False
        vals = (lo * slope + inter, hi * slope + inter)
        lo_all, hi_all = min(lo_all, *vals), max(hi_all, *vals)
    if exact and lo_all >= -32768 and hi_all <= 32767:
        return np.dtype(np.int16), False
    # Declared range too wide (e.g. BitsStored 16): decode exactly into float32, then keep int16 if it fits.
    return np.dtype(np.float32), exact


def read_series(
    path: str | Path,
    series: str | None = None,
    *,
    workers: int | None = None,
    backend: str = "auto",
    mixed_sizes: str = "error",
) -> Volume:
    """Read one DICOM series from a folder into a ``Volume``.

    Args:
        path: folder of DICOM files (any names, with or without ``.dcm`` or a preamble), or one file.
        series: SeriesInstanceUID or SeriesDescription to pick when the folder holds several series.
        workers: decode processes; default ``min(4, available cores)``, used for every series so that a
            decoder that crashes (segfault, abort) costs only its slice; ``1`` decodes in this process
            (no process start, but a crashing decoder then takes this process down).
        backend: ``"auto"`` (dicomsdl for the verified lossless syntaxes, pydicom otherwise), ``"pydicom"`` or
            ``"dicomsdl"``.
        mixed_sizes: ``"error"`` or ``"majority"`` (keep the most common image size, with a warning).

    Returns:
        ``Volume`` with ``array`` ``(D, H, W)`` sorted along the slice normal, its LPS affine, ``slice_ids``
        and ``meta`` (modality, series_description, study_uid, series_uid, transfer_syntaxes (set), spacing,
        source, warnings, instance_numbers, ...).

    Raises:
        InputError: see the rules table in the module docstring.
        SeriesSelectionError: several series and ``series`` does not pick exactly one.
    """
    if backend not in ("auto", "pydicom", "dicomsdl"):
        raise ValueError(f"backend must be 'auto', 'pydicom' or 'dicomsdl', got {backend!r}")
    if mixed_sizes not in ("error", "majority"):
        raise ValueError(f"mixed_sizes must be 'error' or 'majority', got {mixed_sizes!r}")
    path = Path(path)
    headers, skipped = _scan(path, fast=backend != "pydicom")
    groups = _group(headers)
    uid = _select(path, groups, series)
    hs = sorted(groups[uid], key=lambda h: h["path"].name)
    warns = [f"skipped {p.name}: {why}" for p, why in skipped]
    rescale = Counter(h["modality"] for h in hs).most_common(1)[0][0].upper() != "MR"
    if rescale:
        hs = _drop_bad_rescale(path, hs, warns)

    multi = [h for h in hs if h["frames"] > 1 or h["samples"] != 1]
    if multi:
        raise InputError(multi[0]["path"], "multi-frame or colour DICOM is not a slice series; decode it with "
                                           "spinelab.io.dicom.read_dicom_pixels")
    empty = [k for k, label in (("series_uid", "SeriesInstanceUID"), ("study_uid", "StudyInstanceUID"),
                                ("sop_uid", "SOPInstanceUID")) if any(not h[k] for h in hs)]
    if empty:
        names = {"series_uid": "SeriesInstanceUID", "study_uid": "StudyInstanceUID", "sop_uid": "SOPInstanceUID"}
        warns.append("empty " + ", ".join(names[k] for k in empty) + " in some or all files; grouped as one series")

    slices = [SliceHeader(path=h["path"], rows=h["rows"], cols=h["cols"], ipp=h["ipp"], iop=h["iop"],
                          pixel_spacing=h["pixel_spacing"], instance_number=h["instance_number"],
                          slice_thickness=h["thickness"]) for h in hs]
    keep, size_warns = check_sizes(slices, path, mixed_sizes=mixed_sizes)
    warns += size_warns
    hs, slices = [hs[i] for i in keep], [slices[i] for i in keep]
    geom = sort_and_measure(slices, path)
    if len(slices) > 1:
        dups = find_duplicates(slices, geom.order, slice_normal(slices[0].iop))
        if dups:
            drop = _resolve_duplicates(path, slices, dups, warns)
            hs = [h for i, h in enumerate(hs) if i not in drop]
            slices = [s for i, s in enumerate(slices) if i not in drop]
            geom = sort_and_measure(slices, path)

    modality = Counter(h["modality"] for h in hs).most_common(1)[0][0]
    dtype, try_int16 = _output_dtype(hs, rescale)
    tasks = []
    for slot, i in enumerate(geom.order):
        h = hs[i]
        tasks.append(_decode_pool.SliceTask(
            slot=slot, path=str(h["path"]),
            backend=_choose_backend(backend, h["transfer_syntax"]) if h["dicomsdl_ok"] else "pydicom",
            slope=h["slope"] if rescale else 1.0, intercept=h["intercept"] if rescale else 0.0,
            invert_max=((1 << h["bits_stored"]) - 1) if h["photometric"] == "MONOCHROME1" else None,
            checked=h["pixel_checked"], transfer_syntax=h["transfer_syntax"], allow_dicomsdl=h["dicomsdl_ok"]))
    # Default: worker processes, even for one slice, so a crashing native decoder costs only its slice.
    n_workers = _default_workers() if workers is None else int(workers)
    shape = (len(tasks), hs[0]["rows"], hs[0]["cols"])
    array, errors = _decode_pool.decode_slices(tasks, shape, dtype, workers=n_workers, isolate=workers is None)
    if errors:
        if len(errors) == len(tasks):
            raise InputError(path, f"no slice could be decoded (first: {Path(tasks[errors[0][0]].path).name}: "
                                   f"{errors[0][1]})")
        bad_slots = {s for s, _ in errors}
        for s, e in errors:
            warns.append(f"skipped {Path(tasks[s].path).name}: pixel data could not be decoded ({e})")
        array = np.delete(array, sorted(bad_slots), axis=0)
        kept = [geom.order[s] for s in range(len(tasks)) if s not in bad_slots]
        hs, slices = [hs[i] for i in kept], [slices[i] for i in kept]
        geom = sort_and_measure(slices, path)  # origin / mean step may change when an end slice is lost
    if try_int16 and array.size and np.array_equal(array, np.rint(array)) \
            and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    warns += geom.warnings
    ordered = [hs[i] for i in geom.order]
    vol = Volume(
        array=array,
        affine=geom.affine,
        slice_ids=[slice_id(h["path"]) for h in ordered],
        meta={
            "modality": modality,
            "series_description": ordered[0]["description"],
            "study_uid": ordered[0]["study_uid"],
            "series_uid": uid,
            "series_number": ordered[0]["series_number"],
            "patient_id": ordered[0]["patient_id"],
            "transfer_syntaxes": {h["transfer_syntax"] for h in ordered},
            "spacing": tuple(float(s) for s in np.linalg.norm(geom.affine[:3, :3], axis=0)),
            "source": str(path),
            "warnings": warns,
            "instance_numbers": [h["instance_number"] for h in ordered],
            "rescaled": rescale,
            "photometric": ordered[0]["photometric"],
        },
    )
    for w in warns:
        warnings.warn(f"{path}: {w}", DicomWarning, stacklevel=2)
        log.info("%s: %s", path, w)
    return vol


def _rescale_problem(h: dict[str, Any]) -> str | None:
    slope, inter = h["slope"], h["intercept"]
    if not (np.isfinite(slope) and np.isfinite(inter)):
        return f"RescaleSlope/RescaleIntercept not finite ({slope}, {inter})"
    if not 1 / MAX_ABS_SLOPE <= abs(slope) <= MAX_ABS_SLOPE:
        return f"RescaleSlope {slope:g} outside +-[{1 / MAX_ABS_SLOPE:g}, {MAX_ABS_SLOPE:g}]"
    if abs(inter) > MAX_ABS_INTERCEPT:
        return f"RescaleIntercept {inter:g} beyond +-{MAX_ABS_INTERCEPT:g}"
    return None


def _drop_bad_rescale(path: Path, hs: list[dict[str, Any]], warns: list[str]) -> list[dict[str, Any]]:
    """Slices whose rescale would give a blank, absurd or NaN image are dropped (named); none left: error."""
    keep = []
    for h in hs:
        why = _rescale_problem(h)
        if why:
            warns.append(f"skipped {h['path'].name}: {why}")
        else:
            keep.append(h)
    if not keep:
        raise InputError(path, f"no slice with a usable rescale (first: {hs[0]['path'].name}: "
                               f"{_rescale_problem(hs[0])})")
    return keep


def _resolve_duplicates(path: Path, slices: list[SliceHeader], dups: list[list[int]], warns: list[str]) -> set[int]:
    """Drop identical duplicates (keep the lowest InstanceNumber, then name); raise on differing ones."""
    drop: set[int] = set()
    for group in dups:
        names = ", ".join(slices[i].path.name for i in group)
        arrays = [read_dicom_pixels(slices[i].path) for i in group]
        if not all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays[1:]):
            raise InputError(path, f"duplicate slice positions with different pixels: {names}")
        ranked = sorted(group, key=lambda i: (slices[i].instance_number or 0, slices[i].path.name))
        drop.update(ranked[1:])
        warns.append(f"duplicate slice positions with identical pixels: {names}; kept {slices[ranked[0]].path.name}")
    return drop


def _dicomsdl_available() -> bool:
    try:
        import dicomsdl  # noqa: F401
    except ImportError:
        return False
    return True


def _choose_backend(backend: str, ts: str) -> str:
    if backend == "pydicom":
        return "pydicom"
    if backend == "dicomsdl":
        if not _dicomsdl_available():
            raise InputError(Path("dicomsdl"), "backend='dicomsdl' requested but dicomsdl is not installed")
        return "dicomsdl"
    # Files without file meta (no transfer syntax) go to pydicom, whose force-mode parser guesses the encoding.
    if ts in _decode_pool.DICOMSDL_VERIFIED_SYNTAXES and _dicomsdl_available():
        return "dicomsdl"
    return "pydicom"


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def read_dicom_pixels(path: str | Path, *, rescale: bool = False, backend: str = "pydicom") -> np.ndarray:
    """Decode one DICOM file, single- or multi-frame (e.g. enhanced MR), without any geometry.

    Args:
        path: the DICOM file.
        rescale: apply RescaleSlope/Intercept (result float32) instead of returning stored values.
        backend: ``"pydicom"`` or ``"dicomsdl"`` (the other one is tried if it fails).

    Returns:
        ``(H, W)`` or ``(F, H, W)`` stored values (or rescaled float32).

    Raises:
        InputError: not a DICOM file or undecodable pixel data.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist or is not a file")
    try:
        arr = _decode_pool.decode_with_fallback(path, backend=backend)
    except Exception as err:  # noqa: BLE001 - decoder errors become one typed error naming the file
        raise InputError(path, f"pixel data could not be decoded ({type(err).__name__}: {err})") from err
    if rescale:
        h = _read_header(path)
        if isinstance(h, dict):
            return (arr.astype(np.float32) * np.float32(h["slope"]) + np.float32(h["intercept"])).astype(np.float32)
    return arr
