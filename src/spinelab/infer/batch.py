"""Predict many studies: progress bar, one JSON per study, a manifest of the call, never a half-written file.

``predict_dataset`` is the one prediction path of every route: discovery, this loop, the submission, the
evaluation. Its loop, ``predict_studies``, takes ``predict_one(study_id, path) -> StudyResult`` and a
``fallback(study_id, error) -> StudyResult`` that still yields a valid prediction (for a submission must have
every row) marked as failed. A study that fails an input rule (``StudyRefusedError``) gets the same fallback
marked ``refused`` with its reasons. ``manifest.json`` lists the studies of this call, so a reused output
folder never mixes old and new results.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spinelab.errors import ConfigError, InputError, SpinelabError
from spinelab.infer.checks import STATUSES, StudyRefusedError
from spinelab.infer.result import SCHEMA_VERSION, StudyResult
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.io.files import file_sha256

if TYPE_CHECKING:
    from spinelab.tasks.route import Predictor, TaskOutput

__all__ = ["predict_dataset", "predict_studies", "run_study", "write_study", "write_manifest", "study_function",
           "refused_result", "progress_bar", "read_study_results",
           "status_counts", "summary_line", "file_sha256", "weights_sha256", "SCHEMA_VERSION", "MANIFEST"]

MANIFEST = "manifest.json"
#: where the per-study functions run: this process, or Ray workers (``spinelab[ray]``)
ENGINES = ("local", "ray")

log = logging.getLogger("spinelab")


def progress_bar(*, transient: bool = False) -> Progress:
    """The rich progress bar every long spinelab loop uses."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=transient)


def weights_sha256(run_dir: str | Path, paths: Iterable[str | Path]) -> dict[str, str]:
    """``{"<path relative to run_dir>": sha256}`` of the weight files a predictor loaded (hash each once)."""
    run_dir = Path(run_dir)
    return {Path(p).relative_to(run_dir).as_posix(): file_sha256(p) for p in paths}


def status_counts(results: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many results have each status, in ``STATUSES`` order."""
    counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        counts[r.get("status", "ok")] = counts.get(r.get("status", "ok"), 0) + 1
    return counts


def summary_line(counts: dict[str, int]) -> str:
    """``"N studies: a ok, b warning, c refused, d failed"``."""
    return f"{sum(counts.values())} studies: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)


def predict_studies(studies: Sequence[tuple[str, Path]], predict_one: Callable[[str, Path], StudyResult],
                    fallback: Callable[[str, str], StudyResult], *, out_dir: Path,
                    progress: bool = True, description: str = "predict", task: str | None = None,
                    model: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run ``predict_one`` on every study, writing ``out_dir/studies/<id>.json`` atomically, then
    ``out_dir/manifest.json`` (``task`` and ``model`` go into it).

    A study that raises (a result that does not validate raises where it is built) gets ``fallback``'s
    prediction and the loop goes on: ``refused`` with ``reasons`` for ``StudyRefusedError``, ``failed`` with the
    error otherwise. Returns the per-study JSONs (``StudyResult.to_json``) in input order.
    """
    results = []
    (out_dir / "studies").mkdir(parents=True, exist_ok=True)
    with progress_bar() as bar:
        task_id = bar.add_task(description, total=len(studies), visible=progress)
        for sid, path in studies:
            record = run_study(sid, path, predict_one, fallback)
            write_study(out_dir, sid, record)
            results.append(record)
            bar.advance(task_id)
    write_manifest(out_dir, results, [sid for sid, _ in studies], task=task, model=model)
    return results


def run_study(sid: str, path: Path, predict_one: Callable[[str, Path], StudyResult],
              fallback: Callable[[str, str], StudyResult]) -> dict[str, Any]:
    """One study's JSON record: its prediction, or the fallback marked ``refused`` or ``failed``.

    The one per-study function of every engine (the local loop, a Ray worker): a run over many machines
    records each failure exactly as a local run does.
    """
    start = time.perf_counter()
    try:
        result = _as_result(predict_one(sid, path))
    except StudyRefusedError as err:
        log.warning("study %s refused: %s", sid, err)
        result = refused_result(fallback(sid, str(err)), err)
    except SpinelabError as err:
        log.warning("study %s failed: %s", sid, err)
        result = fallback(sid, str(err))
    except Exception as err:  # a long run survives any bad study; the trace goes into its JSON
        log.warning("study %s failed: %s: %s", sid, type(err).__name__, err)
        result = fallback(sid, f"{type(err).__name__}: {err}")
        result.traceback = traceback.format_exc(limit=5)
    if result.seconds is None:
        result.seconds = round(time.perf_counter() - start, 3)
    return result.to_json()


def write_study(out_dir: Path, sid: str, record: dict[str, Any]) -> Path:
    """``out_dir/studies/<sid>.json``, written atomically."""
    return atomic_write_json(out_dir / f"studies/{sid}.json", record)


def write_manifest(out_dir: Path, results: list[dict[str, Any]], ids: Sequence[str], *, task: str | None,
                   model: dict[str, Any] | None) -> Path:
    """``out_dir/manifest.json``: the studies of this call (in input order), their status, the model."""
    return atomic_write_json(out_dir / MANIFEST, {
        "schema_version": SCHEMA_VERSION, "task": task,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": model or {}, "counts": status_counts(results),
        "studies": [{"study": r["study"], "file": f"studies/{sid}.json", "status": r.get("status", "ok")}
                    for r, sid in zip(results, ids, strict=True)]})


def predict_dataset(predictor: Predictor | Callable[[], Predictor], input: str | Path, out: str | Path, *, task: str,
                    output: TaskOutput, labels: str | Path | None = None, progress: bool = True,
                    engine: str = "local", ray_address: str | None = None, dicom_out: bool = False,
                    **options: Any) -> dict[str, Any]:
    """Predict every study under ``input`` with any route's predictor: ``submission.csv``, ``predictions.csv``,
    ``studies/<id>.json``, ``manifest.json`` and ``evaluation.json`` when labels exist.

    Args:
        predictor: built once from the run folder (``tasks.route.Predictor``), or a function that builds it,
            called after discovery (a bad input is refused before any model is loaded); its ``for_dataset(input, split,
            **options)``, when it has one, gives the per-study function (e.g. with the dataset's series
            descriptions), else ``predict_study(path, study_id, **options)`` is called.
        output: the task's discovery, submission format and metric.
        engine: ``local`` (this process) or ``ray``: the same per-study function in Ray actors (one predictor
            per actor, built by ``predictor``, which must then be picklable), on the cluster at ``ray_address``
            (``None``: the running Ray instance, else a new local one); see ``spinelab.ray_engine``.
        dicom_out: also write each predicted DICOM study's SEG and SR into ``out/dicom/<study id>/``
            (``infer.dicom_results``); the files are listed in the study JSON under ``dicom_files``.
        options: per-study options of the task (cervical: ``series``).

    Returns:
        ``{"submission", "predictions", "manifest", "evaluation" (path or None), "studies": n, "failed": n,
        "counts": {status: n}}``.
    """
    from spinelab.infer.studies import find_input_studies, label_file

    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose {' or '.join(ENGINES)}")
    input, out = Path(input), Path(out)
    split, studies = find_input_studies(input, nested=output.nested)
    if output.check_input is not None:
        output.check_input(input, split, studies)
    if engine == "ray":
        from spinelab.ray_engine import predict_studies_on_ray

        results = predict_studies_on_ray(studies, functools.partial(study_function, predictor, input, split, out,
                                                                    options, dicom_out=dicom_out),
                                         out_dir=out, progress=progress, description=f"{task} predict (ray)",
                                         task=task, address=ray_address)
    else:
        one, fallback, model_info = study_function(predictor, input, split, out, options, dicom_out=dicom_out)
        results = predict_studies(studies, one, fallback, out_dir=out, progress=progress,
                                  description=f"{task} predict", task=task, model=model_info)
    submission_frame, wide = output.frames(results)
    submission = atomic_write_csv(out / "submission.csv", submission_frame)
    predictions = atomic_write_csv(out / "predictions.csv", wide)
    counts = status_counts(results)
    label_path = label_file(input, split, labels)
    evaluation = output.evaluate(results, label_path, out) if label_path is not None else None
    return {"submission": submission, "predictions": predictions, "manifest": out / MANIFEST,
            "evaluation": evaluation, "studies": len(results), "failed": counts["failed"], "counts": counts}


def study_function(predictor: Predictor | Callable[[], Predictor], input: Path, split: str, out: Path,
                   options: dict[str, Any], *, dicom_out: bool = False
                   ) -> tuple[Callable[[str, Path], StudyResult], Callable[[str, str], StudyResult], dict[str, Any]]:
    """``(predict_one(study_id, path), fallback(study_id, error), model_info)`` of a predictor (built here when
    given as a function): what the local loop and every Ray worker run per study; with ``dicom_out`` each
    study's SEG and SR are written after its prediction."""
    if callable(predictor) and not hasattr(predictor, "predict_study"):
        predictor = predictor()
    if hasattr(predictor, "set_output_dir"):  # a route that writes files per study (fracseg: fracture maps)
        predictor.set_output_dir(out)
    for_dataset = getattr(predictor, "for_dataset", None)
    if for_dataset is not None:
        one = for_dataset(input, split, **options)
    else:
        def one(sid: str, path: Path) -> StudyResult:
            return predictor.predict_study(path, sid, **options)
    if dicom_out:
        one = _with_dicom_results(one, out, series=options.get("series"))
    return one, predictor.fallback, predictor.model_info


def _with_dicom_results(one: Callable[[str, Path], StudyResult], out: Path, *,
                        series: str | None) -> Callable[[str, Path], StudyResult]:
    """``one`` followed by the study's DICOM SEG and SR; a writer's failure is a warning of the study, never
    a failed prediction."""
    from spinelab.infer.dicom_results import DICOM_DIR, write_dicom_results

    def wrapped(sid: str, path: Path) -> StudyResult:
        result = _as_result(one(sid, path))
        try:
            files = write_dicom_results(result, path, out / DICOM_DIR / sid, series=series)
        except Exception as err:  # noqa: BLE001 - the prediction stands; the reason goes into its JSON
            message = f"no DICOM results: {type(err).__name__}: {err}"
            log.warning("study %s: %s", sid, message)
            result.warnings = [*result.warnings, message]
            result.status = "warning" if result.status == "ok" else result.status
            return result
        result.dicom_files = [f.relative_to(out).as_posix() for f in files]
        return result

    return wrapped


def _as_result(result: Any) -> StudyResult:
    """A predictor's result, which the contract makes a ``StudyResult`` (validated where it was built)."""
    if not isinstance(result, StudyResult):
        raise TypeError(f"a predictor returned {type(result).__name__}, not a StudyResult")
    return result


def refused_result(prior: StudyResult, err: StudyRefusedError) -> StudyResult:
    """``prior`` (a predictor's fallback) marked ``refused`` with the rule's reasons, facts and warnings."""
    record = prior.to_json()
    record.pop("error", None)
    record.update(status="refused", reasons=err.reasons, input=err.facts,
                  warnings=[f"refused, prior used: {err}", *err.warnings])
    return StudyResult.model_validate(record)


def read_study_results(predictions: str | Path) -> list[dict[str, Any]]:
    """The per-study JSONs of the last ``predict_studies`` call (``predictions`` may be the folder or a file
    in it): the studies its ``manifest.json`` lists, or every ``studies/*.json`` for folders written before
    manifests existed.

    Raises:
        InputError: no manifest and no ``studies/*.json`` there, or a listed study file is missing.
    """
    predictions = Path(predictions)
    folder = predictions if predictions.is_dir() else predictions.parent
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            listed = [folder / s["file"] for s in json.loads(manifest.read_text())["studies"]]
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(manifest, f"not a spinelab manifest ({type(err).__name__}: {err})") from err
        missing = [p for p in listed if not p.is_file()]
        if missing:
            raise InputError(missing[0], f"listed in {MANIFEST} but missing")
        return [json.loads(p.read_text()) for p in listed]
    results = [json.loads(p.read_text()) for p in sorted((folder / "studies").glob("*.json"))]
    if not results:
        raise InputError(predictions, "no per-study predictions (studies/*.json); run `spinelab predict` first")
    return results
