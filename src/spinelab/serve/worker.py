"""One process per model: it loads the model once and predicts its jobs in order.

``ModelWorker`` (in the server) owns the process, a pipe to it and a thread that hands it one job at a time
from the model's queue. The process (``worker_main``) predicts with ``infer.batch.predict_dataset`` on the job's
one-study folder, the path ``spinelab predict`` takes, so the JSON, CSV and files are the same; then it draws
the task's per-study figure with the report's function. A study that raises fails its job; a process that dies
(a crash, the kernel's OOM killer) fails the job it held and is started again, so the server keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import queue
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from spinelab.serve.jobs import JobStore

__all__ = ["ModelWorker", "worker_main", "predict_job"]

log = logging.getLogger("spinelab")
_POLL_S = 0.2


def _jsonable(obj: Any) -> Any:
    """``obj`` through JSON (paths and numbers as JSON has them), so it crosses the pipe and the API as data."""
    return json.loads(json.dumps(obj, default=str))


def predict_job(predictor: Any, *, task: str, input: Path, out: Path, options: dict[str, Any],
                progress: Any = None) -> dict[str, Any]:
    """Predict the one study under ``input`` into ``out`` and draw its figure into ``out/report``.

    Returns:
        ``{"study", "status", "error"}`` of the study's result and ``seconds`` (``predict``, ``figure``).

    Raises:
        InputError: ``input`` holds no study or more than one.
    """
    from spinelab.errors import InputError, SpinelabError
    from spinelab.infer.batch import predict_dataset, read_study_results
    from spinelab.infer.studies import find_input_studies
    from spinelab.tasks.catalog import report_function, task_output

    def step(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)

    output = task_output(task)
    step(0.05, "finding the study")
    _, studies = find_input_studies(input, nested=output.nested)
    if len(studies) != 1:
        raise InputError(input.name, f"holds {len(studies)} studies ({', '.join(s for s, _ in studies[:5])}); "
                                     "send one study per job")
    for name in options:
        if name in output.refused_options:
            raise InputError(input.name, output.refused_options[name])
    step(0.1, f"predicting study {studies[0][0]}")
    start = time.perf_counter()
    predict_dataset(predictor, input, out, task=task, output=output, progress=False, **options)
    seconds = {"predict": round(time.perf_counter() - start, 3)}
    (result,) = read_study_results(out)
    if result.get("status", "ok") in ("ok", "warning"):
        step(0.85, "drawing the figure")
        start = time.perf_counter()
        try:
            report_function(task)(predictions=out, input=input, out=out / "report", progress=False)
        except (SpinelabError, OSError, ValueError) as err:  # a result without its picture is still the result
            log.warning("study %s: no figure: %s", result["study"], err)
        seconds["figure"] = round(time.perf_counter() - start, 3)
    return {"study": str(result["study"]), "status": result.get("status", "ok"), "error": result.get("error"),
            "seconds": seconds}


def worker_main(conn: Connection, model: str, options: dict[str, Any]) -> None:
    """The worker process: load ``model`` once (its task and route from its config), answer ``("ready", {task,
    route, info})``, then predict each job it is sent. Only this process imports torch and the model code.

    Messages out: ``("ready", {...})`` or ``("error", text)`` once; per job ``("progress", id, fraction,
    message)`` and one ``("done", id, summary)`` or ``("failed", id, error)``. ``None`` in ends the process.
    """
    from spinelab.errors import SpinelabError
    from spinelab.infer.ensemble import load_predictor
    from spinelab.tasks.catalog import run_route

    threads = options.pop("threads", None)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        route = run_route(model)
        task = route.task
        predictor = load_predictor(task, model, **options)
    except Exception as err:  # the server reports it on /health and /v1/models; the process ends
        conn.send(("error", str(err) if isinstance(err, SpinelabError) else f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", {"task": task, "route": route.name, "info": _jsonable(predictor.model_info)}))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the server went away
            return
        if message is None:
            return
        _, job_id, input, out, job_options = message
        def here(text: str, input: str = input) -> str:  # name the study as uploaded, not the server's folders
            return text.replace(f"{input}/", "").replace(f"{Path(input).parent}/", "")

        try:
            summary = predict_job(predictor, task=task, input=Path(input), out=Path(out), options=job_options,
                                  progress=lambda f, m, j=job_id: conn.send(("progress", j, f, m)))
            if summary.get("error"):
                summary["error"] = here(summary["error"])
            conn.send(("done", job_id, _jsonable(summary)))
        except SpinelabError as err:
            conn.send(("failed", job_id, here(str(err))))
        except Exception as err:  # any bad study fails its job, never the worker
            conn.send(("failed", job_id, here(f"{type(err).__name__}: {err}")))


class ModelWorker:
    """The server's side of one model: its process, its queue of job ids and the thread that feeds it.

    Args:
        name: the model's name in the API.
        path: the run folder or package (its task and route are known once the worker has loaded it);
        options: ``load_predictor``'s settings (and ``threads``, torch's thread count in the worker).
        store: the jobs (this worker sets the state of the jobs it runs).
    """

    def __init__(self, name: str, path: Path, store: JobStore, options: dict[str, Any] | None = None) -> None:
        self.name, self.path, self.store = name, Path(path), store
        self.task: str | None = None
        self.options = dict(options or {})
        self.state = "starting"  # starting, ready, failed
        self.error: str | None = None
        self.info: dict[str, Any] = {}
        self.route: str | None = None
        self.started_at = time.monotonic()
        self.ready_seconds: float | None = None
        self.restarts = 0
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ctx = mp.get_context("spawn")  # a clean interpreter: no fork of the server's threads or sockets
        self._process: Any = None
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._run, name=f"spinelab-worker-{name}", daemon=True)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        self._thread.start()

    def submit(self, job_id: str) -> None:
        """Queue a job (jobs run in the order they were submitted)."""
        self._queue.put(job_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to end after its job, then end it."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._end_process(timeout=2.0)

    def _spawn(self) -> None:
        parent, child = self._ctx.Pipe()
        self._process = self._ctx.Process(target=worker_main, args=(child, str(self.path), self.options),
                                          name=f"spinelab-worker-{self.name}", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent

    def _end_process(self, timeout: float) -> None:
        if self._process is None:
            return
        if self._process.is_alive() and self._conn is not None:
            with contextlib.suppress(OSError, ValueError):  # the pipe may be closed already
                self._conn.send(None)
            self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)

    def _wait_ready(self) -> bool:
        """Wait for the model to load: True when ready; False (``state`` failed) when it could not."""
        while True:
            if self._conn.poll(_POLL_S):
                try:
                    kind, payload = self._conn.recv()
                except EOFError:
                    kind, payload = "error", f"the worker process ended (exit code {self._process.exitcode})"
                if kind == "ready":
                    self.task, self.route, self.info = payload["task"], payload["route"], payload["info"]
                    self.state = "ready"
                    self.ready_seconds = round(time.monotonic() - self.started_at, 3)
                    return True
                self.state, self.error = "failed", payload
                log.error("model %s (%s) could not be loaded: %s", self.name, self.path, payload)
                return False
            if not self._process.is_alive():
                self.state = "failed"
                self.error = f"the worker process ended while loading (exit code {self._process.exitcode})"
                return False

    def _run(self) -> None:
        self._spawn()
        self._wait_ready()
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self.store.get(job_id)
            if job is None:  # deleted while queued
                continue
            if self.state != "ready":
                self.store.update(job_id, state="failed", progress=1.0, message="failed",
                                  error=f"model {self.name} is not available: {self.error}")
                continue
            if not self._process.is_alive():  # it died while idle: a fresh one before the job
                self._respawn(f"the worker process ended while idle (exit code {self._process.exitcode})")
                if self.state != "ready":
                    self.store.update(job_id, state="failed", progress=1.0, message="failed",
                                      error=f"model {self.name} is not available: {self.error}")
                    continue
            self.store.update(job_id, state="running", progress=0.01, message="starting")
            try:
                self._conn.send(("job", job_id, str(job.input), str(job.out), job.options))
            except OSError:
                self._restart_after_crash(job_id)
            else:
                self._follow(job_id)
            self.store.finish_deleted(job_id)

    def _follow(self, job_id: str) -> None:
        """Relay the process's messages about ``job_id`` into the store until the job ends."""
        while True:
            gone = not self._process.is_alive()
            if self._conn.poll(_POLL_S):
                try:
                    message = self._conn.recv()
                except EOFError:  # the pipe closed: the process is going; wait for its exit code
                    self._process.join(5.0)
                    gone = True
                else:
                    if self._relay(job_id, message):
                        return
                    continue
            if gone:
                self._restart_after_crash(job_id)
                return

    def _relay(self, job_id: str, message: tuple[Any, ...]) -> bool:
        """Apply one message from the process to the job; True when the job ended."""
        kind = message[0]
        if kind == "progress":
            self.store.update(job_id, progress=round(float(message[2]), 3), message=message[3])
            return False
        if kind == "done":
            summary = message[2]
            failed = summary.get("status") == "failed"
            self.store.update(job_id, state="failed" if failed else "done", progress=1.0,
                              message="failed" if failed else "done", study=summary.get("study"),
                              status=summary.get("status"), error=summary.get("error"),
                              seconds=summary.get("seconds"))
            return True
        self.store.update(job_id, state="failed", progress=1.0, message="failed", error=message[2])
        return True

    def _restart_after_crash(self, job_id: str) -> None:
        """The process died on ``job_id``: fail the job, start a fresh process and wait for its model."""
        code = self._process.exitcode
        self.store.update(job_id, state="failed", progress=1.0, message="failed",
                          error=f"the worker process stopped while predicting this study (exit code {code}); "
                                "it was restarted")
        self._respawn(f"model {self.name}: worker died on job {job_id} (exit code {code})")

    def _respawn(self, why: str) -> None:
        """End what is left of the process, start a fresh one and wait for its model."""
        log.error("%s; restarting it", why)
        self.restarts += 1
        self._end_process(timeout=1.0)
        self.state, self.started_at = "starting", time.monotonic()
        self._spawn()
        self._wait_ready()
