"""The service's jobs: one record per submitted study, its folder on disk, and the safe unpacking of an upload.

A job's folder holds ``input/`` (the unpacked study; absent for a server-side path) and ``out/`` (what
``predict_dataset`` and the figure wrote). Records live in memory behind one lock: the app thread and the
per-model dispatcher threads are their only writers, so no file is read back to learn a state.
"""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from spinelab.errors import InputError

__all__ = ["Job", "JobStore", "UploadRefusedError", "unpack_study_zip", "STATES", "result_files"]

#: A job's states, in the order a job passes them (``failed`` replaces ``done`` when the study failed).
STATES = ("queued", "running", "done", "failed")
_CHUNK = 1 << 20


class UploadRefusedError(InputError):
    """An upload the service will not unpack; ``status`` is the HTTP code to answer (400 bad, 413 too large)."""

    def __init__(self, path: str | Path, problem: str, *, status: int = 400) -> None:
        super().__init__(path, problem)
        self.status = status


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass
class Job:
    """One study submitted to one model."""

    id: str
    model: str
    folder: Path
    input: Path
    options: dict[str, Any] = field(default_factory=dict)
    state: str = "queued"
    progress: float = 0.0
    message: str = "waiting for the model"
    created: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    study: str | None = None
    status: str | None = None
    error: str | None = None
    seconds: dict[str, float] | None = None
    deleted: bool = False

    @property
    def out(self) -> Path:
        """The prediction folder (``predict_dataset``'s ``out``)."""
        return self.folder / "out"

    def public(self) -> dict[str, Any]:
        """The job as ``GET /v1/jobs/{id}`` answers it (links relative to the server root)."""
        record = {k: getattr(self, k) for k in ("id", "model", "state", "progress", "message", "created", "started",
                                                "finished", "study", "status", "error", "seconds")}
        record["links"] = {"self": f"/v1/jobs/{self.id}",
                           **({"result": f"/v1/jobs/{self.id}/result"} if self.state in ("done", "failed") else {})}
        return record


class JobStore:
    """Every live job by id, under one lock; ``root`` holds their folders."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its (created) folder."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder

    def add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, or ``None`` when unknown or deleted."""
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None or job.deleted else job

    def list(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.deleted]

    def update(self, job_id: str, **changes: Any) -> Job | None:
        """Set fields of a job (a deleted job is left alone); returns it."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.deleted:
                return None
            for key, value in changes.items():
                setattr(job, key, value)
            if changes.get("state") == "running":
                job.started = _now()
            if changes.get("state") in ("done", "failed"):
                job.finished = _now()
            return job

    def delete(self, job_id: str) -> bool:
        """Forget a job; its folder goes now, or when its worker finishes it (``finish_deleted``)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.deleted:
                return False
            job.deleted = True
            running = job.state == "running"
            if not running:
                del self._jobs[job_id]
        if not running:
            shutil.rmtree(job.folder, ignore_errors=True)
        return True

    def finish_deleted(self, job_id: str) -> bool:
        """After a worker finished ``job_id``: remove it and its folder when it was deleted meanwhile."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.deleted:
                return False
            del self._jobs[job_id]
        shutil.rmtree(job.folder, ignore_errors=True)
        return True

    def queued_before(self, job: Job) -> int:
        """How many jobs of the same model wait ahead of ``job``."""
        with self._lock:  # the dict keeps submission order
            ahead = 0
            for j in self._jobs.values():
                if j is job:
                    return ahead
                ahead += j.model == job.model and j.state == "queued" and not j.deleted
            return ahead


def _member_path(name: str, source: Path) -> PurePosixPath:
    """The archive member's relative path; refused when absolute, with ``..`` or a drive (zip slip)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UploadRefusedError(source, f"the zip member {name!r} points outside the study folder; refused")
    return path


def unpack_study_zip(archive: str | Path, dest: str | Path, *, name: str, max_bytes: int,
                     max_files: int = 100_000) -> Path:
    """Unpack the zipped study ``archive`` under ``dest`` and return the folder to predict (``dest``).

    A zip whose members share one top folder unpacks as that folder; otherwise its members go into
    ``dest/<name>`` (the upload's name), so the study's id is a name the user chose, never ``input``.
    Checked before and while writing: every member stays inside ``dest`` (no ``..``, no absolute path, no
    symbolic link), at most ``max_files`` members and ``max_bytes`` unpacked (counted as written, so a
    header that lies about its size does not help).

    Raises:
        UploadRefusedError: not a zip file, an unsafe member, an empty archive, or too large (status 413).
    """
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise UploadRefusedError(name, f"not a zip file ({err})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if not members:
            raise UploadRefusedError(name, "the zip holds no file")
        if len(members) > max_files:
            raise UploadRefusedError(name, f"the zip holds {len(members)} files, more than {max_files}", status=413)
        paths = []
        for m in members:
            if stat.S_ISLNK(m.external_attr >> 16):
                raise UploadRefusedError(name, f"the zip member {m.filename!r} is a symbolic link; refused")
            paths.append(_member_path(m.filename, Path(name)))
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise UploadRefusedError(name, f"the study unpacks to {declared / 1e6:.1f} MB, more than the limit of "
                                      f"{max_bytes / 1e6:.1f} MB", status=413)
        tops = {p.parts[0] for p in paths}
        base = dest if len(tops) == 1 and all(len(p.parts) > 1 for p in paths) else dest / _safe_name(name)
        root = dest.resolve()
        written = 0
        for m, rel in zip(members, paths, strict=True):
            target = base / Path(*rel.parts)
            if not target.resolve().is_relative_to(root):
                raise UploadRefusedError(name, f"the zip member {m.filename!r} points outside the study folder; "
                                               "refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(m) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UploadRefusedError(name, f"the study unpacks to more than the limit of "
                                                      f"{max_bytes / 1e6:.1f} MB", status=413)
                        dst.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as err:
                raise UploadRefusedError(name, f"the zip member {m.filename!r} cannot be read ({err})") from None
    return dest


def _safe_name(name: str) -> str:
    """A folder name from an upload's file name: its stem, with anything but letters, digits, ``.-_`` as ``_``."""
    stem = PurePosixPath(name.replace("\\", "/")).name
    stem = stem[:-4] if stem.lower().endswith(".zip") else stem
    cleaned = "".join(c if c.isalnum() or c in ".-_" else "_" for c in stem).strip(".")
    return cleaned or "study"


_MEDIA = {".json": "application/json", ".png": "image/png", ".csv": "text/csv", ".html": "text/html",
          ".gz": "application/gzip", ".nii": "application/octet-stream", ".dcm": "application/dicom"}


def result_files(job: Job) -> list[dict[str, Any]]:
    """Every file of the job's output folder (JSON, CSV, PNG, NIfTI, DICOM, ...) with its download link."""
    if not job.out.is_dir():
        return []
    files = []
    for path in sorted(p for p in job.out.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(job.out).as_posix()
        files.append({"name": rel, "bytes": path.stat().st_size,
                      "media_type": _MEDIA.get(path.suffix.lower(), "application/octet-stream"),
                      "url": f"/v1/jobs/{job.id}/files/{rel}"})
    return files
