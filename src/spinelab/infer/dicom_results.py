"""A study's results as DICOM a radiology system reads: a SEG of the vertebrae and a Comprehensive 3D SR.

``write_dicom_results(result, study, out)`` is the one entry (``predict --dicom-out``, the service and the
PACS node call it). Cervical: the SEG holds the vertebra mask when the route made one (seg3d:
``result.attachments["labels"]``), else the localised vertebra ranges (slice range x crop box on the
canonical grid, the slices route's ``vertebra_ranges`` and ``crop_box``); the SR gives each vertebra's fracture
probability, referencing its segment, and the patient's. Lumbar: the SR of the grades per condition and level.
Only for DICOM input: a NIfTI study has no source frames to reference (a warning, nothing written).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spinelab.errors import InputError
from spinelab.infer.result import StudyResult
from spinelab.io.atomic import atomic_path
from spinelab.io.files import is_dicom_file
from spinelab.registry import VERTEBRAE

__all__ = ["write_dicom_results", "SEG_FILE", "SR_FILE", "DICOM_DIR"]

log = logging.getLogger("spinelab")

SEG_FILE, SR_FILE = "seg.dcm", "sr.dcm"
#: where ``predict --dicom-out`` puts each study's files: ``OUT/dicom/<study id>/``
DICOM_DIR = "dicom"
_SEG3D_NAMES = {**{i + 1: v for i, v in enumerate(VERTEBRAE)}, 8: "T1"}


def _save(dataset: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path


def _dicom_folders(study: Path) -> list[Path]:
    """The folders (or the one file) of DICOM images of a study: the study folder itself when it holds files,
    else its sub-folders that do (a lumbar study's series)."""
    if study.is_file():
        return [study] if is_dicom_file(study) else []
    if any(is_dicom_file(f) for f in study.iterdir() if f.is_file()):
        return [study]
    return [d for d in sorted(study.iterdir()) if d.is_dir() and any(is_dicom_file(f) for f in d.iterdir()
                                                                       if f.is_file())]


def write_dicom_results(result: StudyResult, study: str | Path, out: str | Path, *,
                        series: str | None = None) -> list[Path]:
    """Write ``out/seg.dcm`` (cervical) and ``out/sr.dcm`` for one predicted study.

    Args:
        result: the study's prediction (``ok`` or ``warning``; a refused or failed study gets nothing: its
            numbers are the prior, not a reading of the images).
        study: the study as given to the predictor (a DICOM folder or file; a NIfTI file gets a warning).
        out: the study's output folder (created).
        series: the series option the study was predicted with (cervical).

    Returns:
        The files written (none for a NIfTI, refused or failed study).

    Raises:
        InputError: the source series cannot be referenced (e.g. empty UIDs).
    """
    study, out = Path(study), Path(out)
    if result.status in ("refused", "failed"):
        log.info("%s: %s study, no DICOM results", result.study, result.status)
        return []
    folders = _dicom_folders(study)
    if not folders:
        log.warning("%s: not a DICOM input (%s): no DICOM SEG or SR is written", result.study, study.name)
        return []
    out.mkdir(parents=True, exist_ok=True)
    if result.grades is not None:
        from spinelab.io.dicom_seg import read_source_series
        from spinelab.io.dicom_sr import build_lumbar_sr

        sources = [read_source_series(f) for f in folders]
        return [_save(build_lumbar_sr(result, sources), out / SR_FILE)]
    return _write_cervical(result, study, out, series=series)


def _write_cervical(result: StudyResult, study: Path, out: Path, *, series: str | None) -> list[Path]:
    from spinelab.io.dicom_seg import build_vertebra_seg, ranges_label_map, read_source_series
    from spinelab.io.dicom_sr import build_cervical_sr

    attached = result.attachments.get("labels")
    extra = result.model_extra or {}
    if attached is not None:
        labels, series_uid, names = attached, result.attachments.get("series_uid"), _SEG3D_NAMES
        algorithm, description = "seg3d", "spinelab vertebra segmentation"
    else:
        from spinelab.infer.studies import read_study_volume
        from spinelab.tasks.cervical.studies import prepare_cervical_volume

        grid = prepare_cervical_volume(read_study_volume(study, series=series))
        labels = ranges_label_map(grid, extra.get("vertebra_ranges") or {}, extra.get("crop_box"), VERTEBRAE)
        series_uid, names = grid.meta.get("series_uid"), dict(enumerate(VERTEBRAE, start=1))
        algorithm, description = "vertebra ranges", "spinelab vertebra ranges (slices x crop box)"
    source = read_source_series(study, series_uid)
    written = []
    try:
        seg = build_vertebra_seg(labels, source, names, algorithm=algorithm, description=description)
    except InputError as err:
        log.warning("%s: no DICOM SEG: %s", result.study, err)
        seg = None
    else:
        written.append(_save(seg, out / SEG_FILE))
    written.append(_save(build_cervical_sr(result, source, seg, algorithm=algorithm), out / SR_FILE))
    return written
