"""The FastAPI application of ``spinelab serve``: jobs, results, models, health, and the page at ``/``.

``Service`` holds what the routes share (the job store, one ``ModelWorker`` per model, the upload limits);
``create_app`` builds the application over it. The workers start with the application (its lifespan), so
``/health`` answers at once and says ``starting`` until every model has loaded.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from spinelab import __version__
from spinelab.serve.jobs import Job, JobStore, UploadRefusedError, result_files, unpack_study_zip
from spinelab.serve.worker import ModelWorker

__all__ = ["Service", "ModelSpec", "create_app"]

_CHUNK = 1 << 20
_FORM_SLACK = 64 * 1024  # the multipart envelope and the other form fields around the zip


@dataclass
class ModelSpec:
    """A model to serve: its API name and run folder (or package); its worker reads its task and route."""

    name: str
    path: Path


@dataclass
class Service:
    """Everything the routes share.

    Args:
        models: what to serve; one worker process each.
        jobs_dir: where job folders go (a temporary folder, removed at shutdown, when ``None``).
        max_upload_bytes: largest zip accepted; ``max_unpacked_bytes``: largest unpacked study.
        input_root: when set, ``POST /v1/jobs`` also takes ``path=`` of a study under this folder (read in
            place; nothing outside it).
        options: ``load_predictor`` settings for every worker (``device``, ``precision``, ...; ``threads``).
    """

    models: list[ModelSpec]
    jobs_dir: Path | None = None
    max_upload_bytes: int = 2 * 1024**3
    max_unpacked_bytes: int = 4 * 1024**3
    input_root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, ModelWorker] = field(default_factory=dict, init=False)
    store: JobStore | None = field(default=None, init=False)
    _temporary: bool = field(default=False, init=False)

    def start(self) -> None:
        """Create the job store and start one worker per model (each loads its model in the background)."""
        if self.jobs_dir is None:
            self.jobs_dir, self._temporary = Path(tempfile.mkdtemp(prefix="spinelab-serve-")), True
        self.store = JobStore(self.jobs_dir)
        for spec in self.models:
            worker = ModelWorker(spec.name, spec.path, self.store, self.options)
            self.workers[spec.name] = worker
            worker.start()

    def stop(self) -> None:
        """Stop every worker; remove the job folders when they were in a temporary folder."""
        for worker in self.workers.values():
            worker.stop()
        if self._temporary and self.jobs_dir is not None:
            shutil.rmtree(self.jobs_dir, ignore_errors=True)

    def worker_for(self, model: str | None) -> ModelWorker:
        """The worker of ``model`` (the only model when ``None`` and there is one)."""
        if model is None or model == "":
            if len(self.workers) == 1:
                return next(iter(self.workers.values()))
            raise HTTPException(400, f"several models are served; pass model= one of {sorted(self.workers)}")
        if model not in self.workers:
            raise HTTPException(404, f"unknown model {model!r}; served: {sorted(self.workers)}")
        return self.workers[model]

    def server_path(self, path: str) -> Path:
        """A server-side study path, checked to lie under ``input_root``."""
        if self.input_root is None:
            raise HTTPException(403, "server-side paths are off; start the server with --input-root DIR")
        root = self.input_root.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise HTTPException(403, f"{path}: outside the server's input root")
        if not target.exists():
            raise HTTPException(404, f"{path}: not found under the server's input root")
        return target


def _model_record(worker: ModelWorker) -> dict[str, Any]:
    return {"name": worker.name, "task": worker.task, "route": worker.route, "path": str(worker.path),
            "state": worker.state, "error": worker.error, "ready_seconds": worker.ready_seconds,
            "restarts": worker.restarts, "pid": worker.pid, "info": worker.info}


async def _save_upload(upload: UploadFile, dest: Path, limit: int) -> int:
    """Copy the upload to ``dest`` counting bytes; refused (413) past ``limit``."""
    size = 0
    with open(dest, "wb") as out:
        while chunk := await upload.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise UploadRefusedError(upload.filename or "upload", f"the upload is larger than the limit of "
                                                                 f"{limit / 1e6:.1f} MB", status=413)
            out.write(chunk)
    return size


def create_app(service: Service) -> FastAPI:
    """The application serving ``service`` (started and stopped with the application's lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="spinelab", version=__version__, lifespan=lifespan,
                  description="Spine CT/MRI models as a service: submit a zipped study, follow its job, read the "
                              "StudyResult JSON and download the files (figure, masks, DICOM).")
    app.state.service = service
    static = files("spinelab.serve") / "static"

    @app.middleware("http")
    async def refuse_large_uploads(request: Request, call_next: Any) -> Any:
        """A declared body over the limit is refused before it is read (the form parser would spool it all);
        a body without a length is counted as it is copied (``_save_upload``)."""
        length = request.headers.get("content-length", "")
        if (request.method == "POST" and request.url.path == "/v1/jobs" and length.isdigit()
                and int(length) > service.max_upload_bytes + _FORM_SLACK):
            return JSONResponse({"detail": f"upload: the upload is larger than the limit of "
                                           f"{service.max_upload_bytes / 1e6:.1f} MB"}, status_code=413)
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/health")
    def health() -> JSONResponse:
        """``ok`` (200) when every model is loaded; ``starting`` or ``degraded`` (503) otherwise."""
        states = {name: w.state for name, w in service.workers.items()}
        status = ("ok" if all(s == "ready" for s in states.values()) else
                  "degraded" if any(s == "failed" for s in states.values()) else "starting")
        return JSONResponse({"status": status, "version": __version__, "models": states},
                            status_code=200 if status == "ok" else 503)

    @app.get("/v1/models")
    def models() -> list[dict[str, Any]]:
        """Every served model: name, path, state; its task, route and ``model_info`` once loaded."""
        return [_model_record(w) for w in service.workers.values()]

    @app.post("/v1/jobs", status_code=202)
    async def submit(file: Annotated[UploadFile | None, File(description="a zipped study (DICOM or NIfTI)")] = None,
                     path: Annotated[str | None, Form(description="a study under --input-root")] = None,
                     model: Annotated[str | None, Form()] = None,
                     series: Annotated[str | None, Form(description="cervical: SeriesInstanceUID or description")]
                     = None,
                     dicom_out: Annotated[bool, Form(description="also write the study's DICOM SEG and SR "
                                                                 "(DICOM input)")] = False) -> dict[str, Any]:
        """Queue one study for one model: ``file`` (a zip) or, when the server allows it, ``path``."""
        worker = service.worker_for(model)
        if worker.state == "failed":
            raise HTTPException(503, f"model {worker.name} could not be loaded: {worker.error}")
        if (file is None) == (path is None):
            raise HTTPException(400, "send exactly one of file= (a zipped study) and path=")
        store = service.store
        source = service.server_path(path) if path is not None else None
        job_id, folder = store.new_folder()
        try:
            if source is None:
                archive = folder / "upload.zip"
                await _save_upload(file, archive, service.max_upload_bytes)
                source = await run_in_threadpool(unpack_study_zip, archive, folder / "input",
                                                 name=file.filename or "study.zip",
                                                 max_bytes=service.max_unpacked_bytes)
                archive.unlink()
        except UploadRefusedError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(err.status, str(err)) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        options: dict[str, Any] = {"series": series} if series else {}
        if dicom_out:  # predict_dataset's own option: out/dicom/<study id>/seg.dcm, sr.dcm
            options["dicom_out"] = True
        job = store.add(Job(id=job_id, model=worker.name, folder=folder, input=source, options=options))
        worker.submit(job_id)
        return job.public()

    @app.get("/v1/jobs")
    def list_jobs() -> list[dict[str, Any]]:
        """Every job not deleted, oldest first."""
        return [j.public() for j in sorted(service.store.list(), key=lambda j: j.created)]

    def _job(job_id: str) -> Job:
        job = service.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.get("/v1/jobs/{job_id}")
    def job_state(job_id: str) -> dict[str, Any]:
        """State (queued, running, done, failed), progress 0-1 with its message, and the queue position."""
        job = _job(job_id)
        record = job.public()
        if job.state == "queued":
            record["queue_position"] = service.store.queued_before(job)
        return record

    @app.get("/v1/jobs/{job_id}/result")
    def job_result(job_id: str, request: Request) -> dict[str, Any]:
        """The study's ``StudyResult`` JSON (as ``spinelab predict`` writes it), the figure and every file."""
        job = _job(job_id)
        if job.state not in ("done", "failed"):
            raise HTTPException(409, f"job {job_id} is {job.state}; its result is not ready")
        study = job.out / "studies" / f"{job.study}.json"
        result = None
        if job.study is not None and study.is_file():
            result = json.loads(study.read_text())
        listing = result_files(job)
        figure = next((f["url"] for f in listing if f["name"] == f"report/studies/{job.study}.png"), None)
        return {"job": job.public(), "result": result, "figure": figure, "files": listing}

    @app.get("/v1/jobs/{job_id}/files/{name:path}")
    def job_file(job_id: str, name: str) -> FileResponse:
        """One file of the job's output folder."""
        job = _job(job_id)
        root = job.out.resolve()
        target = (root / name).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, f"job {job_id} has no file {name}")
        return FileResponse(target)

    @app.delete("/v1/jobs/{job_id}")
    def delete_job(job_id: str) -> dict[str, Any]:
        """Forget the job and remove its files (a running job's, once its study is finished)."""
        if not service.store.delete(job_id):
            raise HTTPException(404, f"no job {job_id}")
        return {"deleted": job_id}

    return app
