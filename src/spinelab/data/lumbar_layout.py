"""The RSNA 2024 lumbar CSVs: the one reader of each (series descriptions, grades, label coordinates).

Layout (real competition files and the synthetic generator alike)::

    DATASET/{train,test}_series_descriptions.csv    study_id,series_id,series_description
    DATASET/{train,test}_images/<study_id>/<series_id>/<instance_number>.dcm
    DATASET/train.csv                               study_id + 25 '{condition}_{level}' columns
    DATASET/train_label_coordinates.csv             study_id,series_id,instance_number,condition,level,x,y

Ids are read as text (they name folders) and must be plain folder names (``study_ids.check_folder_ids``), so no
CSV row can point a reader outside the dataset. Grades stay as written (``metrics.lumbar_grade_matrix`` turns
them into 0/1/2 and -1); condition and level titles ('Left Neural Foraminal Narrowing', 'L4/L5') are re-keyed
to the registry's snake_case.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spinelab.data.study_ids import check_folder_ids
from spinelab.errors import InputError
from spinelab.registry import LUMBAR_CONDITION_TITLES, LUMBAR_LEVEL_TITLES

__all__ = [
    "COORDINATE_COLUMNS",
    "CONDITION_BY_TITLE",
    "LEVEL_BY_TITLE",
    "read_descriptions",
    "read_lumbar_labels",
    "read_lumbar_coordinates",
]

#: The columns of ``train_label_coordinates.csv``.
COORDINATE_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
#: Registry condition / level key of a lower-cased title.
CONDITION_BY_TITLE = {v.lower(): k for k, v in LUMBAR_CONDITION_TITLES.items()}
LEVEL_BY_TITLE = {v.lower(): k for k, v in LUMBAR_LEVEL_TITLES.items()}


def _read_csv(path: Path, columns: list[str], dtype: type | dict[str, type]) -> pd.DataFrame:
    """The CSV with ``columns`` present, or an ``InputError`` naming the file and the problem."""
    try:
        frame = pd.read_csv(path, dtype=dtype)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot parse the CSV ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(path, f"missing columns {missing}; found {list(frame.columns)}")
    return frame


def read_descriptions(dataset_dir: str | Path, split: str) -> pd.DataFrame | None:
    """``{split}_series_descriptions.csv`` as strings, or ``None`` when the file is absent (hospital data).

    Raises:
        InputError: the file exists but cannot be read, lacks the Kaggle columns, or holds an id that is not a
            folder name.
    """
    path = Path(dataset_dir) / f"{split}_series_descriptions.csv"
    if not path.is_file():
        return None
    frame = _read_csv(path, ["study_id", "series_id", "series_description"], str)
    for column in ("study_id", "series_id"):
        check_folder_ids(frame[column], csv=path, column=column)
    return frame


def read_lumbar_labels(path: str | Path, *, drop: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """A train.csv-format label file as written (``study_id`` as text), without the ``drop`` studies.

    Args:
        path: ``train.csv`` (or the synthetic ``test_labels.csv``).
        drop: study ids to leave out (``data.drop_studies``).

    Raises:
        InputError: the file is missing or unreadable, has no ``study_id`` column, or a study id is not a
            folder name. Grade values and the 25 columns are checked by ``metrics.lumbar_grade_matrix``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found: is this an RSNA 2024 dataset folder?")
    frame = _read_csv(path, ["study_id"], {"study_id": str})
    check_folder_ids(frame["study_id"], csv=path, column="study_id")
    return frame[~frame.study_id.isin(list(drop))].reset_index(drop=True)


def read_lumbar_coordinates(path: str | Path) -> pd.DataFrame:
    """``train_label_coordinates.csv`` with ids as text and ``condition`` / ``level`` as registry keys.

    Rows whose condition or level is none of the competition's are left out; an absent file gives an empty
    table (a dataset without point labels).

    Raises:
        InputError: the file cannot be read, lacks a column, or holds an id that is not a folder name.
    """
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=COORDINATE_COLUMNS)
    frame = _read_csv(path, COORDINATE_COLUMNS, {"study_id": str, "series_id": str})
    for column in ("study_id", "series_id"):
        check_folder_ids(frame[column], csv=path, column=column)
    frame["condition"] = frame.condition.astype(str).str.lower().map(CONDITION_BY_TITLE)
    frame["level"] = frame.level.astype(str).str.lower().map(LEVEL_BY_TITLE)
    return frame.dropna(subset=["condition", "level"]).reset_index(drop=True)
