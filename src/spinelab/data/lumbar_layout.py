"""The RSNA 2024 lumbar Kaggle layout on disk: find studies and series, read labels and coordinates.

Layout (real competition files and the synthetic generator alike)::

    DATASET/{train,test}_series_descriptions.csv    study_id,series_id,series_description
    DATASET/{train,test}_images/<study_id>/<series_id>/<instance_number>.dcm
    DATASET/train.csv                               study_id + 25 '{condition}_{level}' columns
    DATASET/train_label_coordinates.csv             study_id,series_id,instance_number,condition,level,x,y

Label values are mapped to integers 0/1/2 (Normal/Mild, Moderate, Severe) and -1 for a blank cell; condition
and level titles ('Left Neural Foraminal Narrowing', 'L4/L5') are re-keyed to the registry's snake_case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from spinelab.data.study_ids import check_folder_ids
from spinelab.errors import InputError
from spinelab.registry import (
    LUMBAR_CONDITION_TITLES,
    LUMBAR_GRADE_NAMES,
    LUMBAR_LEVEL_TITLES,
    LUMBAR_SERIES_TYPES,
    lumbar_columns,
)

__all__ = [
    "LumbarSeries",
    "LumbarStudy",
    "find_lumbar_studies",
    "read_lumbar_labels",
    "read_lumbar_coordinates",
]


@dataclass(frozen=True)
class LumbarSeries:
    """One series folder of a study."""

    study_id: int
    series_id: int
    description: str
    path: Path


@dataclass
class LumbarStudy:
    """A study and its series, in the order of the series-descriptions CSV."""

    study_id: int
    split: str
    series: list[LumbarSeries] = field(default_factory=list)

    def of_type(self, description: str) -> list[LumbarSeries]:
        """Series with this description ('Sagittal T1', 'Sagittal T2/STIR', 'Axial T2'); may be several."""
        return [s for s in self.series if s.description == description]


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, "file not found (is this an RSNA 2024 lumbar dataset folder?)")
    try:
        frame = pd.read_csv(path, dtype={"study_id": "int64"} if "study_id" in columns else None,
                            keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(path, f"cannot parse the CSV ({str(err).splitlines()[0]})") from None
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(path, f"missing columns {missing}; found {list(frame.columns)}")
    return frame


def find_lumbar_studies(dataset_dir: str | Path, split: str = "train") -> list[LumbarStudy]:
    """List the studies of one split with their series folders.

    Args:
        dataset_dir: the dataset folder.
        split: ``"train"`` or ``"test"``.

    Returns:
        Studies sorted by study id.

    Raises:
        InputError: the CSV is missing or malformed, a description is unknown, or series folders listed in
            the CSV are missing or hold no ``.dcm`` file (all such folders are named).
    """
    root = Path(dataset_dir)
    if split not in ("train", "test"):
        raise InputError(root, f"split must be 'train' or 'test', got {split!r}")
    csv = root / f"{split}_series_descriptions.csv"
    frame = _read_csv(csv, ["study_id", "series_id", "series_description"])
    check_folder_ids(frame["series_id"], csv=csv, column="series_id")
    unknown = sorted(set(frame["series_description"]) - set(LUMBAR_SERIES_TYPES))
    if unknown:
        raise InputError(csv, f"unknown series descriptions {unknown}; expected {list(LUMBAR_SERIES_TYPES)}")
    studies: dict[int, LumbarStudy] = {}
    bad: list[str] = []
    for row in frame.itertuples(index=False):
        folder = root / f"{split}_images" / str(row.study_id) / str(row.series_id)
        if not folder.is_dir() or not any(folder.glob("*.dcm")):
            bad.append(str(folder))
            continue
        study = studies.setdefault(int(row.study_id), LumbarStudy(int(row.study_id), split))
        study.series.append(LumbarSeries(int(row.study_id), int(row.series_id), str(row.series_description),
                                         folder))
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise InputError(csv, f"{len(bad)} listed series folder(s) missing or without .dcm files: {shown}")
    return [studies[k] for k in sorted(studies)]


def read_lumbar_labels(path: str | Path) -> pd.DataFrame:
    """Read a train.csv-format label file.

    Args:
        path: ``train.csv`` (or the synthetic ``test_labels.csv``).

    Returns:
        Frame indexed by ``study_id`` with the 25 label columns in registry (sample-submission) order, int8
        values 0/1/2, and -1 for blanks.

    Raises:
        InputError: missing file or columns, or a value that is not a grade name.
    """
    path = Path(path)
    cols = lumbar_columns()
    frame = _read_csv(path, ["study_id", *cols])
    codes = {name: i for i, name in enumerate(LUMBAR_GRADE_NAMES)}
    out = frame.set_index("study_id")[cols]
    bad = sorted({str(v) for v in pd.unique(out.to_numpy().ravel()) if not pd.isna(v) and v not in codes})
    if bad:
        raise InputError(path, f"unknown grade values {bad}; expected {list(LUMBAR_GRADE_NAMES)} or blank")
    return out.apply(lambda col: col.map(codes).fillna(-1).astype("int8"))


def read_lumbar_coordinates(path: str | Path) -> pd.DataFrame:
    """Read ``train_label_coordinates.csv`` and add snake_case ``condition_key`` and ``level_key`` columns.

    Raises:
        InputError: missing file or columns, or an unknown condition/level title.
    """
    path = Path(path)
    frame = _read_csv(path, ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"])
    check_folder_ids(frame["series_id"], csv=path, column="series_id")
    cond_keys = {v: k for k, v in LUMBAR_CONDITION_TITLES.items()}
    level_keys = {v: k for k, v in LUMBAR_LEVEL_TITLES.items()}
    frame["condition_key"] = frame["condition"].map(cond_keys)
    frame["level_key"] = frame["level"].map(level_keys)
    unknown = sorted(set(frame.loc[frame["condition_key"].isna(), "condition"])
                     | set(frame.loc[frame["level_key"].isna(), "level"]))
    if unknown:
        raise InputError(path, f"unknown condition or level names {unknown}")
    return frame
