"""``make demo``: synthetic dataset -> cache -> labels -> folds -> train -> predict -> score -> report.

Runs the whole pipeline of a task on a small synthetic dataset on CPU, printing each step and, at the
end, where every result is. ``python -m spinelab.demo --task cervical|lumbar|all --out demo_out``.
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

__all__ = ["against_constant", "run_cervical_demo", "run_lumbar_demo", "main"]

console = Console()


def _step(name: str, fn: Callable[[], Any]) -> Any:
    console.rule(f"[bold]{name}")
    start = time.perf_counter()
    result = fn()
    console.print(f"[green]done[/] in {time.perf_counter() - start:.1f} s")
    return result


def against_constant(score: float | None, baseline: float | None) -> str:
    """The score relative to the constant baseline, in words: ``"31 % below the constant"``."""
    if score is None or baseline is None or baseline <= 0:
        return "-"
    change = round(100 * (1 - score / baseline))
    if change == 0:
        return "level with the constant"
    return f"{abs(change)} % {'below' if change > 0 else 'above'} the constant"


def run_cervical_demo(out: Path, *, studies: int = 40, test_studies: int = 8, size: int = 128,
                      seed: int = 0) -> dict[str, Any]:
    """The cervical main job; returns the paths it wrote."""
    from spinelab import api
    from spinelab.config.load import load_config
    from spinelab.data.cervical_labels import derive_cervical_labels
    from spinelab.data.folds import write_folds
    from spinelab.data.synthetic.cervical import generate_cervical_dataset
    from spinelab.io.cache import build_cache

    data, cache = out / "data" / "cervical", out / "cache" / "cervical"
    run, pred, rep = out / "runs" / "cervical", out / "predictions" / "cervical", out / "report" / "cervical"
    if not (data / "train.csv").is_file():
        _step(f"1. synthetic RSNA 2022 dataset ({studies} train + {test_studies} test studies, {size} px)",
              lambda: generate_cervical_dataset(data, studies=studies, test_studies=test_studies, size=size,
                                                seed=seed))
    _step("2. volume cache (every series decoded once)", lambda: build_cache(data, cache, workers=2))
    _step("3. slice labels from segmentations",
          lambda: derive_cervical_labels(data, out=data / "derived", cache_dir=cache))
    _step("4. multilabel-stratified folds", lambda: write_folds(data, k=5, seed=42, task="cervical"))
    cfg = load_config("cervical", [recipe_path("cervical/demo.yaml")],
                      [f"data.dataset_dir={data}", f"data.cache_dir={cache}"])
    _step("5. train stage 1 (localisation) and stage 2 (fractures), fold 0",
          lambda: api.train(cfg, run_dir=run, fold="0"))
    result = _step("6. predict the test studies and score them",
                   lambda: api.predict("cervical", model=run, input=data, out=pred))
    index = _step("7. report", lambda: api.report("cervical", predictions=pred, input=data, out=rep, model=run))
    evaluation = json.loads(Path(result["evaluation"]).read_text()) if result.get("evaluation") else {}
    return {"task": "cervical", "run": run, "submission": result["submission"], "evaluation": result["evaluation"],
            "report": index, "score": evaluation.get("competition_score"),
            "baseline": evaluation.get("prevalence_constant_score")}


def run_lumbar_demo(out: Path, *, studies: int = 40, test_studies: int = 8, size: int = 64,
                    seed: int = 0) -> dict[str, Any]:
    """The lumbar main job; returns the paths it wrote."""
    from spinelab import api
    from spinelab.config.load import load_config
    from spinelab.data.folds import write_folds
    from spinelab.data.synthetic.lumbar import generate_lumbar_dataset
    from spinelab.io.cache import build_cache

    data, cache = out / "data" / "lumbar", out / "cache" / "lumbar"
    run, pred, rep = out / "runs" / "lumbar", out / "predictions" / "lumbar", out / "report" / "lumbar"
    if not (data / "train.csv").is_file():
        _step(f"1. synthetic RSNA 2024 dataset ({studies} train + {test_studies} test studies, {size} px)",
              lambda: generate_lumbar_dataset(data, studies=studies, test_studies=test_studies, size=size,
                                              seed=seed))
    _step("2. volume cache (every series decoded once)", lambda: build_cache(data, cache, workers=2))
    _step("3. multilabel-stratified folds", lambda: write_folds(data, k=5, seed=42, task="lumbar"))
    cfg = load_config("lumbar", [recipe_path("lumbar/demo.yaml")],
                      [f"data.dataset_dir={data}", f"data.cache_dir={cache}"])
    _step("4. train stage 1 (level points) and stage 2 (grades), fold 0",
          lambda: api.train(cfg, run_dir=run, fold="0"))
    result = _step("5. predict the test studies and score them",
                   lambda: api.predict("lumbar", model=run, input=data, out=pred))
    index = _step("6. report", lambda: api.report("lumbar", predictions=pred, input=data, out=rep, model=run))
    evaluation = json.loads(Path(result["evaluation"]).read_text()) if result.get("evaluation") else {}
    return {"task": "lumbar", "run": run, "submission": result["submission"], "evaluation": result["evaluation"],
            "report": index, "score": evaluation.get("lumbar_score"),
            "baseline": evaluation.get("weight_optimal_constant_score")}


def main(task: Annotated[str, typer.Option(help="cervical, lumbar or all")] = "all",
         out: Annotated[Path, typer.Option(help="Output folder")] = Path("demo_out"),
         studies: Annotated[int, typer.Option(help="Training studies per task")] = 40,
         seed: Annotated[int, typer.Option(help="Seed of the synthetic datasets")] = 0) -> None:
    """Run the demo of one or both pipelines on synthetic data."""
    import logging

    from spinelab.cli import configure_logging

    configure_logging(logging.INFO)  # the CLI's log, warnings and library-noise rules
    runners = {"cervical": run_cervical_demo, "lumbar": run_lumbar_demo}
    chosen = list(runners) if task == "all" else [task]
    if any(t not in runners for t in chosen):
        raise typer.BadParameter(f"task must be cervical, lumbar or all, got {task!r}")
    start = time.perf_counter()
    summaries = [runners[t](out / t if task == "all" else out, studies=studies, seed=seed) for t in chosen]
    table = Table(title=f"spinelab demo finished in {time.perf_counter() - start:.0f} s")
    for col in ("task", "test score (lower is better)", "constant baseline", "against the constant"):
        table.add_column(col)
    for s in summaries:
        table.add_row(s["task"], f"{s['score']:.4f}" if s["score"] is not None else "-",
                      f"{s['baseline']:.4f}" if s["baseline"] is not None else "-",
                      against_constant(s["score"], s["baseline"]))
    console.print(table)
    for s in summaries:
        console.print(f"[bold]{s['task']}[/]: report {s['report']}\n  submission {s['submission']}\n"
                      f"  evaluation {s['evaluation']}\n  run folder {s['run']}", soft_wrap=True)
    console.print("Open the report's index.html in a browser; `spinelab --help` lists every command.")


if __name__ == "__main__":
    typer.run(main)
