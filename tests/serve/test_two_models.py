"""Two models of two tasks behind one service: each job goes to the model it names, lumbar grades included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.conftest import wait_job, zip_folder


@pytest.fixture(scope="module")
def two_models(tiny_cervical_run: Path, tiny_lumbar_run: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from spinelab.serve.app import create_app
    from spinelab.serve.server import build_service

    service = build_service([tiny_cervical_run, tiny_lumbar_run], jobs_dir=tmp_path_factory.mktemp("jobs2"),
                            threads=1)
    with TestClient(create_app(service)) as client:
        deadline = time.monotonic() + 180
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health").json()
            time.sleep(0.2)
        yield client


def test_models_list_both_tasks_and_a_job_must_name_its_model(two_models: Any, study_zip: Path) -> None:
    models = {m["name"]: (m["task"], m["route"]) for m in two_models.get("/v1/models").json()}
    assert sorted(models.values()) == [("cervical", "slices"), ("lumbar", "points")]
    with open(study_zip, "rb") as f:
        answer = two_models.post("/v1/jobs", files={"file": ("s.zip", f, "application/zip")})
    assert answer.status_code == 400 and "several models" in answer.json()["detail"]


def test_a_lumbar_study_round_trip_equals_spinelab_predict(two_models: Any, tiny_lumbar_run: Path,
                                                           tiny_lumbar_dataset: Path, tmp_path: Path) -> None:
    from spinelab import api
    from spinelab.infer.batch import read_study_results

    study = sorted((tiny_lumbar_dataset / "test_images").iterdir())[0]
    archive = zip_folder(study, tmp_path / "lumbar.zip")
    with open(archive, "rb") as f:
        job = two_models.post("/v1/jobs", files={"file": ("lumbar.zip", f, "application/zip")},
                              data={"model": tiny_lumbar_run.name}).json()
    job = wait_job(two_models.get, job["id"])
    assert job["state"] == "done" and job["model"] == tiny_lumbar_run.name and job["study"] == study.name
    body = two_models.get(f"/v1/jobs/{job['id']}/result").json()
    expected = api.predict("lumbar", model=tiny_lumbar_run, input=study, out=tmp_path / "p", progress=False)
    (reference,) = read_study_results(expected["manifest"].parent)
    assert body["result"]["grades"] == reference["grades"] and body["result"].get("probabilities") is None
    assert body["figure"] and two_models.get(body["figure"]).content[:4] == b"\x89PNG"
