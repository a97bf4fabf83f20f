"""Study and series ids read from CSV files must name a folder inside the dataset, nothing else."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spinelab.errors import InputError

__all__ = ["check_folder_ids", "is_folder_name"]


def is_folder_name(value: Any) -> bool:
    """True when ``value`` is one plain path component: not empty, not ``.``/``..``, no separator or NUL."""
    text = str(value).strip()
    return bool(text) and text not in (".", "..") and not any(c in text for c in ("/", "\\", "\0")) \
        and not (len(text) > 1 and text[1] == ":")  # a Windows drive, "C:x"


def check_folder_ids(values: Iterable[Any], *, csv: str | Path, column: str) -> None:
    """Refuse the first id that could point outside the dataset (``..``, an absolute path, a separator).

    Args:
        values: the column's values in file order (the first data row is line 2 of the CSV).
        csv: the CSV they come from (named in the error).
        column: the column name (named in the error).

    Raises:
        InputError: naming the CSV, the line and the value.
    """
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and value != value):
            raise InputError(csv, f"line {i + 2}: {column} is empty")
        if not is_folder_name(value):
            raise InputError(csv, f"line {i + 2}: {column} {str(value)!r} is not a folder name inside the "
                                  "dataset (no '/', '\\', '..' or absolute paths)")
