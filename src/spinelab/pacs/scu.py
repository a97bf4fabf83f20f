"""The client side: C-STORE files to a node, C-MOVE a study from it, C-ECHO (pynetdicom)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spinelab.errors import SpinelabError
from spinelab.pacs.config import RemoteNode

__all__ = ["PacsError", "store_files", "move_study", "echo"]

log = logging.getLogger("spinelab")


class PacsError(SpinelabError):
    """A DICOM association or operation failed (the node and the status are named)."""


def _associate(ae: Any, remote: RemoteNode) -> Any:
    assoc = ae.associate(remote.host, remote.port, ae_title=remote.ae_title)
    if not assoc.is_established:
        raise PacsError(f"{remote.ae_title}@{remote.host}:{remote.port}: association rejected or node unreachable")
    return assoc


def echo(remote: RemoteNode, *, ae_title: str = "SPINELAB", timeout: float = 30) -> bool:
    """C-ECHO ``remote``; True on success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    try:
        assoc = _associate(ae, remote)
    except PacsError:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def store_files(paths: Sequence[str | Path], remote: RemoteNode, *, ae_title: str = "SPINELAB",
                timeout: float = 60) -> int:
    """C-STORE every file to ``remote`` in one association; returns how many were stored.

    Raises:
        PacsError: no association, or a store the node refused (its status).
    """
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    if not datasets:
        return 0
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    for sop_class, syntax in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(sop_class, syntax)
    assoc = _associate(ae, remote)
    try:
        for path, ds in zip(paths, datasets, strict=True):
            status = assoc.send_c_store(ds)
            if not status or status.Status not in (0x0000, 0xB000, 0xB006, 0xB007):
                code = f"0x{status.Status:04X}" if status else "no response"
                raise PacsError(f"{remote.ae_title}: C-STORE of {path} failed ({code})")
    finally:
        assoc.release()
    log.info("stored %d file(s) to %s", len(datasets), remote.ae_title)
    return len(datasets)


def move_study(study_uid: str, remote: RemoteNode, *, destination: str, ae_title: str = "SPINELAB",
               timeout: float = 120) -> int:
    """Ask ``remote`` to C-MOVE every instance of a study to the AE ``destination`` (which ``remote`` must know
    as a modality); returns the number of instances moved.

    Raises:
        PacsError: no association, or the move did not succeed (unknown destination, no such study, ...).
    """
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    assoc = _associate(ae, remote)
    completed, final = 0, None
    try:
        for status, _identifier in assoc.send_c_move(query, destination, StudyRootQueryRetrieveInformationModelMove):
            if not status:
                raise PacsError(f"{remote.ae_title}: C-MOVE of study {study_uid}: no response (timeout)")
            final = status.Status
            completed = int(status.get("NumberOfCompletedSuboperations", completed) or completed)
    finally:
        assoc.release()
    if final not in (0x0000, 0xB000):
        raise PacsError(f"{remote.ae_title}: C-MOVE of study {study_uid} to {destination} failed "
                        f"(status 0x{(final or 0):04X})")
    if completed == 0:
        raise PacsError(f"{remote.ae_title}: study {study_uid} has no instances to move")
    return completed
