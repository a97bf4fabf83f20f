"""PACS test fixtures: the fixed tiny cervical run and its synthetic DICOM studies, free loopback ports, and a
collecting C-STORE SCP that stands for a PACS."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def pacs_run_and_studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The fixed tiny cervical run (slices route) and its two synthetic test study folders."""
    from tests.tasks.fixed_runs import cervical_test_input, materialize

    tmp = tmp_path_factory.mktemp("pacs")
    data = cervical_test_input(tmp / "data")
    return materialize("cervical", tmp / "run"), sorted((data / "test_images").iterdir())


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Collector:
    """A C-STORE SCP that keeps every dataset it receives (a stand-in PACS)."""

    def __init__(self, ae_title: str = "PACS") -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.received: list[Any] = []
        self.arrived = threading.Condition()
        ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)

        def handle(event: Any) -> int:
            with self.arrived:
                self.received.append(event.dataset)
                self.arrived.notify_all()
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
        self.port = int(self.server.server_address[1])

    def wait_for(self, n: int, timeout: float) -> list[Any]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= n, timeout=timeout)
        return list(self.received)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()
