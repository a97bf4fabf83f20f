"""Find the studies to predict in an input path: a Kaggle dataset, a folder of studies, or one study."""

from __future__ import annotations

from pathlib import Path

from spinelab.errors import InputError

__all__ = ["find_input_studies", "has_dicom_files", "label_file"]


def has_dicom_files(folder: Path) -> bool:
    """True when ``folder`` directly holds at least one DICOM file (by content, not by suffix)."""
    for f in sorted(folder.iterdir())[:5]:
        if f.is_file():
            if f.suffix.lower() == ".dcm":
                return True
            try:
                with f.open("rb") as fh:
                    if fh.read(132)[128:132] == b"DICM":
                        return True
            except OSError:
                continue
    return False


def find_input_studies(path: str | Path, *, nested: bool = False) -> tuple[str, list[tuple[str, Path]]]:
    """Return ``(split, [(study_id, folder), ...])`` for what is on disk at ``path``.

    Args:
        path: a Kaggle-layout dataset (its ``test_images/`` is preferred over ``train_images/``), a folder of
            study folders, or one study folder.
        nested: a study folder holds series folders (RSNA 2024) rather than DICOM files (RSNA 2022).

    Returns:
        ``split`` is ``"test"``/``"train"`` for a dataset, ``"folder"`` for a folder of studies and
        ``"study"`` for a single study.

    Raises:
        InputError: the path does not exist or holds no study.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "input must be a dataset folder or a study folder, and it does not exist")
    for split in ("test", "train"):
        images = path / f"{split}_images"
        if images.is_dir():
            studies = [(d.name, d) for d in sorted(images.iterdir()) if d.is_dir()]
            if studies:
                return split, studies
    if _is_study(path, nested):
        return "study", [(path.name, path)]
    studies = [(d.name, d) for d in sorted(path.iterdir()) if d.is_dir() and _is_study(d, nested)]
    if studies:
        return "folder", studies
    raise InputError(path, "no study found: expected test_images/ or train_images/, study folders, or "
                           + ("series folders of DICOM files" if nested else "DICOM files"))


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
