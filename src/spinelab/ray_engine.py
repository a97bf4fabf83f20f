"""Batch work on a Ray cluster (``--engine ray``): the local engine's per-study functions as Ray tasks and actors.

The only module that imports ``ray`` (the optional extra ``spinelab[ray]``), and only when a function here
runs. Nothing about the work changes with the engine: ``spinelab cache build`` runs the same
``io.cache._cache_one`` per series as Ray tasks, ``spinelab predict`` the same ``infer.batch.run_study`` per
study in Ray actors that each build the predictor once; the driver (this process) writes every output file
atomically, in the layout and with the records of a local run, so the two engines give the same files.

Ray is reached at ``address`` (``ray://head:10001``, ``auto`` or ``host:6379``); ``None`` uses the Ray
instance this process already started, else starts a local one and stops it at the end. On a cluster every
node needs spinelab installed (the same version) and the dataset, cache and run folders on shared storage at
the same paths; outputs are written by the driver only.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from spinelab.errors import InputError

__all__ = ["ray_session", "map_series_on_ray", "predict_studies_on_ray", "worker_count"]

log = logging.getLogger("spinelab")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:  # pragma: no cover - the extra is installed in CI
        raise InputError("ray", "--engine ray needs the ray extra: pip install 'spinelab[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """The ``ray`` module, connected: to ``address``, to the instance already running in this process, or to
    a new local instance (stopped when the block ends; one this process did not start is left running)."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise InputError(address or "ray", f"cannot start or reach Ray: {err}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_count(ray: Any, jobs: int) -> int:
    """One worker per CPU of the cluster, at most one per job."""
    return max(1, min(jobs, int(ray.cluster_resources().get("CPU", 1))))


def map_series_on_ray(function: Callable[..., Any], args: Sequence[tuple[Any, ...]],
                      record: Callable[[int, Any, str | None], None], stop: Callable[[], bool], *,
                      address: str | None = None) -> None:
    """``function(*a)`` for each ``a`` in ``args`` as Ray tasks (one CPU each); ``record(i, result, error)``
    as each finishes, in completion order (``error``: the task or its worker died). No new task is waited for
    once ``stop()`` is true (a fatal write error)."""
    with ray_session(address) as ray:
        remote = ray.remote(num_cpus=1, max_retries=0)(function)
        pending = {remote.remote(*a): i for i, a in enumerate(args)}
        while pending and not stop():
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                record(i, ray.get(done[0]), None)
            except ray.exceptions.RayError as err:
                record(i, None, f"{type(err).__name__}: {_first_line(err)}")
        for ref in pending:
            ray.cancel(ref, force=True)


class _StudyWorker:
    """A Ray actor: builds the predictor once (``setup``), then runs ``run_study`` per study."""

    def __init__(self, setup: Callable[[], tuple[Any, Any, dict[str, Any]]]) -> None:
        self.one, self.fallback, self.model_info = setup()

    def info(self) -> dict[str, Any]:
        return self.model_info

    def run(self, sid: str, path: str) -> dict[str, Any]:
        from spinelab.infer.batch import run_study

        return run_study(sid, Path(path), self.one, self.fallback)

    def fail(self, sid: str, error: str) -> dict[str, Any]:
        """The fallback record of a study whose worker died (another actor answers)."""
        result = self.fallback(sid, error)
        result.seconds = 0.0
        return result.to_json()


def predict_studies_on_ray(studies: Sequence[tuple[str, Path]], setup: Callable[[], tuple[Any, Any, dict[str, Any]]],
                           *, out_dir: Path, progress: bool = True, description: str = "predict (ray)",
                           task: str | None = None, address: str | None = None) -> list[dict[str, Any]]:
    """``infer.batch.predict_studies`` on Ray: the same records, files and manifest.

    ``setup()`` (``infer.batch.study_function`` with its arguments bound) runs once in each actor. A study
    whose ``studies/<id>.json`` is already there from the same model, with a status other than ``failed``, is
    not predicted again (a rerun after a killed run does the rest); a failed one is retried.
    """
    from spinelab.infer.batch import progress_bar, write_manifest, write_study

    (out_dir / "studies").mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any] | None] = [None] * len(studies)
    with ray_session(address) as ray:
        actor_class = ray.remote(num_cpus=1, max_restarts=1)(_StudyWorker)
        n = worker_count(ray, len(studies))
        actors = [actor_class.remote(setup) for _ in range(n)]
        try:
            model_info = ray.get(actors[0].info.remote())
        except ray.exceptions.RayError as err:
            raise InputError("ray", f"the predictor could not be built in a Ray worker: {_first_line(err)}") from None
        todo = []
        for i, (sid, _path) in enumerate(studies):
            done = _done_record(out_dir, sid, model_info)
            if done is not None:
                results[i] = done
            else:
                todo.append(i)
        if len(studies) - len(todo):
            log.info("%d of %d studies already predicted by this model in %s: skipped", len(studies) - len(todo),
                     len(studies), out_dir)
        with progress_bar() as bar:
            bar_id = bar.add_task(description, total=len(studies), completed=len(studies) - len(todo),
                                  visible=progress)
            queue = list(reversed(todo))
            pending: dict[Any, tuple[int, Any]] = {}

            def submit(actor: Any) -> None:
                if queue:
                    i = queue.pop()
                    sid, path = studies[i]
                    pending[actor.run.remote(sid, str(path))] = (i, actor)

            for actor in actors:
                submit(actor)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                i, actor = pending.pop(ready[0])
                sid = studies[i][0]
                try:
                    record = ray.get(ready[0])
                except ray.exceptions.RayError as err:
                    error = f"worker failed: {type(err).__name__}: {_first_line(err)}"
                    log.warning("study %s failed: %s", sid, error)
                    record = ray.get(actors[0].fail.remote(sid, error))
                write_study(out_dir, sid, record)
                results[i] = record
                bar.advance(bar_id)
                submit(actor)
        for actor in actors:
            ray.kill(actor)
    final = [r for r in results if r is not None]
    write_manifest(out_dir, final, [sid for sid, _ in studies], task=task, model=model_info)
    return final


def _done_record(out_dir: Path, sid: str, model_info: dict[str, Any]) -> dict[str, Any] | None:
    """The study's record from an earlier run with the same model, unless it failed or cannot be read."""
    path = out_dir / "studies" / f"{sid}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") == "failed":
        return None
    if json.dumps(record.get("model"), sort_keys=True) != json.dumps(model_info, sort_keys=True):
        return None
    return record


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
