"""``PacsNode``: listen as a DICOM node, predict each complete study once, send its SEG and SR back; or pull a
study with C-MOVE and do the same.

One predictor is loaded on first use and kept (models load once, as in the service). A study is predicted in
the node's worker thread after its quiet period (``scp.StudySpool``), or at once after a pull's C-MOVE
finished. Results go to ``work_dir/results/<StudyInstanceUID>/`` (``result.json``, ``seg.dcm``, ``sr.dcm``)
and, when a remote node is configured, are C-STOREd to it. A study that cannot be predicted is logged and
recorded (``result.json`` with the error); the node goes on.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from spinelab.errors import ConfigError, SpinelabError
from spinelab.io.atomic import atomic_write_json
from spinelab.pacs.config import PacsConfig
from spinelab.pacs.scp import StudySpool, is_uid, storage_handler
from spinelab.pacs.scu import PacsError, move_study, store_files

__all__ = ["PacsNode"]

log = logging.getLogger("spinelab")


class PacsNode:
    """A spinelab DICOM node.

    Args:
        config: AE title, address, model, work folder, quiet period, remote node.
        predictor: a ready predictor (tests, the service); default: built from ``config.model`` on first use.
    """

    def __init__(self, config: PacsConfig, *, predictor: Any = None) -> None:
        self.config = config
        self._predictor = predictor
        self.spool = StudySpool(Path(config.work_dir) / "incoming")
        self.results_dir = Path(config.work_dir) / "results"
        self.results: dict[str, list[Path]] = {}
        self._server: Any = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._claimed: set[str] = set()
        self._busy = threading.Lock()

    # --- the model -------------------------------------------------------------------------------
    @property
    def predictor(self) -> Any:
        if self._predictor is None:
            from spinelab.infer.ensemble import load_ensemble, load_predictor

            models = list(self.config.model)
            if not models:
                raise ConfigError("give the node a model (--model RUN_DIR or `model:` in the PACS config)")
            self._predictor = (load_predictor(self.config.task, models[0], device=self.config.device)
                               if len(models) == 1 else
                               load_ensemble(self.config.task, models, device=self.config.device))
        return self._predictor

    # --- listening -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port the node listens on (the one chosen by the system when configured as 0)."""
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def start(self) -> None:
        """Listen for C-STORE and C-ECHO (non-blocking) and start the worker that predicts quiet studies."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        if self._server is not None:
            return
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:  # any transfer syntax: studies arrive compressed too
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0
        self._server = ae.start_server((self.config.host, self.config.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, storage_handler(self.spool))])
        self._stop.clear()
        self._worker = threading.Thread(target=self._watch, name="spinelab-pacs", daemon=True)
        self._worker.start()
        log.info("listening as %s on %s:%d", self.config.ae_title, self.config.host, self.port)

    def stop(self) -> None:
        """Stop listening and wait for the worker (a study being predicted finishes first)."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> PacsNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until ``stop`` (or Ctrl-C, which stops the node)."""
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.stop()
            raise

    def _watch(self) -> None:
        step = min(0.25, self.config.quiet_seconds / 4)
        while not self._stop.wait(step):
            for study in self.spool.quiet_studies(self.config.quiet_seconds, skip=self._claimed):
                try:
                    self.process(study)
                except Exception as err:  # noqa: BLE001 - a bad study never stops the node
                    log.warning("study %s: %s: %s", study, type(err).__name__, err)

    # --- one study -------------------------------------------------------------------------------
    def _study_input(self, study_uid: str) -> Path:
        """What the predictor reads: the largest series folder (cervical) or the study folder (lumbar)."""
        folder = self.spool.folder(study_uid)
        if self.config.task == "lumbar":
            return folder
        series = sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: (-len(list(d.iterdir())), d.name))
        if not series:
            raise PacsError(f"study {study_uid}: no series received")
        return series[0]

    def process(self, study_uid: str) -> list[Path]:
        """Predict a received study, write its result, SEG and SR, and send SEG and SR to the remote node.

        Returns:
            The DICOM files written (none when the study was refused or failed: see its ``result.json``).
        """
        from spinelab.infer.checks import StudyRefusedError
        from spinelab.infer.dicom_results import write_dicom_results

        with self._busy:
            out = self.results_dir / study_uid
            out.mkdir(parents=True, exist_ok=True)
            source = self._study_input(study_uid)
            try:
                result = self.predictor.predict_study(source, study_uid)
            except (StudyRefusedError, SpinelabError) as err:
                log.warning("study %s not predicted: %s", study_uid, err)
                atomic_write_json(out / "result.json", {"study": study_uid, "status": "not predicted",
                                                        "error": str(err)})
                self.results[study_uid] = []
                return []
            files = write_dicom_results(result, source, out)
            record = result.to_json()
            record["dicom_files"] = [f.name for f in files]
            atomic_write_json(out / "result.json", record)
            if files and self.config.remote is not None:
                store_files(files, self.config.remote, ae_title=self.config.ae_title,
                            timeout=self.config.timeout_seconds)
            self.results[study_uid] = files
            log.info("study %s: %s sent to %s", study_uid, ", ".join(f.name for f in files),
                     self.config.remote.ae_title if self.config.remote else "nobody (no remote node)")
            return files

    def pull(self, study_uid: str) -> list[Path]:
        """C-MOVE a study from the remote node to this node, then ``process`` it.

        Raises:
            ConfigError: no remote node configured or a malformed UID.
            PacsError: the move failed.
        """
        if self.config.remote is None:
            raise ConfigError("pulling needs a remote node (--remote-ae/--remote-host/--remote-port or `remote:`)")
        if not is_uid(study_uid):
            raise ConfigError(f"not a StudyInstanceUID: {study_uid!r}")
        self.start()
        self._claimed.add(study_uid)
        try:
            moved = move_study(study_uid, self.config.remote, destination=self.config.ae_title,
                               ae_title=self.config.ae_title, timeout=self.config.timeout_seconds)
            log.info("study %s: %d instance(s) moved from %s", study_uid, moved, self.config.remote.ae_title)
            self.spool.forget(study_uid)
            return self.process(study_uid)
        finally:
            self._claimed.discard(study_uid)
