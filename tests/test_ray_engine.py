"""``--engine ray`` gives the local engine's files: ``cache build`` byte for byte, ``predict`` the same records
and a submission equal to 1e-6, with a bad study among good ones, on a local 2-CPU Ray instance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from spinelab import api
from spinelab.io.cache import build_cache
from tests.tasks.fixed_runs import materialize

ray = pytest.importorskip("ray")  # the extra spinelab[ray]; CI installs it (make ray)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance with 2 CPUs for this module, stopped at its end."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 + 2 synthetic RSNA 2022 studies at 64 px, and one test study whose slices are cut short."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    data = generate_cervical_dataset(tmp_path_factory.mktemp("ray") / "data", studies=3, test_studies=2, size=64,
                                     seed=3, workers=1, slices=(28, 32), progress=False)
    good = sorted((data / "test_images").iterdir())[0]
    bad = data / "test_images" / "1.2.826.0.1.3680043.99999"
    shutil.copytree(good, bad)
    for f in bad.iterdir():
        f.write_bytes(f.read_bytes()[:400])  # the DICOM preamble survives: found as a series, fails to decode
    return data


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cache_build_on_ray_writes_the_local_files(ray_instance, dataset: Path, tmp_path: Path) -> None:
    local = build_cache(dataset, tmp_path / "local", workers=1, progress=False)
    remote = build_cache(dataset, tmp_path / "ray", engine="ray", progress=False)
    assert remote == {**local, "report": tmp_path / "ray" / "cache_report.json"}
    assert local["failed"] == 1 and local["done"] == 5
    a, b = _files(tmp_path / "local"), _files(tmp_path / "ray")
    report_a, report_b = (json.loads(x.pop("cache_report.json")) for x in (a, b))
    assert a == b  # every .npy and .json, byte for byte
    for key in ("built", "skipped", "failed", "n_series"):
        assert report_a[key] == report_b[key]
    assert "99999" in report_b["failed"][0]["series"]
    again = build_cache(dataset, tmp_path / "ray", engine="ray", progress=False)
    assert again["skipped"] == 5 and again["failed"] == 1  # a rerun does only what is not done


def _records(out: Path) -> dict[str, dict]:
    records = {}
    for p in sorted((out / "studies").glob("*.json")):
        r = json.loads(p.read_text())
        r.pop("seconds", None)
        r.pop("traceback", None)  # frames of the engine's call stack
        records[p.name] = r
    return records


def test_predict_on_ray_gives_the_local_outputs(ray_instance, dataset: Path, tmp_path: Path) -> None:
    run = materialize("cervical", tmp_path / "run")
    kw = {"model": run, "input": dataset / "test_images", "device": "cpu", "precision": "fp32", "compile": False,
          "tta": False, "progress": False}
    local = api.predict("cervical", out=tmp_path / "local", **kw)
    remote = api.predict("cervical", out=tmp_path / "ray", engine="ray", **kw)
    assert local["counts"] == remote["counts"] and remote["counts"]["failed"] == 1 and remote["studies"] == 3
    a, b = pd.read_csv(local["submission"]), pd.read_csv(remote["submission"])
    assert list(a.row_id) == list(b.row_id)
    assert (a.drop(columns="row_id") - b.drop(columns="row_id")).abs().to_numpy().max() <= 1e-6
    assert _records(tmp_path / "local") == _records(tmp_path / "ray")
    failed = _records(tmp_path / "ray")["1.2.826.0.1.3680043.99999.json"]
    assert failed["status"] == "failed" and failed["error"]
    manifest_a, manifest_b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("local", "ray"))
    assert manifest_a["studies"] == manifest_b["studies"] and manifest_a["model"] == manifest_b["model"]

    # A rerun predicts only what is not done: the good studies' files stay as they were.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "studies").glob("*.json")}
    again = api.predict("cervical", out=tmp_path / "ray", engine="ray", **kw)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "studies").glob("*.json")}
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == ["1.2.826.0.1.3680043.99999.json"]  # the failed study is tried again
    assert again["counts"] == remote["counts"]
    assert pd.read_csv(again["submission"]).equals(b)


def test_an_unknown_engine_is_refused_before_any_work(tmp_path: Path) -> None:
    from spinelab.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown engine 'spark'"):
        build_cache(tmp_path, tmp_path / "c", engine="spark")
    assert not (tmp_path / "c").exists()


def test_predict_on_ray_writes_the_dicom_results_too(ray_instance, dataset: Path, tmp_path: Path) -> None:
    run = materialize("cervical", tmp_path / "run")
    good = sorted((dataset / "test_images").iterdir())[0]
    api.predict("cervical", model=run, input=good, out=tmp_path / "ray", engine="ray", dicom_out=True,
                tta=False, progress=False)
    record = json.loads((tmp_path / "ray" / "studies" / f"{good.name}.json").read_text())
    assert record["dicom_files"] == [f"dicom/{good.name}/seg.dcm", f"dicom/{good.name}/sr.dcm"]
    assert all((tmp_path / "ray" / f).stat().st_size > 0 for f in record["dicom_files"])
