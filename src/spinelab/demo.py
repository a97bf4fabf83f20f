"""``make demo``: synthetic dataset -> cache -> folds -> train -> predict -> score -> report.

Runs the whole pipeline of a task on a small synthetic dataset on CPU, printing each step and, at the
end, where every result is. ``python -m spinelab.demo --task cervical|lumbar|all --out demo_out``.
Every task with a ``Demo`` in the catalog (``spinelab.tasks.catalog``) takes part; its default route trains.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from spinelab.configs import recipe_path
from spinelab.tasks import catalog
from spinelab.tasks.route import resolve

__all__ = ["against_constant", "demo_tasks", "run_task_demo", "main"]

console = Console()


def _step(name: str, fn: Callable[[], Any]) -> Any:
    console.rule(f"[bold]{name}")
    start = time.perf_counter()
    result = fn()
    console.print(f"[green]done[/] in {time.perf_counter() - start:.1f} s")
    return result


def against_constant(score: float | None, baseline: float | None) -> str:
    """The score against the constant baseline, in words: ``"0.42 vs constant 0.51: 18 % better"``
    (lower scores are better)."""
    if score is None or baseline is None or baseline <= 0:
        return "-"
    change = round(100 * (1 - score / baseline))
    head = f"{score:.3f} vs constant {baseline:.3f}"
    if change == 0:
        return f"{head}: level with the constant"
    return f"{head}: {abs(change)} % {'better' if change > 0 else 'worse'}"


def demo_tasks() -> list[str]:
    """The catalog's tasks that have a demo, in registration order."""
    return [t for t in catalog.task_names() if catalog.get_task(t).demo is not None]


def run_task_demo(task: str, out: Path, *, studies: int | None = None, test_studies: int | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """The demo of one task (its default route) in ``out``; returns the paths it wrote and the test score.

    ``studies`` and ``test_studies`` default to the task's ``Demo.studies`` and ``Demo.test_studies``.
    """
    from spinelab import api
    from spinelab.config.load import load_config
    from spinelab.data.folds import write_folds
    from spinelab.io.cache import build_cache

    spec = catalog.get_task(task).demo
    if spec is None:
        raise typer.BadParameter(f"task {task!r} has no demo; choose from {', '.join(demo_tasks())}")
    studies = spec.studies if studies is None else studies
    test_studies = spec.test_studies if test_studies is None else test_studies
    data, cache = out / "data" / task, out / "cache" / task
    run, pred, rep = out / "runs" / task, out / "predictions" / task, out / "report" / task
    if not (data / "train.csv").is_file():
        generate = resolve(spec.synthetic)
        _step(f"1. synthetic {task} dataset ({studies} train + {test_studies} test studies, {spec.size} px)",
              lambda: generate(data, studies=studies, test_studies=test_studies, size=spec.size, seed=seed))
    _step("2. volume cache (every series decoded once)", lambda: build_cache(data, cache, workers=2))
    _step("3. multilabel-stratified folds", lambda: write_folds(data, k=5, seed=42, task=task))
    cfg = load_config(task, [recipe_path(spec.recipe)], [f"data.dataset_dir={data}", f"data.cache_dir={cache}"])
    route = catalog.get_route(task)
    training = resolve(route.training)
    stages = [s.name for s in training.steps if s.stages is not None and s.selected("all", cfg)]
    _step(f"4. train the {route.key} route ({', '.join(stages)}), fold 0, after its data preparation",
          lambda: api.train(cfg, run_dir=run, fold="0"))
    result = _step("5. predict the test studies and score them",
                   lambda: api.predict(task, model=run, input=data, out=pred))
    index = _step("6. report", lambda: api.report(task, predictions=pred, input=data, out=rep, model=run))
    evaluation = json.loads(Path(result["evaluation"]).read_text()) if result.get("evaluation") else {}
    return {"task": task, "run": run, "submission": result["submission"], "evaluation": result["evaluation"],
            "report": index, "score": evaluation.get(spec.score), "baseline": evaluation.get(spec.baseline),
            "studies": evaluation.get("studies")}


def main(task: Annotated[str, typer.Option(help="A task with a demo (cervical, lumbar) or all")] = "all",
         out: Annotated[Path, typer.Option(help="Output folder")] = Path("demo_out"),
         studies: Annotated[int | None, typer.Option(help="Training studies per task [default: the task's]")] = None,
         test_studies: Annotated[int | None, typer.Option(
             help="Test studies per task [default: the task's]")] = None,
         seed: Annotated[int, typer.Option(help="Seed of the synthetic datasets")] = 0) -> None:
    """Run the demo of one or every pipeline on synthetic data."""
    import logging

    from spinelab.cli import configure_logging

    known = demo_tasks()
    chosen = known if task == "all" else [task]
    if any(t not in known for t in chosen):
        raise typer.BadParameter(f"task must be {', '.join(known)} or all, got {task!r}")
    configure_logging(logging.INFO)  # the CLI's log, warnings and library-noise rules
    start = time.perf_counter()
    summaries = [run_task_demo(t, out / t if task == "all" else out, studies=studies, test_studies=test_studies,
                               seed=seed) for t in chosen]
    table = Table(title=f"spinelab demo finished in {time.perf_counter() - start:.0f} s")
    for col in ("task", "test studies", "test score against the constant baseline (lower is better)"):
        table.add_column(col)
    for s in summaries:
        table.add_row(s["task"], str(s.get("studies") or "-"), against_constant(s["score"], s["baseline"]))
    console.print(table)
    for s in summaries:
        console.print(f"[bold]{s['task']}[/]: report {s['report']}\n  submission {s['submission']}\n"
                      f"  evaluation {s['evaluation']}\n  run folder {s['run']}", soft_wrap=True)
    console.print("Open the report's index.html in a browser; `spinelab --help` lists every command.")


if __name__ == "__main__":
    typer.run(main)
