"""Starting the service: model specs from run folders, and a real uvicorn server on loopback."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from spinelab.errors import InputError
from spinelab.serve.server import build_service, model_specs
from tests.serve.conftest import wait_job


def test_model_specs_name_each_model_after_its_folder(tiny_cervical_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "other" / tiny_cervical_run.name
    shutil.copytree(tiny_cervical_run, copy)
    first, second = model_specs([tiny_cervical_run, copy])
    assert first.name == tiny_cervical_run.name and first.path == tiny_cervical_run.resolve()
    assert second.name == f"{tiny_cervical_run.name}-2" and second.path == copy.resolve()


def test_a_missing_model_or_input_root_is_refused_before_any_worker_starts(tiny_cervical_run: Path,
                                                                         tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        model_specs([tmp_path / "missing"])
    with pytest.raises(InputError, match="no config.yaml"):
        model_specs([tmp_path])
    with pytest.raises(InputError, match="input root"):
        build_service([tiny_cervical_run], input_root=tmp_path / "nope")
    service = build_service([tiny_cervical_run], max_upload_mb=1.5, threads=2)
    assert service.max_upload_bytes == 1_500_000 and service.options == {"threads": 2} and not service.workers


def test_round_trip_over_real_http(live_server: str, study_zip: Path, test_study: Path) -> None:
    with httpx.Client(base_url=live_server, timeout=30) as http:
        assert http.get("/health").json()["status"] == "ok"
        with open(study_zip, "rb") as f:
            submitted = http.post("/v1/jobs", files={"file": ("study.zip", f, "application/zip")})
        assert submitted.status_code == 202
        job = wait_job(http.get, submitted.json()["id"])
        assert job["state"] == "done" and job["study"] == test_study.name
        body = http.get(f"/v1/jobs/{job['id']}/result").json()
        assert set(body["result"]["probabilities"]) >= {"patient_overall", "C1", "C7"}
        assert http.get(body["figure"]).headers["content-type"] == "image/png"
        assert http.delete(f"/v1/jobs/{job['id']}").status_code == 200
        assert http.post("/v1/jobs", data={"path": "x"}).status_code == 403  # paths are off by default
