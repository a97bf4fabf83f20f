"""Tests for the RSNA 2024 layout helpers, on a tiny synthetic dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from spinelab.data.lumbar_layout import find_lumbar_studies, read_lumbar_coordinates, read_lumbar_labels
from spinelab.data.synthetic.lumbar import generate_lumbar_dataset, read_lumbar_truth
from spinelab.errors import InputError
from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_SERIES_TYPES, lumbar_columns


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_lumbar_dataset(tmp_path_factory.mktemp("layout"), studies=3, test_studies=1, size=32,
                                   seed=0, workers=1, progress=False)


def test_find_studies(dataset: Path) -> None:
    train = find_lumbar_studies(dataset, "train")
    test = find_lumbar_studies(dataset, "test")
    assert len(train) == 3 and len(test) == 1
    assert [s.study_id for s in train] == sorted(s.study_id for s in train)
    for study in train + test:
        for kind in LUMBAR_SERIES_TYPES:
            assert study.of_type(kind), (study.study_id, kind)
        for series in study.series:
            assert series.path.is_dir() and series.path.name == str(series.series_id)


def test_labels_match_truth(dataset: Path) -> None:
    labels = read_lumbar_labels(dataset / "train.csv")
    assert list(labels.columns) == lumbar_columns()
    for study_id, row in labels.iterrows():
        truth = read_lumbar_truth(dataset, study_id)["points"]
        for (cond, level), point in truth.items():
            expected = point["grade"] if point["labelled"] else -1
            assert row[f"{cond}_{level}"] == expected


def test_coordinates_rekeyed(dataset: Path) -> None:
    coords = read_lumbar_coordinates(dataset / "train_label_coordinates.csv")
    assert set(coords["condition_key"]) <= set(LUMBAR_CONDITIONS)
    assert coords["level_key"].str.match(r"^l\d_[ls]\d$").all()


def test_missing_series_folder_is_named(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    first = find_lumbar_studies(copy, "train")[0].series[0]
    shutil.rmtree(first.path)
    with pytest.raises(InputError, match=str(first.series_id)):
        find_lumbar_studies(copy, "train")
    with pytest.raises(InputError, match="file not found"):
        find_lumbar_studies(tmp_path / "nowhere", "train")


def test_bad_label_value(tmp_path: Path) -> None:
    frame = pd.DataFrame({"study_id": [1], **{c: ["Normal/Mild"] for c in lumbar_columns()}})
    frame.iloc[0, 3] = "Bad"
    frame.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(InputError, match="unknown grade values"):
        read_lumbar_labels(tmp_path / "train.csv")


def test_series_id_outside_the_dataset_is_refused(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    desc = pd.read_csv(copy / "train_series_descriptions.csv", dtype=str)
    desc.loc[1, "series_id"] = "../../../tmp"
    desc.to_csv(copy / "train_series_descriptions.csv", index=False)
    with pytest.raises(InputError, match=r"train_series_descriptions\.csv: line 3: series_id '\.\./\.\./\.\./tmp'"):
        find_lumbar_studies(copy, "train")
    coords = pd.read_csv(copy / "train_label_coordinates.csv", dtype=str)
    coords.loc[0, "series_id"] = "/etc"
    coords.to_csv(copy / "train_label_coordinates.csv", index=False)
    with pytest.raises(InputError, match=r"train_label_coordinates\.csv: line 2: series_id '/etc'"):
        read_lumbar_coordinates(copy / "train_label_coordinates.csv")
