"""Tests for the RSNA 2024 CSV readers, on a tiny synthetic dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from spinelab.data.lumbar_layout import read_descriptions, read_lumbar_coordinates, read_lumbar_labels
from spinelab.data.synthetic.lumbar import generate_lumbar_dataset, read_lumbar_truth
from spinelab.errors import InputError
from spinelab.metrics import lumbar_grade_matrix
from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_LEVELS, LUMBAR_SERIES_TYPES, lumbar_columns


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_lumbar_dataset(tmp_path_factory.mktemp("layout"), studies=3, test_studies=1, size=32,
                                   seed=0, workers=1, progress=False)


def test_descriptions_list_every_series_folder_as_text(dataset: Path) -> None:
    for split, n in (("train", 3), ("test", 1)):
        desc = read_descriptions(dataset, split)
        assert desc is not None and desc.study_id.nunique() == n
        assert set(desc.series_description) == set(LUMBAR_SERIES_TYPES)
        for row in desc.itertuples(index=False):
            assert isinstance(row.series_id, str)
            assert (dataset / f"{split}_images" / row.study_id / row.series_id).is_dir()
    assert read_descriptions(dataset / "nowhere", "train") is None  # hospital data: no table


def test_labels_are_read_as_written_and_grade_like_the_truth(dataset: Path) -> None:
    frame = read_lumbar_labels(dataset / "train.csv")
    grades = pd.DataFrame(lumbar_grade_matrix(frame), index=frame.study_id, columns=lumbar_columns())
    assert frame.study_id.map(type).eq(str).all()
    for study_id, row in grades.iterrows():
        truth = read_lumbar_truth(dataset, study_id)["points"]
        for (cond, level), point in truth.items():
            expected = point["grade"] if point["labelled"] else -1
            assert row[f"{cond}_{level}"] == expected
    dropped = read_lumbar_labels(dataset / "train.csv", drop=[frame.study_id[0]])
    assert list(dropped.study_id) == list(frame.study_id[1:])


def test_coordinates_rekeyed(dataset: Path) -> None:
    coords = read_lumbar_coordinates(dataset / "train_label_coordinates.csv")
    assert len(coords) and set(coords["condition"]) <= set(LUMBAR_CONDITIONS)
    assert set(coords["level"]) <= set(LUMBAR_LEVELS)
    assert read_lumbar_coordinates(dataset / "absent.csv").empty


def test_missing_or_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="train.csv: not found"):
        read_lumbar_labels(tmp_path / "train.csv")
    (tmp_path / "train.csv").write_text("id,x\n1,2\n")
    with pytest.raises(InputError, match=r"train.csv: missing columns \['study_id'\]"):
        read_lumbar_labels(tmp_path / "train.csv")
    (tmp_path / "train_series_descriptions.csv").write_text("study_id,series_id\n1,2\n")
    with pytest.raises(InputError, match=r"missing columns \['series_description'\]"):
        read_descriptions(tmp_path, "train")


def test_bad_label_value(tmp_path: Path) -> None:
    frame = pd.DataFrame({"study_id": [1], **{c: ["Normal/Mild"] for c in lumbar_columns()}})
    frame.iloc[0, 3] = "Bad"
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(InputError, match="unknown grade"):
        lumbar_grade_matrix(read_lumbar_labels(tmp_path / "train.csv"), source=tmp_path / "train.csv")


def test_series_id_outside_the_dataset_is_refused(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    desc = pd.read_csv(copy / "train_series_descriptions.csv", dtype=str)
    desc.loc[1, "series_id"] = "../../../tmp"
    desc.to_csv(copy / "train_series_descriptions.csv", index=False)
    with pytest.raises(InputError, match=r"train_series_descriptions\.csv: line 3: series_id '\.\./\.\./\.\./tmp'"):
        read_descriptions(copy, "train")
    coords = pd.read_csv(copy / "train_label_coordinates.csv", dtype=str)
    coords.loc[0, "series_id"] = "/etc"
    coords.to_csv(copy / "train_label_coordinates.csv", index=False)
    with pytest.raises(InputError, match=r"train_label_coordinates\.csv: line 2: series_id '/etc'"):
        read_lumbar_coordinates(copy / "train_label_coordinates.csv")
