"""The ``spinelab`` command line: parse, call the matching Python function, render the result.

No logic lives here. Every command is a thin shell over an importable function with the same parameter
names, and the only place where a ``SpinelabError`` becomes an exit code and a readable message.
Heavy modules are imported inside each command so that ``spinelab --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from spinelab.errors import SpinelabError

__all__ = ["app", "main"]

console = Console(stderr=True)
app = typer.Typer(
    name="spinelab",
    help="RSNA spine pipelines: cervical fracture detection (CT) and lumbar degenerative grading (MRI).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cache_app = typer.Typer(help="The volume cache: every study decoded once into memory-mappable files.",
                        no_args_is_help=True)
synth_app = typer.Typer(help="Synthetic datasets in the exact Kaggle layouts.", no_args_is_help=True)
labels_app = typer.Typer(help="Derive training targets from segmentations and CSVs.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
app.add_typer(synth_app, name="synth")
app.add_typer(labels_app, name="labels")


class Task(StrEnum):
    cervical = "cervical"
    lumbar = "lumbar"


def _configure_logging(level: int) -> None:
    """Send the ``spinelab`` logger's messages (stage notes, skipped studies, fallbacks) to stderr via rich.

    Library use leaves logging to the application; the command line is the application here.
    """
    from rich.logging import RichHandler

    logger = logging.getLogger("spinelab")
    for handler in [h for h in logger.handlers if getattr(h, "_spinelab_cli", False)]:
        logger.removeHandler(handler)
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    handler._spinelab_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)


@app.callback()
def _global_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print debug messages.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and errors.")] = False,
) -> None:
    """RSNA spine pipelines: cervical fracture detection (CT) and lumbar degenerative grading (MRI)."""
    _configure_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


# --- inspection and caching ---------------------------------------------------------------------------
@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A DICOM folder or a NIfTI file.")],
    series: Annotated[str | None, typer.Option(help="SeriesInstanceUID or description to pick.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print what a DICOM folder or NIfTI file holds: series, shape, spacing, orientation, warnings."""
    from spinelab.io.inspect import describe, render_description

    try:
        desc = describe(path, series=series)
    except SpinelabError as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(desc, indent=2, default=str))
    else:
        render_description(desc, Console())
        for s in desc.get("series") or []:  # the table may cut long UIDs to the terminal's width
            typer.echo(f"series uid (for --series): {s['uid'] or '<empty>'}")


@cache_app.command("build")
def cache_build(
    dataset_dir: Annotated[Path, typer.Argument(help="Kaggle-layout dataset (or any tree of DICOM series).")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 2,
) -> None:
    """Decode every series once into int16 .npy + JSON sidecar; resumable; failures go to a report."""
    from spinelab.io.cache import build_cache

    try:
        summary = build_cache(dataset_dir, out, workers=workers)
    except SpinelabError as err:
        _fail(err)
    console.print(f"cache: {summary['done']} series ready, {summary['failed']} failed -> {out}")
    if summary["failed"]:
        console.print(f"[yellow]failures listed in {summary['report']}[/]")


# --- datasets, labels, folds, metrics -------------------------------------------------------------------
@synth_app.command("cervical")
def synth_cervical(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    studies: Annotated[int, typer.Option(help="Number of training studies.")] = 40,
    test_studies: Annotated[int, typer.Option(help="Number of test studies.")] = 4,
    size: Annotated[int, typer.Option(help="Slice size in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 2,
) -> None:
    """Write a synthetic RSNA 2022 dataset (train/test images, CSVs, segmentations)."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    path = generate_cervical_dataset(out, studies=studies, test_studies=test_studies, size=size, seed=seed,
                                     workers=workers)
    console.print(f"synthetic cervical dataset -> {path}")


@synth_app.command("lumbar")
def synth_lumbar(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    studies: Annotated[int, typer.Option(help="Number of training studies.")] = 40,
    test_studies: Annotated[int, typer.Option(help="Number of test studies.")] = 4,
    size: Annotated[int, typer.Option(help="In-plane size in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 2,
) -> None:
    """Write a synthetic RSNA 2024 dataset (three series per study, CSVs, coordinates)."""
    from spinelab.data.synthetic.lumbar import generate_lumbar_dataset

    path = generate_lumbar_dataset(out, studies=studies, test_studies=test_studies, size=size, seed=seed,
                                   workers=workers)
    console.print(f"synthetic lumbar dataset -> {path}")


@labels_app.command("cervical")
def labels_cervical(
    dataset_dir: Annotated[Path, typer.Argument(help="RSNA 2022 layout dataset.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default DATASET_DIR/derived).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Volume cache to read instead of DICOM.")] = None,
) -> None:
    """Per-slice vertebra ratios and C1-C7 boxes from segmentations, and per-slice fracture boxes."""
    from spinelab.data.cervical_labels import derive_cervical_labels

    try:
        paths = derive_cervical_labels(dataset_dir, out=out, cache_dir=cache)
    except SpinelabError as err:
        _fail(err)
    for p in paths:
        console.print(f"wrote {p}")


@app.command()
def folds(
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset folder with train.csv.")],
    k: Annotated[int, typer.Option("--k", help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    task: Annotated[Task | None, typer.Option(help="Task; detected from train.csv when omitted.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folds CSV to write (default DATASET_DIR/folds.csv; for a read-only dataset, "
                            "write it elsewhere and set data.folds_file).")] = None,
) -> None:
    """Write DATASET_DIR/folds.csv (or --out FILE): multilabel-stratified folds by study."""
    from spinelab.data.folds import write_folds

    try:
        path = write_folds(dataset_dir, k=k, seed=seed, task=task.value if task else None, out=out)
    except SpinelabError as err:
        _fail(err)
    console.print(f"wrote {path}")


@app.command()
def score(
    solution: Annotated[Path, typer.Argument(help="Solution CSV (labels).")],
    submission: Annotated[Path, typer.Argument(help="Submission CSV (Kaggle format).")],
    task: Annotated[Task, typer.Option(help="Which competition metric.")],
) -> None:
    """Score a Kaggle-format submission with the official competition metric."""
    from spinelab.metrics import score_files

    try:
        value = score_files(solution, submission, task=task.value)
    except SpinelabError as err:
        _fail(err)
    typer.echo(f"{value:.6f}")


# --- training, inference, reports ---------------------------------------------------------------------
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    task: Annotated[Task, typer.Argument(help="cervical or lumbar.")],
    config: Annotated[list[Path] | None, typer.Option("--config", "-c", help="YAML config (repeatable).")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default runs/<task>/<experiment>).")] = None,
    fold: Annotated[str, typer.Option(help="A fold number, 'all' (every fold in turn) or 'full'.")] = "all",
    stage: Annotated[str, typer.Option(help="all; cervical: stage1, frames or stage2; lumbar: stage1 or stage2.")
                     ] = "all",
    resume: Annotated[bool, typer.Option(help="Resume each fold from its last checkpoint.")] = False,
    keep: Annotated[str | None, typer.Option(
        help="Checkpoints a finished fold keeps beside model.pt: last, best, all or model (none) "
             "[default: each stage's train.keep, last]")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices for Lightning (e.g. 1, 2, auto).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp.")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config.")] = False,
) -> None:
    """Train a pipeline. Extra arguments are config overrides: stage1.train.epochs=3."""
    from spinelab.api import train as api_train
    from spinelab.config.load import load_config

    try:
        cfg = load_config(task.value, config or [], list(ctx.args))
        if devices is not None:
            cfg.trainer.devices = devices
        if strategy is not None:
            cfg.trainer.strategy = strategy
        if print_config:
            import yaml

            typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            return
        out = api_train(cfg, run_dir=run_dir, fold=fold, stage=stage, resume=resume, keep=keep)
    except SpinelabError as err:
        _fail(err)
    console.print(f"[green]run folder:[/] {out}")


@app.command()
def predict(
    task: Annotated[Task, typer.Argument(help="cervical or lumbar.")],
    model: Annotated[Path, typer.Option("--model", help="Run folder written by `spinelab train`.")],
    input: Annotated[Path, typer.Option(
        "--input", "-i", help="A dataset folder, a folder of studies, one study folder, or a NIfTI/DICOM file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    labels: Annotated[Path | None, typer.Option(help="Labels CSV to evaluate against (train.csv format).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto [default: the run's infer.device]")] = None,
    precision: Annotated[str | None, typer.Option(
        help="fp32 or bf16 autocast [default: the run's infer.precision]")] = None,
    compile: Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="torch.compile the models [default: the run's infer.compile]")] = None,
    folds: Annotated[str | None, typer.Option(help="Comma-separated folds to ensemble (default all).")] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="Flip test-time augmentation [default: the run's infer.tta]")] = None,
    series: Annotated[str | None, typer.Option(
        help="Cervical: the SeriesInstanceUID or SeriesDescription to read when a study holds several.")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse a study on any input warning, not only on a refusal rule.")] = False,
) -> None:
    """Predict every study: submission.csv, one JSON per study, manifest.json, and an evaluation when labels
    exist. Exit 0 when every study was predicted (warnings allowed), 3 when some were refused or failed
    (they get the prior), 2 on an error."""
    from spinelab.api import predict as api_predict
    from spinelab.infer.batch import summary_line

    try:
        result = api_predict(task.value, model=model, input=input, out=out, labels=labels, device=device,
                             precision=precision, compile=compile, tta=tta,
                             folds=[int(f) for f in folds.split(",")] if folds else None,
                             series=series, strict=strict)
    except SpinelabError as err:
        _fail(err)
    console.print(f"[green]submission:[/] {result['submission']}")
    if result.get("evaluation"):
        console.print(f"[green]evaluation:[/] {result['evaluation']}")
    counts = result["counts"]
    console.print(summary_line(counts), markup=False, highlight=False)
    if counts["refused"] or counts["failed"]:
        raise typer.Exit(code=3)


@app.command()
def report(
    task: Annotated[Task, typer.Argument(help="cervical or lumbar.")],
    predictions: Annotated[Path, typer.Option("--predictions", "-p", help="Output folder of `predict`.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="The dataset or study folder predicted.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    model: Annotated[Path | None, typer.Option("--model", help="Run folder: adds training curves.")] = None,
) -> None:
    """Per-study PNGs, an HTML index sorted by risk, and training curves."""
    from spinelab.api import report as api_report

    try:
        index = api_report(task.value, predictions=predictions, input=input, out=out, model=model)
    except SpinelabError as err:
        _fail(err)
    console.print(f"[green]report:[/] {index}")


def main() -> None:
    """Entry point that also works as ``python -m spinelab``."""
    try:
        app()
    except SpinelabError as err:  # pragma: no cover - commands already catch their own
        console.print(f"[bold red]error:[/] {err}")
        sys.exit(2)
