"""Lumbar prediction: a CT series refused, hospital series without descriptions, the study JSON schema,
--series refused for lumbar."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from spinelab import api
from spinelab.errors import ConfigError

pytestmark = pytest.mark.slow


def _test_studies(dataset: Path) -> list[Path]:
    return sorted((dataset / "test_images").iterdir())


def _set_tags(series: Path, **tags: object) -> None:
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        for k, v in tags.items():
            setattr(ds, k, v)
        ds.save_as(f)


def test_a_ct_series_is_refused_and_the_run_goes_on(tiny_lumbar_run: Path, tiny_lumbar_dataset: Path,
                                                    tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_lumbar_dataset / "test_images", data / "test_images")
    shutil.copy(tiny_lumbar_dataset / "test_series_descriptions.csv", data)
    bad = _test_studies(data)[0]
    series = sorted(d for d in bad.iterdir() if d.is_dir())[0]
    _set_tags(series, Modality="CT")
    result = api.predict("lumbar", model=tiny_lumbar_run, input=data, out=tmp_path / "out", device="cpu",
                         progress=False)
    assert result["counts"]["refused"] == 1 and result["counts"]["failed"] == 0 and result["studies"] == 2
    refused = json.loads((tmp_path / "out" / "studies" / f"{bad.name}.json").read_text())
    assert refused["status"] == "refused" and any("modality CT" in r for r in refused["reasons"])
    assert len(refused["grades"]) == 25  # the prior stands in
    assert len(pd.read_csv(result["submission"])) == 2 * 25


def test_hospital_series_without_descriptions_are_predicted(tiny_lumbar_run: Path, tiny_lumbar_dataset: Path,
                                                            tmp_path: Path) -> None:
    desc = pd.read_csv(tiny_lumbar_dataset / "test_series_descriptions.csv", dtype=str)
    source = _test_studies(tiny_lumbar_dataset)[1]
    study = tmp_path / source.name
    shutil.copytree(source, study)
    timing = {"Sagittal T1": (600.0, 10.0), "Sagittal T2/STIR": (3800.0, 100.0), "Axial T2": (4200.0, 90.0)}
    for row in desc[desc.study_id == source.name].itertuples():
        tr, te = timing[row.series_description]
        _set_tags(study / row.series_id, SeriesDescription="", RepetitionTime=tr, EchoTime=te)
    result = api.predict("lumbar", model=tiny_lumbar_run, input=study, out=tmp_path / "out", device="cpu",
                         progress=False)
    assert result["counts"]["refused"] == 0 and result["counts"]["failed"] == 0
    out = json.loads((tmp_path / "out" / "studies" / f"{source.name}.json").read_text())
    used = {name for names in out["series"].values() for name in names}  # the first of two sag T2s only
    assert set(out["input"]["kinds_inferred"]) == used and len(used) == 3
    assert out["missing_series"] == [] and out["schema_version"] == 1 and "points" in out["conventions"]
    for rel, digest in out["model"]["weights_sha256"].items():
        assert digest == hashlib.sha256((tiny_lumbar_run / rel).read_bytes()).hexdigest()
    assert len(out["model"]["weights_sha256"]) == 4  # three point stages and the grading stage


def test_series_option_is_cervical_only(tiny_lumbar_run: Path, tiny_lumbar_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--series applies to cervical"):
        api.predict("lumbar", model=tiny_lumbar_run, input=tiny_lumbar_dataset, out=tmp_path, series="Axial T2")
    assert not tmp_path.joinpath("manifest.json").exists()
