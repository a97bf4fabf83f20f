"""Find the studies to predict in an input path (a Kaggle dataset, a folder of studies, one study folder, one
NIfTI or DICOM file) and read one of them into a ``Volume``."""

from __future__ import annotations

from pathlib import Path

from spinelab.errors import InputError, SeriesSelectionError
from spinelab.io.files import is_dicom_file
from spinelab.io.volume import Volume

__all__ = ["find_input_studies", "has_dicom_files", "label_file", "read_study_volume",
           "study_id_of_file"]


def study_id_of_file(path: Path) -> str:
    """The study id of a one-file study: its name without ``.nii.gz`` / ``.nii`` / ``.dcm``."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_nifti(path: Path) -> bool:
    from spinelab.io.nifti import is_nifti_file

    return path.is_file() and is_nifti_file(path)


def read_study_volume(path: str | Path, *, series: str | None = None) -> Volume:
    """One study as a ``Volume``: a NIfTI file (CT in HU, read as an image, never as labels), a DICOM file, or
    a DICOM folder (``series``: the SeriesInstanceUID or SeriesDescription to pick among several).

    Raises:
        InputError: unreadable; SeriesSelectionError: several series and ``series`` picks none of them.
    """
    from spinelab.io.dicom import read_series
    from spinelab.io.nifti import read_nifti

    path = Path(path)
    if _is_nifti(path):
        return read_nifti(path, is_label=False)
    try:
        return read_series(path, series)
    except SeriesSelectionError as err:  # the reader speaks to Python callers; name the CLI option too
        raise SeriesSelectionError(err.path, err.problem.replace("pass series=", "pass --series (series=)")
                                   ) from err


def has_dicom_files(folder: Path) -> bool:
    """True when ``folder`` directly holds at least one DICOM file (by content, as the reader and the cache
    decide: ``io.files.is_dicom_file``)."""
    return any(is_dicom_file(f) for f in sorted(folder.iterdir()))


def find_input_studies(path: str | Path, *, nested: bool = False) -> tuple[str, list[tuple[str, Path]]]:
    """Return ``(split, [(study_id, folder), ...])`` for what is on disk at ``path``.

    Args:
        path: a Kaggle-layout dataset (its ``test_images/`` is preferred over ``train_images/``), a folder of
            study folders, or one study folder.
        nested: a study folder holds series folders (RSNA 2024) rather than DICOM files (RSNA 2022).

    Returns:
        ``split`` is ``"test"``/``"train"`` for a dataset, ``"folder"`` for a folder of studies (study folders
        and, for single-series tasks, NIfTI files), ``"study"`` for a single study folder and ``"file"`` for one
        NIfTI or DICOM file (its id is the name without the suffix).

    Raises:
        InputError: the path does not exist or holds no study.
    """
    path = Path(path)
    if path.is_file():
        if nested:
            raise InputError(path, "a lumbar study is a folder of series folders, not one file")
        if _is_nifti(path) or is_dicom_file(path):
            return "file", [(study_id_of_file(path), path)]
        raise InputError(path, "neither a NIfTI file nor a DICOM file (nor a dataset or study folder)")
    if not path.is_dir():
        raise InputError(path, "does not exist (expected a dataset folder, a study folder, or a NIfTI or "
                               "DICOM file)")
    for split in ("test", "train"):
        images = path / f"{split}_images"
        if images.is_dir():
            studies = [(d.name, d) for d in sorted(images.iterdir()) if d.is_dir()]
            if studies:
                return split, studies
    if _is_study(path, nested):
        return "study", [(path.name, path)]
    studies = [(d.name, d) for d in sorted(path.iterdir()) if d.is_dir() and _is_study(d, nested)]
    if not nested:
        studies += [(study_id_of_file(f), f) for f in sorted(path.iterdir())
                    if not f.name.startswith(".") and f.name.lower().endswith((".nii", ".nii.gz")) and _is_nifti(f)]
    ids = [s for s, _ in studies]
    clashes = sorted({s for s in ids if ids.count(s) > 1})
    if clashes:  # one JSON per study id: a folder and a NIfTI file of the same name would overwrite each other
        raise InputError(path, f"two studies share the id {clashes[0]!r} (a folder and a NIfTI file); rename one")
    if studies:
        return "folder", studies
    raise InputError(path, "no study found: expected test_images/ or train_images/, study folders, or "
                           + ("series folders of DICOM files" if nested else "DICOM or NIfTI files"))


def _is_study(folder: Path, nested: bool) -> bool:
    if not nested:
        return has_dicom_files(folder)
    subdirs = [d for d in folder.iterdir() if d.is_dir()]
    return bool(subdirs) and any(has_dicom_files(d) for d in subdirs)


def label_file(input: Path, split: str, labels: str | Path | None) -> Path | None:
    """The labels to evaluate predictions against: ``labels`` when given, else ``train.csv`` for a train
    split or the synthetic ``test_labels.csv`` for a test split, when present."""
    if labels is not None:
        if not Path(labels).is_file():
            raise InputError(labels, "labels file not found")
        return Path(labels)
    candidate = {"train": input / "train.csv", "test": input / "test_labels.csv"}.get(split)
    return candidate if candidate is not None and candidate.is_file() else None
