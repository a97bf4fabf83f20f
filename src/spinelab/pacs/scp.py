"""The server side: a C-STORE SCP that spools received images per study and says when a study went quiet.

Files land in ``incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (UIDs are checked to be
UIDs, so a sender cannot write outside the spool). A study is complete when no instance of it arrived for
``quiet_seconds``: DICOM has no "end of study" message, and every PACS router uses such a quiet period.
Segmentations, structured reports and other non-image objects are acknowledged but not spooled: a node that
gets its own SEG and SR back must not predict them.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["StudySpool", "is_uid", "is_source_image", "storage_handler", "DERIVED_MODALITIES"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: derived objects a node receives but never predicts (SEG carries pixel data too)
DERIVED_MODALITIES = frozenset({"SEG", "SR", "KO", "PR", "RTSTRUCT", "REG", "DOC"})
_DERIVED_CLASS_PREFIXES = ("1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.88.")


def is_source_image(dataset: Any) -> bool:
    """An image a model can read: pixel data, not a derived object (SEG, SR, presentation state, ...)."""
    if "PixelData" not in dataset or "Rows" not in dataset:
        return False
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    return (str(dataset.get("Modality", "") or "").upper() not in DERIVED_MODALITIES
            and not sop_class.startswith(_DERIVED_CLASS_PREFIXES))


def is_uid(value: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters."""
    return bool(_UID.match(value)) and len(value) <= 64


class StudySpool:
    """Received images on disk, grouped by study and series, with each study's last arrival time.

    Args:
        root: the spool folder (created).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def folder(self, study_uid: str) -> Path:
        return self.root / study_uid

    def store(self, dataset: Any, file_meta: Any) -> str | None:
        """Write one received instance; returns its study UID, or ``None`` for an object that is not an image.

        Raises:
            ValueError: a Study/Series/SOP Instance UID that is not a UID.
        """
        if not is_source_image(dataset):
            return None
        uids = [str(dataset.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        bad = [u for u in uids if not is_uid(u)]
        if bad:
            raise ValueError(f"not a UID: {bad[0]!r}")
        study, series, sop = uids
        target = self.root / study / series / f"{sop}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        dataset.file_meta = file_meta
        tmp = target.with_name(f".{target.name}.tmp")
        dataset.save_as(tmp, enforce_file_format=True)
        tmp.replace(target)
        with self._lock:
            self._last[study] = time.monotonic()
        return study

    def quiet_studies(self, quiet_seconds: float, *, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Studies with no arrival for ``quiet_seconds`` (each reported once, until a new instance arrives)."""
        now = time.monotonic()
        with self._lock:
            done = [s for s, t in self._last.items() if now - t >= quiet_seconds and s not in skip]
            for s in done:
                del self._last[s]
        return done

    def forget(self, study_uid: str) -> None:
        """Stop waiting for a study (a pull handles it itself)."""
        with self._lock:
            self._last.pop(study_uid, None)


def storage_handler(spool: StudySpool) -> Any:
    """A pynetdicom ``EVT_C_STORE`` handler writing into ``spool`` (status 0x0000, 0xC210 on a bad UID)."""
    import logging

    log = logging.getLogger("spinelab")

    def handle(event: Any) -> int:
        try:
            spool.store(event.dataset, event.file_meta)
        except ValueError as err:
            log.warning("refused an instance from %s: %s", event.assoc.requestor.ae_title, err)
            return 0xC210
        except OSError as err:
            log.warning("cannot spool an instance: %s", err)
            return 0xA700  # out of resources
        return 0x0000

    return handle
