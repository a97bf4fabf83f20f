"""Route ensembles: several run folders of one task (any routes) predict each study; their outputs are averaged.

``EnsemblePredictor`` follows ``tasks.route.Predictor``, so ``infer.batch.predict_dataset``, the report and the
service take it unchanged. Binary probabilities (cervical) and class probabilities (lumbar grades) are both
weighted means, so nothing here depends on the task. A member that fails or refuses a study is named in the
study's warnings and status (``warning``); the others' renormalised mean is used. When every member fails,
the study takes the ensemble's fallback (the weighted mean of the members' priors), as a single run's would.

``fit_weights`` finds non-negative weights summing to 1 that minimise the task's metric on the members'
out-of-fold predictions (``TaskOutput.oof``); ``spinelab ensemble fit`` writes them as ``weights.json``, which
``spinelab predict --weights`` reads back.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.errors import ConfigError, InputError, SpinelabError
from spinelab.infer.checks import StudyRefusedError
from spinelab.infer.result import SCHEMA_VERSION, StudyResult

__all__ = ["EnsemblePredictor", "load_predictor", "load_ensemble", "run_route_of_task", "parse_weights", "fit_weights",
           "combine_results", "WEIGHTS_SCHEMA_VERSION"]

log = logging.getLogger("spinelab")
#: Version of the ``weights.json`` layout written by ``fit_weights``.
WEIGHTS_SCHEMA_VERSION = 1


def load_predictor(task: str, model: str | Path, **options: Any) -> Any:
    """The predictor of the run folder or model package ``model`` (its route from the catalog), built with the
    run's ``infer`` settings where ``options`` (``device``, ``precision``, ``compile``, ``tta``; ``folds``,
    ``strict``; ``runtime``: ``torch`` or ``onnx``) leave them ``None``. A package is verified against its
    manifest first (``spinelab.deploy.manifest.verify_package``).

    Raises:
        ConfigError: the run was trained for another task.
        InputError: a package file that does not match its manifest.
    """
    from spinelab.infer.runtime import run_inference_options
    from spinelab.tasks.route import resolve

    route = run_route_of_task(task, model)
    runtime, tta = run_inference_options(model, device=options.get("device"), precision=options.get("precision"),
                                         compile=options.get("compile"), tta=options.get("tta"),
                                         runtime=options.get("runtime"))
    return resolve(route.predictor)(model, folds=options.get("folds"), runtime=runtime, tta=tta,
                                    strict=bool(options.get("strict", False)))


def run_route_of_task(task: str, model: str | Path) -> Any:
    """The route the run folder ``model`` was trained with.

    Raises:
        ConfigError: it was trained for another task than ``task``.
        InputError: not a run folder.
    """
    from spinelab.tasks.catalog import run_route

    route = run_route(model)
    if route.task != task:
        raise ConfigError(f"{model}: the run folder was trained for {route.task}, not {task}")
    return route


def load_ensemble(task: str, models: Sequence[str | Path], weights: str | Sequence[float] | None = None,
                  **options: Any) -> EnsemblePredictor:
    """An ``EnsemblePredictor`` of the run folders ``models`` (``weights``: see ``parse_weights``)."""
    w = parse_weights(weights, models)
    return EnsemblePredictor([load_predictor(task, m, **options) for m in models], w)


def _route_key(predictor: Any) -> str:
    """``task/route`` of a predictor's run config."""
    from spinelab.tasks.catalog import route_of

    return route_of(predictor.cfg).key


class EnsemblePredictor:
    """Weighted mean of several predictors of one task (``tasks.route.Predictor``, built from run folders).

    Args:
        members: the predictors (two or more), in the order the weights refer to.
        weights: one non-negative weight per member (normalised to sum 1); equal weights when ``None``.
    """

    def __init__(self, members: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        if len(members) < 2:
            raise ConfigError("an ensemble needs two or more models")
        self.members = list(members)
        self.weights = _normalised(weights if weights is not None else [1.0] * len(members), len(members))
        self.cfg = self.members[0].cfg
        self.routes = [_route_key(m) for m in self.members]
        tasks = {r.split("/")[0] for r in self.routes}
        if len(tasks) > 1:
            raise ConfigError(f"an ensemble's models must be of one task; got routes {', '.join(self.routes)}")
        infos = [m.model_info for m in self.members]
        #: ``route (run folder name)`` of each member, for warnings.
        self.labels = [f"{route} ({Path(str(info.get('run_dir', f'member {i}'))).name})"
                       for i, (route, info) in enumerate(zip(self.routes, infos, strict=True))]
        self._info = {
            "ensemble": [{"run_dir": info.get("run_dir"), "route": route, "weight": w,
                          "weights_sha256": info.get("weights_sha256"), "folds": info.get("folds"),
                          "experiment": info.get("experiment"), "tta": info.get("tta")}
                         for info, route, w in zip(infos, self.routes, self.weights, strict=True)],
            **{k: infos[0].get(k) for k in ("precision", "strict", "spinelab")},
        }

    @property
    def model_info(self) -> dict[str, Any]:
        """Every member (run folder, route, weight, folds, weights' SHA-256), then the shared settings."""
        return self._info

    def set_output_dir(self, out: str | Path) -> None:
        """Hand the prediction folder to the members that write files per study."""
        for m in self.members:
            if hasattr(m, "set_output_dir"):
                m.set_output_dir(out)

    def predict_study(self, study: str | Path, study_id: str | None = None, **options: Any) -> StudyResult:
        """Every member's ``predict_study``, combined (``combine_results``)."""
        return self._combine(study_id, [lambda m=m: m.predict_study(study, study_id, **options)
                                        for m in self.members])

    def for_dataset(self, input: Path, split: str, **options: Any) -> Callable[[str, Path], StudyResult]:
        """The per-study function of ``predict_dataset``: each member's own (its ``for_dataset`` when it has one)."""
        fns = []
        for m in self.members:
            if hasattr(m, "for_dataset"):
                fns.append(m.for_dataset(input, split, **options))
            else:
                fns.append(lambda sid, path, m=m: m.predict_study(path, sid, **options))
        return lambda sid, path: self._combine(sid, [lambda f=f: f(sid, path) for f in fns])

    def _combine(self, study_id: str | None, calls: list[Callable[[], StudyResult]]) -> StudyResult:
        """Run each member; a member's error is recorded, and raised when no member predicted the study."""
        results: list[StudyResult | None] = []
        errors: list[Exception | None] = []
        for call in calls:
            try:
                results.append(call())
                errors.append(None)
            except Exception as err:  # a member's failure is the study's news, not the end of the ensemble
                results.append(None)
                errors.append(err)
        if all(r is None for r in results):  # refused when every member refused, else failed with the first error
            failures = [e for e in errors if not isinstance(e, StudyRefusedError)]
            raise (failures or errors)[0]
        return combine_results(study_id, results, errors, self.weights, labels=self.labels, model=self.model_info)

    def fallback(self, study_id: str, error: str) -> StudyResult:
        """The weighted mean of the members' fallbacks (their training priors), status ``failed``."""
        priors: list[StudyResult | None] = [m.fallback(study_id, error) for m in self.members]
        mean = _weighted_output(priors, self.weights)
        return StudyResult(schema_version=SCHEMA_VERSION, study=study_id, status="failed", error=error,
                           warnings=[f"prediction failed, prior used: {error}"], model=self.model_info, **mean)


def _normalised(weights: Sequence[float], n: int) -> list[float]:
    """``weights`` divided by their sum.

    Raises:
        ConfigError: not ``n`` finite non-negative numbers with a positive sum.
    """
    w = np.asarray(list(weights), dtype=np.float64)
    if len(w) != n:
        raise ConfigError(f"{len(w)} weights for {n} models; give one weight per --model")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"ensemble weights must be non-negative numbers with a positive sum; got {w.tolist()}")
    return [float(v) for v in w / w.sum()]


def _weighted_output(results: Sequence[StudyResult | None], weights: Sequence[float]) -> dict[str, Any]:
    """``{"probabilities": ...}`` or ``{"grades": ...}``: the weighted mean over the results given (``None``
    skipped, the others' weights renormalised)."""
    pairs = [(r, w) for r, w in zip(results, weights, strict=True) if r is not None]
    total = sum(w for _, w in pairs)
    first = pairs[0][0]
    if first.probabilities is not None:
        return {"probabilities": {k: float(sum(w * r.probabilities[k] for r, w in pairs) / total)
                                  for k in first.probabilities}}
    grades = {}
    for target, dist in first.grades.items():
        mean = {g: sum(w * r.grades[target][g] for r, w in pairs) / total for g in dist}
        norm = sum(mean.values())
        grades[target] = {g: round(float(v / norm), 6) for g, v in mean.items()}
    return {"grades": grades}


def combine_results(study_id: str | None, results: Sequence[StudyResult | None],
                    errors: Sequence[Exception | None], weights: Sequence[float], *, labels: Sequence[str],
                    model: dict[str, Any]) -> StudyResult:
    """One study's ensemble result from its members' (``None`` where a member raised ``errors[i]``).

    The outputs are the weighted mean over the members that predicted; the route's own keys (slice ranges,
    boxes, points) and ``input`` are the first such member's; ``members`` lists each member's status, weight,
    warnings and outputs. Warnings are the members' (each once) plus one per member that failed.
    """
    warnings: list[str] = []
    members = []
    for r, err, w, label in zip(results, errors, weights, labels, strict=True):
        entry: dict[str, Any] = {"member": label, "weight": w}
        if r is None:
            status = "refused" if isinstance(err, StudyRefusedError) else "failed"
            text = str(err) if isinstance(err, SpinelabError) else f"{type(err).__name__}: {err}"
            entry.update(status=status, error=text)
            warnings.append(f"ensemble member {label} {status}: {text}; the other members' mean is used")
            log.warning("%s: ensemble member %s %s: %s", study_id or "study", label, status, text)
        else:
            entry.update(status=r.status, warnings=r.warnings,
                         **({"probabilities": r.probabilities} if r.probabilities is not None
                            else {"grades": r.grades}))
            warnings += [w_ for w_ in r.warnings if w_ not in warnings]
        members.append(entry)
    first = next(r for r in results if r is not None)
    own = {k: v for k, v in (first.model_extra or {}).items() if k not in ("members",)}
    return StudyResult(schema_version=SCHEMA_VERSION, study=study_id,
                       status="warning" if warnings else "ok", warnings=warnings, input=first.input,
                       model=model, members=members, **_weighted_output(results, weights), **own)


def parse_weights(value: str | Path | Sequence[float] | None, models: Sequence[str | Path]) -> list[float] | None:
    """Ensemble weights from ``--weights``: ``None`` (equal), numbers (``"0.7,0.3"`` or a list), or a
    ``weights.json`` written by ``spinelab ensemble fit`` for the same run folders (by name, in order).

    Raises:
        ConfigError: a weight that is not a number, a count that differs from the models', or a weights file
            fitted for other run folders.
        InputError: the weights file cannot be read or is not one of spinelab's.
    """
    if value is None:
        return None
    if not isinstance(value, str | Path):
        return _normalised(value, len(models))
    text = str(value)
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        return _read_weights_file(path, models)
    try:
        numbers = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights must be comma-separated numbers (0.7,0.3) or a weights.json file; "
                          f"got {text!r}") from None
    return _normalised(numbers, len(models))


def _read_weights_file(path: Path, models: Sequence[str | Path]) -> list[float]:
    """The weights of a ``weights.json`` whose members are ``models`` (same run folder names, same order)."""
    if not path.is_file():
        raise InputError(path, "weights file not found (write it with `spinelab ensemble fit`)")
    try:
        data = json.loads(path.read_text())
        members = data["members"]
        names = [Path(m["run_dir"]).name for m in members]
        weights = [float(m["weight"]) for m in members]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"not a spinelab weights file ({type(err).__name__}: {err})") from None
    given = [Path(m).name for m in models]
    if names != given:
        raise ConfigError(f"{path} was fitted for the runs {', '.join(names)}; --model gives {', '.join(given)}")
    return _normalised(weights, len(models))


def _simplex_fit(score: Callable[[np.ndarray], float], n: int) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise ``score``: SLSQP from equal weights, kept only when it
    beats equal weights and every single member (the metric need not be convex in the weights)."""
    from scipy.optimize import minimize

    candidates = [np.full(n, 1 / n), *np.eye(n)]
    res = minimize(lambda w: score(np.clip(w, 0, None) / max(np.clip(w, 0, None).sum(), 1e-12)),
                   np.full(n, 1 / n), method="SLSQP", bounds=[(0.0, 1.0)] * n,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}], options={"maxiter": 200})
    w = np.clip(res.x, 0, None)
    if w.sum() > 0:
        candidates.append(w / w.sum())
    return min(candidates, key=score)


def fit_weights(models: Sequence[str | Path], out: str | Path) -> Path:
    """Fit ensemble weights on the runs' out-of-fold predictions and write ``out`` (``weights.json``).

    Every run's task gives the out-of-fold reader and the metric (``TaskOutput.oof`` / ``score_wide``); the
    studies every run has out-of-fold predictions for are used.

    Raises:
        ConfigError: fewer than two runs, or runs of different tasks.
        InputError: a run without out-of-fold predictions, or no study shared by all runs.
    """
    import pandas as pd

    from spinelab.io.atomic import atomic_write_json
    from spinelab.tasks.catalog import run_route, task_output

    if len(models) < 2:
        raise ConfigError("an ensemble needs two or more --model run folders")
    routes = [run_route(m) for m in models]
    tasks = sorted({r.task for r in routes})
    if len(tasks) > 1:
        raise ConfigError(f"the runs are of different tasks ({', '.join(tasks)}); an ensemble is of one task")
    output = task_output(tasks[0])
    if output.oof is None or output.score_wide is None:
        raise ConfigError(f"task {tasks[0]!r} has no out-of-fold reader")
    frames, labels = [], None
    for m in models:
        wide, truth = output.oof(Path(m))
        frames.append(wide)
        labels = truth if labels is None else labels
    shared = frames[0].index
    for f in frames[1:]:
        shared = shared.intersection(f.index)
    if not len(shared):
        raise InputError(Path(models[0]), "no study has out-of-fold predictions in every run (were they trained "
                                          "on the same dataset?)")
    columns = list(frames[0].columns)
    stack = np.stack([f.loc[shared, columns].to_numpy(np.float64) for f in frames])

    def score(w: np.ndarray) -> float:
        return float(output.score_wide(labels, pd.DataFrame(np.tensordot(w, stack, axes=1), index=shared,
                                                            columns=columns)))

    n = len(models)
    weights = _simplex_fit(score, n)
    record = {
        "schema_version": WEIGHTS_SCHEMA_VERSION, "task": tasks[0],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "studies": len(shared),
        "oof_score": score(weights), "equal_weights_score": score(np.full(n, 1 / n)),
        "members": [{"run_dir": str(m), "route": r.key, "weight": float(w), "oof_score": score(np.eye(n)[i])}
                    for i, (m, r, w) in enumerate(zip(models, routes, weights, strict=True))],
    }
    return atomic_write_json(Path(out), record)
