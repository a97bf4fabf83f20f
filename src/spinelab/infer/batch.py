"""Predict many studies: progress bar, one JSON per study, failures recorded, never a half-written file.

Both pipelines use this loop; a task supplies ``predict_one(study_id, path) -> dict`` and a
``fallback(study_id, error) -> dict`` that still yields a valid prediction (for a submission must have
every row) marked as failed.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spinelab.errors import InputError, SpinelabError
from spinelab.io.atomic import atomic_write_json

__all__ = ["predict_studies", "progress_bar", "read_study_results"]

log = logging.getLogger("spinelab")


def progress_bar(*, transient: bool = False) -> Progress:
    """The rich progress bar every long spinelab loop uses."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=transient)


def predict_studies(studies: Sequence[tuple[str, Path]], predict_one: Callable[[str, Path], dict[str, Any]],
                    fallback: Callable[[str, str], dict[str, Any]], *, out_dir: Path,
                    progress: bool = True, description: str = "predict") -> list[dict[str, Any]]:
    """Run ``predict_one`` on every study, writing ``out_dir/studies/<id>.json`` atomically.

    A study that raises gets ``fallback``'s prediction, a ``failed`` entry with the error, and the loop
    goes on. Returns the per-study result dicts in input order.
    """
    results = []
    (out_dir / "studies").mkdir(parents=True, exist_ok=True)
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(studies), visible=progress)
        for sid, path in studies:
            start = time.perf_counter()
            try:
                result = predict_one(sid, path)
            except SpinelabError as err:
                log.warning("study %s failed: %s", sid, err)
                result = fallback(sid, str(err))
            except Exception as err:  # a long run survives any bad study; the trace goes into its JSON
                log.warning("study %s failed: %s: %s", sid, type(err).__name__, err)
                result = fallback(sid, f"{type(err).__name__}: {err}")
                result["traceback"] = traceback.format_exc(limit=5)
            result.setdefault("seconds", round(time.perf_counter() - start, 3))
            atomic_write_json(out_dir / "studies" / f"{sid}.json", result)
            results.append(result)
            bar.advance(task)
    return results


def read_study_results(predictions: str | Path) -> list[dict[str, Any]]:
    """The per-study JSONs written by ``predict_studies`` (``predictions`` may be the folder or a file in it).

    Raises:
        InputError: no ``studies/*.json`` there.
    """
    import json

    predictions = Path(predictions)
    folder = predictions if predictions.is_dir() else predictions.parent
    results = [json.loads(p.read_text()) for p in sorted((folder / "studies").glob("*.json"))]
    if not results:
        raise InputError(predictions, "no per-study predictions (studies/*.json); run `spinelab predict` first")
    return results
