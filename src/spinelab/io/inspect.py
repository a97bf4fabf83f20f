"""``spinelab info``: describe what a DICOM folder or a NIfTI file holds, as a dict and as a rich table.

The input type is decided from what is on disk (a folder holding DICOM files, or a file with a NIfTI header),
never from the suffix alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.errors import InputError, SeriesSelectionError
from spinelab.io.volume import Volume

__all__ = ["describe", "render_description"]

_MAX_LISTED_LABELS = 200


def _volume_summary(vol: Volume) -> dict[str, Any]:
    arr = np.asarray(vol.array)
    out: dict[str, Any] = {
        "axes": "spinelab arrays are (slice, row, column)",
        "shape": list(vol.shape),
        "dtype": str(arr.dtype),
        "spacing": [round(s, 6) for s in vol.spacing],
        "orientation": vol.orientation,
        "origin_lps": [round(float(v), 4) for v in vol.affine[:3, 3]],
        "value_range": [float(arr.min()), float(arr.max())] if arr.size else None,
    }
    if arr.dtype.kind in "iub" and arr.size:
        labels = np.unique(arr)
        if len(labels) <= _MAX_LISTED_LABELS:
            out["labels"] = [int(v) for v in labels]
    return out


def describe(path: str | Path, *, series: str | None = None) -> dict[str, Any]:
    """What a DICOM folder or NIfTI file holds.

    Args:
        path: a folder of DICOM files, or a ``.nii``/``.nii.gz`` file (checked by content).
        series: for a folder holding several series, which one to read (uid or description).

    Returns:
        For DICOM: ``kind='dicom'``, ``series`` (uid, description, modality, n_files, transfer_syntaxes each),
        and for the chosen/only series ``selected`` (shape, dtype, spacing, orientation, value_range, warnings,
        slice ids range). For NIfTI: ``kind='nifti'`` with shape, dtype, spacing, orientation, value_range and
        ``labels`` for integer data.

    Raises:
        InputError: neither a DICOM folder nor a NIfTI file.
    """
    from spinelab.io.dicom import list_series, read_series
    from spinelab.io.files import is_dicom_file, require_regular_or_dir
    from spinelab.io.nifti import is_nifti_file, read_nifti

    path = Path(path)
    # A device or FIFO is refused here, never opened; a DICOM file goes the DICOM way, as read_series takes it.
    if require_regular_or_dir(path) == "file" and not is_dicom_file(path):
        if not is_nifti_file(path):
            raise InputError(path, "not a NIfTI file, not a DICOM file and not a folder of DICOM files")
        vol = read_nifti(path)
        summary = _volume_summary(vol)
        # spinelab's (slice, row, column) is the file's (k, j, i): show nibabel's order beside it
        summary["axes"] += " = nibabel (k, j, i)"
        nib_order = {"nibabel_shape": summary["shape"][::-1], "nibabel_orientation": vol.orientation[::-1]}
        return {"path": str(path), "kind": "nifti", "is_label": vol.is_label,
                "dtype_on_disk": vol.meta.get("dtype_on_disk"), **summary, **nib_order}
    try:
        found = list_series(path)
    except InputError as err:
        raise InputError(path, f"not a DICOM file or folder of DICOM files ({err.problem})") from err
    desc: dict[str, Any] = {
        "path": str(path),
        "kind": "dicom",
        "series": [{k: s[k] for k in ("uid", "description", "modality", "n_files", "transfer_syntaxes")}
                   for s in found],
        "selected": None,
    }
    if series is None and len(found) > 1:
        desc["note"] = "several series: pass --series UID|DESCRIPTION for shape, spacing and warnings"
        return desc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported in the description instead
            vol = read_series(path, series)
    except SeriesSelectionError:
        raise
    summary = _volume_summary(vol)
    summary.pop("labels", None)  # DICOM images: a value range, not a label list
    desc["selected"] = {
        "uid": vol.meta.get("series_uid"),
        "description": vol.meta.get("series_description"),
        "modality": vol.meta.get("modality"),
        **summary,
        "slice_ids": [vol.slice_ids[0], vol.slice_ids[-1]] if vol.slice_ids else [],
        "warnings": list(vol.meta.get("warnings", [])),
    }
    return desc


def render_description(desc: dict[str, Any], console: Any) -> None:
    """Print a ``describe`` result as rich tables to ``console`` (a ``rich.console.Console``)."""
    from rich.table import Table

    console.print(f"[bold]{desc['path']}[/] ({desc['kind']})")
    if desc["kind"] == "dicom":
        table = Table("series uid", "description", "modality", "files", "transfer syntaxes")
        for s in desc["series"]:
            table.add_row(s["uid"] or "<empty>", s["description"], s["modality"], str(s["n_files"]),
                          ", ".join(s["transfer_syntaxes"]))
        console.print(table)
        if desc.get("note"):
            console.print(f"[yellow]{desc['note']}[/]")
        body = desc.get("selected")
    else:
        body = desc
    if not body:
        return
    table = Table("property", "value")
    for key in ("axes", "shape", "dtype", "spacing", "orientation", "nibabel_shape", "nibabel_orientation",
                "origin_lps", "value_range", "labels", "slice_ids"):
        if key in body:
            table.add_row(key, str(body[key]))
    console.print(table)
    for w in body.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
