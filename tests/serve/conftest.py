"""The service's fixtures: zipped synthetic studies and one in-process service over the session's tiny run."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def zip_folder(folder: Path, out: Path, *, top: str | None = None) -> Path:
    """``folder``'s files zipped under ``top/`` (``folder``'s name by default)."""
    top = folder.name if top is None else top
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{top}/{f.relative_to(folder).as_posix()}" if top else f.relative_to(folder).as_posix())
    return out


def wait_job(get: Any, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` (``get(url) -> response``) until the job is done or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


@pytest.fixture(scope="session")
def test_study(tiny_cervical_dataset: Path) -> Path:
    """The first test study (a folder of DICOM files) of the tiny cervical dataset."""
    return sorted((tiny_cervical_dataset / "test_images").iterdir())[0]


@pytest.fixture(scope="session")
def study_zip(test_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test study zipped as ``<uid>/<n>.dcm``."""
    return zip_folder(test_study, tmp_path_factory.mktemp("zips") / "study.zip")


@pytest.fixture(scope="session")
def bad_study_zip(test_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test study with every file cut after 400 bytes: DICOM by its preamble, but unreadable."""
    folder = tmp_path_factory.mktemp("bad") / "bad_study"
    folder.mkdir()
    for f in sorted(test_study.iterdir()):
        (folder / f.name).write_bytes(f.read_bytes()[:400])
    return zip_folder(folder, folder.parent / "bad.zip")


@pytest.fixture(scope="session")
def client(tiny_cervical_run: Path, tiny_cervical_dataset: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Any]:
    """A ``TestClient`` over a started service of the tiny cervical run (its worker loaded), with small upload
    limits (2 MB zipped, 4 MB unpacked) and server-side paths under the tiny dataset."""
    from fastapi.testclient import TestClient

    from spinelab.serve.app import create_app
    from spinelab.serve.server import build_service

    service = build_service([tiny_cervical_run], jobs_dir=tmp_path_factory.mktemp("jobs"), max_upload_mb=2,
                            max_unpacked_mb=4, input_root=tiny_cervical_dataset, threads=1)
    with TestClient(create_app(service)) as c:
        deadline = time.monotonic() + 120
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, c.get("/health").json()
            time.sleep(0.2)
        yield c


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_server(tiny_cervical_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``spinelab serve RUN`` in its own process on a free loopback port: its base URL once ``/health`` is ok.
    Stopped with SIGINT at the end (killed, and the test failed, when it does not stop within 30 s)."""
    import signal
    import subprocess
    import sys

    import httpx

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spinelab", "serve", str(tiny_cervical_run), "--port",
                                 str(port), "--threads", "1"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the server exited ({proc.returncode}): {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the server was not ready in 120 s: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"the server did not stop on SIGINT within 30 s: {log.read_text()[-3000:]}"
                                 ) from None
