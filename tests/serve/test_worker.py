"""The model worker: the study function it runs, and a worker process that dies is replaced."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from spinelab.errors import InputError
from spinelab.serve.worker import predict_job
from tests.serve.conftest import wait_job


def test_predict_job_refuses_a_folder_of_several_studies(tiny_cervical_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds 2 studies"):
        predict_job(object(), task="cervical", input=tiny_cervical_dataset / "test_images", out=tmp_path,
                    options={})


def test_predict_job_reports_progress_and_draws_the_figure(tiny_cervical_run: Path, test_study: Path,
                                                           tmp_path: Path) -> None:
    from spinelab.infer.ensemble import load_predictor

    steps: list[tuple[float, str]] = []
    summary = predict_job(load_predictor("cervical", tiny_cervical_run), task="cervical", input=test_study,
                          out=tmp_path, options={}, progress=lambda f, m: steps.append((f, m)))
    assert summary["study"] == test_study.name and summary["status"] in ("ok", "warning")
    assert set(summary["seconds"]) == {"predict", "figure"} and all(v > 0 for v in summary["seconds"].values())
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][1] == "drawing the figure"
    assert (tmp_path / "report" / "studies" / f"{test_study.name}.png").is_file()


def test_a_killed_worker_is_restarted_and_serves_the_next_job(client: Any, study_zip: Path) -> None:
    worker = next(iter(client.app.state.service.workers.values()))
    old_pid, restarts = worker.pid, worker.restarts
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while worker._process.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(study_zip, "rb") as f:
        job = client.post("/v1/jobs", files={"file": ("study.zip", f, "application/zip")}).json()
    assert wait_job(client.get, job["id"])["state"] == "done"
    assert worker.pid != old_pid and worker.restarts == restarts + 1 and worker.state == "ready"
    assert client.get("/health").json()["status"] == "ok"


def test_a_model_that_cannot_load_fails_its_jobs_with_the_reason(tmp_path: Path) -> None:
    from spinelab.serve.jobs import Job, JobStore
    from spinelab.serve.worker import ModelWorker

    broken = tmp_path / "broken_run"
    broken.mkdir()
    (broken / "config.yaml").write_text("task: cervical\nno_such_key: 1\n")
    store = JobStore(tmp_path / "jobs")
    worker = ModelWorker("broken_run", broken, store)
    worker.start()
    job_id, folder = store.new_folder()
    store.add(Job(id=job_id, model="broken_run", folder=folder, input=folder))
    worker.submit(job_id)
    try:
        deadline = time.monotonic() + 60
        while store.get(job_id).state != "failed":
            assert time.monotonic() < deadline, store.get(job_id)
            time.sleep(0.1)
    finally:
        worker.stop()
    assert worker.state == "failed" and worker.error
    assert store.get(job_id).error.startswith("model broken_run is not available")
