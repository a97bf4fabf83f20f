"""A throw-away Orthanc on loopback for the PACS tests: its own config, ports and storage in a temp folder,
spinelab's AE registered as a modality (so C-MOVE can reach it), stopped when the test ends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.pacs.conftest import free_port

ORTHANC_AE = "ORTHANC"


def orthanc_binary() -> str:
    """Debian's ``Orthanc``; a missing one fails under CI (``.ci/run`` installs it) and skips elsewhere."""
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
    if found is None:
        message = "Orthanc not installed (apt-get install orthanc; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


class Orthanc:
    """A running Orthanc: its DICOM port and a tiny REST client."""

    def __init__(self, dicom_port: int, http_port: int) -> None:
        self.dicom_port, self.http_port = dicom_port, http_port

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())


@contextmanager
def running_orthanc(tmp: Path, *, spinelab_ae: str, spinelab_port: int, timeout: float = 30) -> Iterator[Orthanc]:
    """Start Orthanc with a test config in ``tmp``; yields when its REST API answers; always stops it."""
    binary = orthanc_binary()
    dicom_port, http_port = free_port(), free_port()
    storage = tmp / "storage"
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "spinelab-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "DicomAet": ORTHANC_AE, "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpServerEnabled": True, "DicomServerEnabled": True, "Plugins": [],
        "DicomModalities": {"spinelab": [spinelab_ae, "127.0.0.1", spinelab_port]},
        "DicomAlwaysAllowStore": True, "DicomCheckModalityHost": False, "DicomCheckCalledAet": False,
        "SaveJobs": False, "ConcurrentJobs": 1, "StableAge": 1, "HttpTimeout": 10, "DicomScuTimeout": 10,
    }
    (tmp / "orthanc.json").write_text(json.dumps(config))
    log = (tmp / "orthanc.log").open("wb")
    proc = subprocess.Popen([binary, str(tmp / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        server = Orthanc(dicom_port, http_port)
        end = time.monotonic() + timeout
        while True:
            try:
                server.get("/system")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"Orthanc did not start: {(tmp / 'orthanc.log').read_text()[-2000:]}") \
                        from None
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
