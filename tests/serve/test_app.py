"""The API in process (FastAPI's TestClient) over a real worker process of the tiny cervical run."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from tests.serve.conftest import wait_job


def _submit(client: Any, archive: Path, **form: str) -> Any:
    with open(archive, "rb") as f:
        return client.post("/v1/jobs", files={"file": (archive.name, f, "application/zip")}, data=form)


def test_health_models_and_openapi(client: Any, tiny_cervical_run: Path) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    (model,) = client.get("/v1/models").json()
    assert model["name"] == tiny_cervical_run.name and model["task"] == "cervical" and model["route"] == "slices"
    assert model["state"] == "ready" and model["pid"] and model["info"]["run_dir"]
    schema = client.get("/openapi.json").json()
    paths = {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result", "/v1/models", "/health"}
    assert paths <= set(schema["paths"])
    assert "swagger" in client.get("/docs").text.lower()
    page = client.get("/")
    assert page.status_code == 200 and "Drop a zipped study" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_round_trip_equals_spinelab_predict(client: Any, study_zip: Path, test_study: Path,
                                            tiny_cervical_run: Path, tmp_path: Path) -> None:
    from spinelab import api

    submitted = _submit(client, study_zip)
    assert submitted.status_code == 202, submitted.text
    job = wait_job(client.get, submitted.json()["id"])
    assert job["state"] == "done" and job["study"] == test_study.name and job["progress"] == 1.0
    body = client.get(f"/v1/jobs/{job['id']}/result").json()
    expected = api.predict("cervical", model=tiny_cervical_run, input=test_study, out=tmp_path / "p", progress=False)
    (reference,) = api_results(expected["manifest"].parent)
    assert body["result"]["probabilities"] == reference["probabilities"]
    assert body["result"]["status"] == reference["status"] and body["result"]["study"] == test_study.name
    names = {f["name"] for f in body["files"]}
    assert {f"studies/{test_study.name}.json", "submission.csv", "manifest.json",
            f"report/studies/{test_study.name}.png"} <= names
    figure = client.get(body["figure"])
    assert figure.status_code == 200 and figure.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/v1/jobs/{job['id']}/files/../../etc/passwd").status_code == 404


def api_results(folder: Path) -> list[dict[str, Any]]:
    from spinelab.infer.batch import read_study_results

    return read_study_results(folder)


def test_a_bad_study_fails_its_job_and_the_next_job_succeeds(client: Any, bad_study_zip: Path,
                                                              study_zip: Path) -> None:
    bad = _submit(client, bad_study_zip).json()
    good = _submit(client, study_zip).json()
    failed = wait_job(client.get, bad["id"])
    assert failed["state"] == "failed" and failed["study"] == "bad_study"
    assert failed["error"].startswith("bad_study: no readable DICOM image")  # named as uploaded, no server path
    result = client.get(f"/v1/jobs/{bad['id']}/result").json()
    assert result["job"]["state"] == "failed"
    assert result["result"] is None or result["result"]["status"] == "failed"
    assert wait_job(client.get, good["id"])["state"] == "done"
    assert client.get("/health").json()["status"] == "ok"


def test_zip_slip_not_a_zip_and_size_limits_are_refused(client: Any, tmp_path: Path) -> None:
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as zf:
        zf.writestr("study/1.dcm", b"x")
        zf.writestr("../../evil.txt", b"owned")
    answer = _submit(client, slip)
    assert answer.status_code == 400 and "outside the study folder" in answer.json()["detail"]
    assert not (tmp_path.parent / "evil.txt").exists()
    (tmp_path / "plain.zip").write_bytes(b"not a zip at all")
    answer = _submit(client, tmp_path / "plain.zip")
    assert answer.status_code == 400 and "not a zip file" in answer.json()["detail"]
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("study/big.dcm", bytes(5_000_000))  # 5 MB of zeros: a few KB zipped, over the 4 MB limit
    answer = _submit(client, bomb)
    assert answer.status_code == 413 and "unpacks to" in answer.json()["detail"]
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("study/noise.bin", bytes(range(256)) * 10_000)  # 2.56 MB stored: over the 2 MB upload limit
    answer = _submit(client, big)
    assert answer.status_code == 413 and "larger than the limit" in answer.json()["detail"]
    just_over = tmp_path / "just_over.zip"  # within the form's slack: refused while the upload is copied
    with zipfile.ZipFile(just_over, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("study/noise.bin", bytes(range(256)) * 7_850)
    assert 2_000_000 < just_over.stat().st_size < 2_000_000 + 64 * 1024
    answer = _submit(client, just_over)
    assert answer.status_code == 413 and "larger than the limit" in answer.json()["detail"]
    assert client.get("/v1/jobs").json() == [] or all(j["state"] != "queued" for j in client.get("/v1/jobs").json())


def test_server_side_paths_stay_under_the_input_root(client: Any, test_study: Path) -> None:
    answer = client.post("/v1/jobs", data={"path": "../../etc"})
    assert answer.status_code == 403 and "outside" in answer.json()["detail"]
    assert client.post("/v1/jobs", data={"path": "no/such/study"}).status_code == 404
    assert client.post("/v1/jobs", data={}).status_code == 400
    job = client.post("/v1/jobs", data={"path": f"test_images/{test_study.name}"}).json()
    assert wait_job(client.get, job["id"])["state"] == "done"


def test_unknown_model_and_unknown_job(client: Any, study_zip: Path) -> None:
    assert _submit(client, study_zip, model="nope").status_code == 404
    assert client.get("/v1/jobs/0123").status_code == 404
    assert client.get("/v1/jobs/0123/result").status_code == 404
    assert client.delete("/v1/jobs/0123").status_code == 404


def test_delete_removes_the_job_and_its_files(client: Any, study_zip: Path) -> None:
    job = wait_job(client.get, _submit(client, study_zip).json()["id"])
    folder = client.app.state.service.store.root / job["id"]
    assert folder.is_dir()
    assert client.delete(f"/v1/jobs/{job['id']}").json() == {"deleted": job["id"]}
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404 and not folder.exists()
    assert job["id"] not in {j["id"] for j in client.get("/v1/jobs").json()}


def test_a_queued_job_answers_409_for_its_result_and_can_be_deleted(client: Any, study_zip: Path) -> None:
    first = _submit(client, study_zip).json()
    second = _submit(client, study_zip).json()
    state = client.get(f"/v1/jobs/{second['id']}").json()
    if state["state"] == "queued":  # the worker is busy with the first job
        assert state["queue_position"] >= 0
        assert client.get(f"/v1/jobs/{second['id']}/result").status_code == 409
    assert client.delete(f"/v1/jobs/{second['id']}").status_code == 200
    assert wait_job(client.get, first["id"])["state"] == "done"
    assert client.get(f"/v1/jobs/{second['id']}").status_code == 404


def test_a_zip_of_loose_files_is_one_study_named_after_the_upload(client: Any, test_study: Path,
                                                                  tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for f in sorted(test_study.iterdir()):
            zf.write(f, f.name)
    archive = tmp_path / "my-study.zip"
    archive.write_bytes(buffer.getvalue())
    job = wait_job(client.get, _submit(client, archive).json()["id"])
    assert job["state"] == "done" and job["study"] == "my-study"


def test_dicom_out_adds_the_studys_seg_and_sr_to_the_files(client: Any, study_zip: Path, test_study: Path) -> None:
    import pydicom

    job = wait_job(client.get, _submit(client, study_zip, dicom_out="true").json()["id"])
    assert job["state"] == "done"
    files = {f["name"]: f for f in client.get(f"/v1/jobs/{job['id']}/result").json()["files"]}
    seg, sr = (files[f"dicom/{test_study.name}/{n}"] for n in ("seg.dcm", "sr.dcm"))
    assert seg["media_type"] == "application/dicom"
    data = pydicom.dcmread(io.BytesIO(client.get(seg["url"]).content))
    assert data.Modality == "SEG" and data.StudyInstanceUID == test_study.name
