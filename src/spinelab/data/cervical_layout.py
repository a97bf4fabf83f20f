"""The RSNA 2022 cervical label CSV: the one reader of ``train.csv`` (and of files in its format).

Layout (real competition files and the synthetic generator alike)::

    DATASET/train.csv          StudyInstanceUID,patient_overall,C1,...,C7 (other columns, e.g. fold, kept)
    DATASET/test_labels.csv    the same format for the synthetic test studies
    DATASET/train_images/<StudyInstanceUID>/<slice>.dcm

Study ids are read as text (a UID must not become a float and lose digits) and must be plain folder names
(``study_ids.check_folder_ids``); every label must be 0 or 1. Each problem is one ``InputError`` naming the
file, and the column or the line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spinelab.data.study_ids import check_folder_ids
from spinelab.errors import InputError
from spinelab.registry import CERVICAL_TARGETS

__all__ = ["ID_COLUMN", "read_cervical_labels"]

#: The study id column of the RSNA 2022 CSVs.
ID_COLUMN = "StudyInstanceUID"


def read_cervical_labels(path: str | Path, *, drop: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """A train.csv-format label file: ``StudyInstanceUID`` as text, the eight targets as ``int`` 0/1, other
    columns as written, without the ``drop`` studies (``data.drop_studies``); file order is kept.

    Raises:
        InputError: the file is missing or unreadable, lacks a column, holds an id that is not a folder name or
            that appears twice, or a label that is not 0 or 1 (the first bad line is named).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found: is this an RSNA 2022 dataset folder?")
    try:
        frame = pd.read_csv(path, dtype={ID_COLUMN: str})
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot parse the CSV ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
    missing = [c for c in (ID_COLUMN, *CERVICAL_TARGETS) if c not in frame.columns]
    if missing:
        raise InputError(path, f"missing columns {missing}; found {list(map(str, frame.columns))}")
    check_folder_ids(frame[ID_COLUMN], csv=path, column=ID_COLUMN)
    duplicated = frame[ID_COLUMN].duplicated()
    if duplicated.any():
        line = int(duplicated.to_numpy().argmax()) + 2
        raise InputError(path, f"line {line}: {ID_COLUMN} {frame[ID_COLUMN].iloc[line - 2]!r} appears twice")
    for column in CERVICAL_TARGETS:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise InputError(path, f"line {row + 2}: {column} is {str(frame[column].iloc[row])!r}; labels must be "
                                   "0 or 1")
        frame[column] = values.astype(int)
    return frame[~frame[ID_COLUMN].isin(list(drop))].reset_index(drop=True)
