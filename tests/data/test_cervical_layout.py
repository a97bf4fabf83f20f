"""The one reader of the RSNA 2022 train.csv: the real file with its folds, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from spinelab.data.cervical_layout import read_cervical_labels
from spinelab.errors import InputError
from spinelab.registry import CERVICAL_TARGETS


def test_the_real_train_csv_with_folds_reads_as_text_ids_and_int_labels(rsna_labels: Path) -> None:
    path = rsna_labels / "darraghdog__RSNA22" / "train_folded_v01.csv"
    labels = read_cervical_labels(path)
    assert len(labels) == 2019 and labels.StudyInstanceUID.is_unique
    assert labels.StudyInstanceUID.map(type).eq(str).all()
    assert labels.StudyInstanceUID.iloc[0] == "1.2.826.0.1.3680043.6200"  # not a float, no digits lost
    assert all(labels[t].dtype.kind == "i" and set(labels[t]) <= {0, 1} for t in CERVICAL_TARGETS)
    assert "fold" in labels.columns and labels.patient_overall.sum() == 961
    dropped = read_cervical_labels(path, drop=["1.2.826.0.1.3680043.6200"])
    assert len(dropped) == 2018 and "1.2.826.0.1.3680043.6200" not in set(dropped.StudyInstanceUID)


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _row(uid: str, **labels: object) -> dict:
    return {"StudyInstanceUID": uid, **dict.fromkeys(CERVICAL_TARGETS, 0), **labels}


@pytest.mark.parametrize(("rows", "message"), [
    ([_row("1.2.3", C3=2)], r"train\.csv: line 2: C3 is '2'; labels must be 0 or 1"),
    ([_row("1.2.3"), _row("1.2.4", C5="yes")], r"line 3: C5 is 'yes'"),
    ([_row("1.2.3"), _row("1.2.3")], r"line 3: StudyInstanceUID '1\.2\.3' appears twice"),
    ([_row("../etc")], r"line 2: StudyInstanceUID '\.\./etc' is not a folder name"),
    ([{"StudyInstanceUID": "1.2.3", "C1": 0}], r"missing columns \['C2', 'C3', .*'patient_overall'\]"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_problem(tmp_path: Path, rows: list[dict],
                                                                  message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        read_cervical_labels(_write(tmp_path, rows))
    assert "\n" not in str(err.value) and str(tmp_path / "train.csv") in str(err.value)


def test_a_missing_or_unparsable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found: is this an RSNA 2022 dataset folder"):
        read_cervical_labels(tmp_path / "train.csv")
    (tmp_path / "train.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="cannot parse the CSV"):
        read_cervical_labels(tmp_path / "train.csv")
