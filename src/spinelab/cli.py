"""The ``spinelab`` command line: parse, call the matching Python function, render the result.

No logic lives here. Every command is a thin shell over an importable function with the same parameter
names. Heavy modules are imported inside each command so that ``spinelab --help`` stays fast.

Errors are mapped in one place, ``_SpinelabGroup.invoke``, which every command runs inside (through
``app`` as well as the ``spinelab`` script and ``python -m spinelab``):

* ``SpinelabError`` (bad input, bad config): ``error: ...`` on stderr, exit 2;
* ``OSError`` (disk full, read-only file system, permission denied, is/not a directory): one line naming
  the path, exit 2;
* anything else: one line and ``run with -v for the traceback``, exit 1 (``-v`` prints the traceback);
* usage errors (a bad option value, an unknown option): Typer's message, exit 2.

Results (paths written, scores) go to stdout; logs, warnings and progress bars go to stderr.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from spinelab import __version__
from spinelab.errors import SpinelabError, describe_os_error
from spinelab.interop.export_cli import export_app
from spinelab.pacs.pacs_cli import pacs_app
from spinelab.scale_cli import Engine, EngineOption, NumNodesOption, RayAddressOption
from spinelab.serve.serve_cli import serve as serve_command

__all__ = ["app", "main", "configure_logging"]

console = Console(stderr=True)
_GLOBAL_FLAGS = frozenset({"-q", "--quiet", "-v", "--verbose"})
_state: dict[str, bool] = {"verbose": False}


def _hoist_global_flags(args: Sequence[str]) -> list[str]:
    """Move ``-q``/``-v`` given after the subcommand to the front, so ``spinelab predict ... -q`` works.

    Tokens after ``--`` are left alone. No command has an option spelled ``-q``/``-v`` of its own.
    """
    args = list(args)
    cut = args.index("--") if "--" in args else len(args)
    head = args[:cut]
    flags = [a for a in head if a in _GLOBAL_FLAGS]
    return flags + [a for a in head if a not in _GLOBAL_FLAGS] + args[cut:]


def _error_line(message: str) -> None:
    """``error: ...`` on stderr, as plain text: a path may hold brackets that rich would read as markup."""
    print(f"error: {message}", file=sys.stderr, flush=True)


class _SpinelabGroup(TyperGroup):
    """The top-level command group: global flags anywhere, and the one place errors become exit codes."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        return super().main(_hoist_global_flags(sys.argv[1:] if args is None else args), *rest, **kwargs)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (TyperException, Exit, Abort):  # usage errors and exits: Typer's own handling
            raise
        except SpinelabError as err:
            _error_line(str(err))
            raise typer.Exit(code=2) from None
        except OSError as err:
            _error_line(describe_os_error(err))
            raise typer.Exit(code=2) from None
        except Exception as err:
            if _state["verbose"]:
                traceback.print_exc(file=sys.stderr)
                _error_line(f"{type(err).__name__}: {err}")
            else:
                _error_line(f"{type(err).__name__}: {err} (run with -v for the traceback)")
            raise typer.Exit(code=1) from None


_CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="spinelab",
    cls=_SpinelabGroup,
    help="RSNA spine pipelines: cervical fracture detection (CT) and lumbar degenerative grading (MRI).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings=_CONTEXT,
)
cache_app = typer.Typer(help="The volume cache: every study decoded once into memory-mappable files.",
                        no_args_is_help=True, context_settings=_CONTEXT)
synth_app = typer.Typer(help="Synthetic datasets in the exact Kaggle layouts.", no_args_is_help=True,
                        context_settings=_CONTEXT)
labels_app = typer.Typer(help="Derive training targets from segmentations and CSVs.", no_args_is_help=True,
                         context_settings=_CONTEXT)
ensemble_app = typer.Typer(help="Route ensembles: weights fitted on out-of-fold predictions.", no_args_is_help=True,
                           context_settings=_CONTEXT)
app.add_typer(cache_app, name="cache")
app.add_typer(ensemble_app, name="ensemble")
app.add_typer(synth_app, name="synth")
app.add_typer(labels_app, name="labels")
app.add_typer(export_app, name="export")
app.add_typer(pacs_app, name="pacs")
app.command("serve")(serve_command)


def _task_name(value: str | None) -> str | None:
    """A task of the catalog (``spinelab.tasks.catalog``): the CLI lists no task names of its own."""
    from spinelab.tasks.catalog import task_names

    if value is not None and value not in task_names():
        raise typer.BadParameter(f"unknown task {value!r}; use {' or '.join(task_names())}")
    return value


def _task_argument() -> Any:
    """The TASK argument of train, predict and report."""
    return typer.Argument(help="cervical or lumbar (the tasks of spinelab.tasks.catalog).", callback=_task_name)


# --- logging, warnings, library noise -------------------------------------------------------------------
# Lightning's and other libraries' notes that are no news to a spinelab user: hidden unless -v.
_NOISE = re.compile("|".join([
    r"does not have many workers", r"GPU available but not used", r"litlogger", r"litmodels", r"Tip:",
    r"smaller than the logging interval", r"but have no `val_dataloader`", r"is deprecated",
    r"will be removed in", r"torch\.load.*weights_only",
]))
_PACKAGE_DIR = str(Path(__file__).resolve().parent) + "/"
_LIBRARY_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                         "lightning.pytorch.accelerators.cuda", "lightning.fabric.accelerators.cuda")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the CLI: one log line through the ``spinelab.warnings`` logger.

    Deprecation notices from other packages and Lightning's tips are dropped unless ``-v``; ``-q`` silences
    every Python warning (the logger's level is raised), while spinelab's own log warnings stay.
    """
    text = str(message).strip()
    if not _state["verbose"]:
        foreign = not str(Path(filename).resolve()).startswith(_PACKAGE_DIR)
        if _NOISE.search(text) or (foreign and issubclass(category, DeprecationWarning | FutureWarning)):
            return
    origin = Path(filename).parent.name + "/" + Path(filename).name
    logging.getLogger("spinelab.warnings").warning("%s: %s (%s:%d)", category.__name__, text, origin, lineno)


def configure_logging(level: int) -> None:
    """Send the ``spinelab`` logger's messages (stage notes, skipped studies, fallbacks) to stderr via rich.

    Library use leaves logging to the application; the command line is the application here. Python
    warnings go through the same logger; Lightning's info notes (GPU available, tips) only with ``-v``.
    """
    import rich
    from rich.logging import RichHandler

    rich.reconfigure(stderr=True)  # rich progress bars without a console of their own go to stderr
    logger = logging.getLogger("spinelab")
    for handler in [h for h in logger.handlers if getattr(h, "_spinelab_cli", False)]:
        logger.removeHandler(handler)
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    handler._spinelab_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logging.getLogger("spinelab.warnings").setLevel(logging.ERROR if level > logging.INFO else logging.NOTSET)
    for name in _LIBRARY_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else logging.WARNING)
    warnings.showwarning = _show_warning


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spinelab {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print debug messages, library notes "
                                          "and tracebacks (also accepted after the command).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and errors "
                                        "(also accepted after the command).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """RSNA spine pipelines: cervical fracture detection (CT) and lumbar degenerative grading (MRI)."""
    if verbose and quiet:
        raise typer.BadParameter("choose one of --verbose and --quiet")
    _state["verbose"] = verbose
    configure_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def _fail(err: Exception) -> None:
    """For a command body that catches ``SpinelabError`` itself: the same line and exit code as the group."""
    _error_line(str(err))
    raise typer.Exit(code=2)


# --- option checks: run while parsing, before any work or write -------------------------------------------
def _out_folder(value: Path | None) -> Path | None:
    """An output folder may exist, but not as a file."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} exists and is not a folder")
    return value


def _out_file(value: Path | None) -> Path | None:
    """An output file may exist (it is replaced), but not as a folder."""
    if value is not None and value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; give a file name (e.g. {value / 'folds.csv'})")
    return value


def _fold_list(value: str | None) -> str | None:
    """``--folds 0,1``: comma-separated fold numbers (checked against the run when it is read)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if not all(p.isdigit() for p in parts):
        raise typer.BadParameter(f"{value!r} is not a comma-separated list of fold numbers (e.g. 0,1)")
    return ",".join(parts)


def _precision(stage: str) -> Any:
    """A ``--precision`` check for ``training`` or ``inference``: any spelling ``spinelab.precision`` knows."""
    from spinelab import precision as spelling

    check = spelling.training_precision if stage == "training" else spelling.inference_precision

    def callback(value: str | None) -> str | None:
        if value is not None:
            try:
                check(value)
            except spelling.PrecisionError as err:
                raise typer.BadParameter(str(err)) from None
        return value

    return callback


def _split_task(args: Sequence[str], task: str | None, n_paths: int, *, required: bool) -> tuple[str | None,
                                                                                                list[Path]]:
    """``[TASK] PATH...``: the task first and positional, as in every command; ``--task`` still works."""
    args = list(args)
    if len(args) == n_paths + 1:
        _task_name(args[0])
        if task is not None and task != args[0]:
            raise typer.BadParameter(f"task given twice: {args[0]} and --task {task}")
        return args[0], [Path(a) for a in args[1:]]
    if len(args) != n_paths or (required and task is None):
        want = " ".join(["TASK", *["PATH"] * n_paths]) if required else f"[TASK] {' '.join(['PATH'] * n_paths)}"
        raise typer.BadParameter(f"expected {want}, got {len(args)} argument(s)")
    if task is not None:
        logging.getLogger("spinelab").warning("--task is deprecated; give the task first: spinelab COMMAND %s ...",
                                              task)
    return task, [Path(a) for a in args]


_OUT = ("--out", "-o")


def _task_alias() -> Any:
    """The old ``--task`` option, hidden: the task is now the first argument."""
    return typer.Option("--task", hidden=True, help="Deprecated: give the task as the first argument.",
                        callback=_task_name)


# --- inspection and caching ---------------------------------------------------------------------------
@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A DICOM folder or a NIfTI file.")],
    series: Annotated[str | None, typer.Option(help="SeriesInstanceUID or description to pick.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print what a DICOM folder or NIfTI file holds: series, shape, spacing, orientation, warnings."""
    from spinelab.io.inspect import describe, render_description

    desc = describe(path, series=series)
    if as_json:
        typer.echo(json.dumps(desc, indent=2, default=str))
    else:
        render_description(desc, Console())
        for s in desc.get("series") or []:  # the table may cut long UIDs to the terminal's width
            typer.echo(f"series uid (for --series): {s['uid'] or '<empty>'}")


@cache_app.command("build")
def cache_build(
    dataset_dir: Annotated[Path, typer.Argument(help="Kaggle-layout dataset (or any tree of DICOM series).")],
    out: Annotated[Path, typer.Option(*_OUT, help="Cache folder to write.", callback=_out_folder)],
    workers: Annotated[int, typer.Option(min=1, help="Parallel worker processes.")] = 2,
    engine: EngineOption = Engine.local, ray_address: RayAddressOption = None,
) -> None:
    """Decode every series once into int16 .npy + JSON sidecar; resumable; failures go to a report."""
    from spinelab.io.cache import build_cache

    summary = build_cache(dataset_dir, out, workers=workers, engine=engine.value, ray_address=ray_address)
    typer.echo(f"cache: {summary['done']} series ready, {summary['failed']} failed -> {out}")
    if summary["failed"]:
        logging.getLogger("spinelab").warning("failures listed in %s", summary["report"])


# --- datasets, labels, folds, metrics -------------------------------------------------------------------
@synth_app.command("cervical")
def synth_cervical(
    out: Annotated[Path, typer.Option(*_OUT, help="Dataset folder to write.", callback=_out_folder)],
    studies: Annotated[int, typer.Option(min=1, help="Number of training studies.")] = 40,
    test_studies: Annotated[int, typer.Option(min=0, help="Number of test studies.")] = 4,
    size: Annotated[int, typer.Option(min=32, help="Slice size in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Parallel worker processes.")] = 2,
) -> None:
    """Write a synthetic RSNA 2022 dataset (train/test images, CSVs, segmentations)."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    path = generate_cervical_dataset(out, studies=studies, test_studies=test_studies, size=size, seed=seed,
                                     workers=workers)
    typer.echo(f"synthetic cervical dataset: {path}")


@synth_app.command("lumbar")
def synth_lumbar(
    out: Annotated[Path, typer.Option(*_OUT, help="Dataset folder to write.", callback=_out_folder)],
    studies: Annotated[int, typer.Option(min=1, help="Number of training studies.")] = 40,
    test_studies: Annotated[int, typer.Option(min=0, help="Number of test studies.")] = 4,
    size: Annotated[int, typer.Option(min=32, help="In-plane size in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Parallel worker processes.")] = 2,
) -> None:
    """Write a synthetic RSNA 2024 dataset (three series per study, CSVs, coordinates)."""
    from spinelab.data.synthetic.lumbar import generate_lumbar_dataset

    path = generate_lumbar_dataset(out, studies=studies, test_studies=test_studies, size=size, seed=seed,
                                   workers=workers)
    typer.echo(f"synthetic lumbar dataset: {path}")


@labels_app.command("cervical")
def labels_cervical(
    dataset_dir: Annotated[Path, typer.Argument(help="RSNA 2022 layout dataset.")],
    out: Annotated[Path | None, typer.Option(*_OUT, help="Output folder (default DATASET_DIR/derived).",
                                             callback=_out_folder)] = None,
    cache: Annotated[Path | None, typer.Option(help="Volume cache to read instead of DICOM.")] = None,
    fracture_masks: Annotated[bool, typer.Option(
        "--fracture-masks", help="Also write the box pseudo-masks of the fracture route (fracture_masks/, on "
                                 "the cervical/fracseg default crop grid) and the vertebra masks they use.")] = False,
    vertebra_model: Annotated[Path | None, typer.Option(
        help="With --fracture-masks: a run whose seg stage segments the boxed studies without a mask.")] = None,
) -> None:
    """Per-slice vertebra ratios and C1-C7 boxes from segmentations, and per-slice fracture boxes."""
    from spinelab.data.cervical_labels import derive_cervical_labels

    for p in derive_cervical_labels(dataset_dir, out=out, cache_dir=cache):
        typer.echo(f"wrote {p}")
    if fracture_masks:
        from spinelab.tasks.cervical.fracseg.pseudo_masks import derive_fracture_masks

        written = derive_fracture_masks(dataset_dir, out=out, cache_dir=cache, vertebra_model=vertebra_model)
        typer.echo(f"wrote {written}")


@app.command()
def folds(
    args: Annotated[list[str], typer.Argument(metavar="[TASK] DATASET_DIR",
                                              help="Task (cervical or lumbar; detected from train.csv when "
                                                   "omitted) and the dataset folder with train.csv.")],
    k: Annotated[int, typer.Option("--k", min=2, help="Number of folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    out: Annotated[Path | None, typer.Option(*_OUT, help="folds.csv to write (default DATASET_DIR/folds.csv; "
                                             "use it for a read-only dataset).", callback=_out_file)] = None,
    task: Annotated[str | None, _task_alias()] = None,
) -> None:
    """Write DATASET_DIR/folds.csv (or --out FILE): multilabel-stratified folds by study."""
    from spinelab.data.folds import write_folds

    task_name, (dataset_dir,) = _split_task(args, task, 1, required=False)
    path = write_folds(dataset_dir, k=k, seed=seed, task=task_name, out=out)
    typer.echo(f"wrote {path}")


@app.command()
def score(
    args: Annotated[list[str], typer.Argument(metavar="TASK SOLUTION SUBMISSION",
                                              help="cervical or lumbar (which competition metric), the "
                                                   "solution CSV (labels) and the Kaggle-format submission.")],
    task: Annotated[str | None, _task_alias()] = None,
) -> None:
    """Score a Kaggle-format submission with the official competition metric."""
    from spinelab.metrics import score_files

    task_name, (solution, submission) = _split_task(args, task, 2, required=True)
    value = score_files(solution, submission, task=task_name)
    typer.echo(f"{value:.6f}")


# --- training, inference, reports ---------------------------------------------------------------------
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    task: Annotated[str, _task_argument()],
    config: Annotated[list[Path] | None, typer.Option(
        "--config", "-c", help="YAML config (repeatable): a file, or a packaged recipe such as demo or "
                               "cervical/demo.yaml (see README).")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", *_OUT, callback=_out_folder,
                                                 help="Run folder (default runs/<task>/<experiment>).")] = None,
    fold: Annotated[str, typer.Option(help="A fold number, 'all' (every fold in turn) or 'full'.")] = "all",
    stage: Annotated[str, typer.Option(help="all, or one stage of the recipe's route: cervical stage1, frames, stage2 "
                                            "(seg3d: seg, frames, vertebra, patient; sequence: stage1, frames, "
                                            "slices, study; fracseg: seg, fracture_seg[_rN], overall); lumbar "
                                            "stage1, stage2.")] = "all",
    resume: Annotated[bool, typer.Option(help="Resume each fold from its last checkpoint.")] = False,
    keep: Annotated[str | None, typer.Option(
        help="Checkpoints a finished fold keeps beside model.pt: last, best, all or model (none) "
             "[default: each stage's train.keep, last]")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices for Lightning (e.g. 1, 2, auto).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp.")] = None,
    num_nodes: NumNodesOption = None,
    precision: Annotated[str | None, typer.Option(
        help="bf16, fp16 or fp32 (= trainer.precision; Lightning spellings such as bf16-mixed too).",
        callback=_precision("training"))] = None,
    seeds: Annotated[str | None, typer.Option(
        help="cervical/sequence: one slice model and study head per seed in the run folder, e.g. 0,1,2 "
             "(= slices.seeds; averaged at prediction).")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config.")] = False,
) -> None:
    """Train a pipeline. Extra arguments are config overrides: stage1.train.epochs=3 trainer.precision=bf16."""
    from spinelab.api import train as api_train
    from spinelab.config.load import load_config
    from spinelab.configs import resolve_recipes

    cfg = load_config(task, resolve_recipes(task, config or []), list(ctx.args))
    if devices is not None:
        cfg.trainer.devices = devices
    if strategy is not None:
        cfg.trainer.strategy = strategy
    if num_nodes is not None:
        cfg.trainer.num_nodes = num_nodes
    if precision is not None:
        cfg.trainer.precision = precision  # the schema maps bf16 to Lightning's bf16-mixed
    if seeds is not None:
        from spinelab.tasks.cervical.sequence.pipeline import apply_seeds

        cfg = apply_seeds(cfg, seeds)
    if print_config:
        import yaml

        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return
    out = api_train(cfg, run_dir=run_dir, fold=fold, stage=stage, resume=resume, keep=keep)
    typer.echo(f"run folder: {out}")


@app.command()
def predict(
    task: Annotated[str, _task_argument()],
    model: Annotated[list[Path], typer.Option(
        "--model", help="Run folder of `spinelab train` or model package of `spinelab export model`; repeat it "
                        "for an ensemble (any routes of TASK).")],
    input: Annotated[Path, typer.Option(
        "--input", "-i", help="A dataset folder, a folder of studies, one study folder, or a NIfTI/DICOM file.")],
    out: Annotated[Path, typer.Option(*_OUT, help="Output folder.", callback=_out_folder)],
    labels: Annotated[Path | None, typer.Option(help="Labels CSV to evaluate against (train.csv format).")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Ensemble weights, one per --model (0.7,0.3), or a weights.json of `spinelab ensemble fit` "
             "[default: equal]")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto [default: the run's infer.device]")] = None,
    precision: Annotated[str | None, typer.Option(
        help="fp32, bf16 or fp16 (GPU) autocast; Lightning spellings (bf16-mixed) too "
             "[default: the run's infer.precision]", callback=_precision("inference"))] = None,
    compile: Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="torch.compile the models [default: the run's infer.compile]")] = None,
    folds: Annotated[str | None, typer.Option(help="Comma-separated folds to ensemble (default all).",
                                              callback=_fold_list)] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="Flip test-time augmentation [default: the run's infer.tta]")] = None,
    series: Annotated[str | None, typer.Option(
        help="Cervical: the SeriesInstanceUID or SeriesDescription to read when a study holds several.")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse a study on any input warning, not only on a refusal rule.")] = False,
    runtime: Annotated[str, typer.Option(help="torch, or onnx: a package's exported 2D networks on onnxruntime "
                                              "(`spinelab export onnx`).", callback=_runtime_choice)] = "torch",
    engine: EngineOption = Engine.local, ray_address: RayAddressOption = None,
    dicom_out: Annotated[bool, typer.Option("--dicom-out", help="Also write each DICOM study's SEG and SR: "
                                                                "OUT/dicom/<study>/seg.dcm, sr.dcm.")] = False,
) -> None:
    """Predict every study: submission.csv, one JSON per study, manifest.json, and an evaluation when labels
    exist. Several --model runs are an ensemble: their probabilities are averaged per study. Exit 0 when every
    study was predicted (warnings allowed), 3 when some were refused or failed (they get the prior), 2 on an
    error."""
    from spinelab.api import predict as api_predict
    from spinelab.infer.batch import summary_line

    result = api_predict(task, model=model, input=input, out=out, labels=labels, weights=weights, device=device,
                         precision=precision, compile=compile, tta=tta,
                         folds=[int(f) for f in folds.split(",")] if folds else None,
                         series=series, strict=strict, runtime=runtime, engine=engine.value,
                         ray_address=ray_address, dicom_out=dicom_out)
    typer.echo(f"submission: {result['submission']}")
    if result.get("evaluation"):
        typer.echo(f"evaluation: {result['evaluation']}")
    counts = result["counts"]
    console.print(summary_line(counts), markup=False, highlight=False)  # a note, so stderr
    if counts["refused"] or counts["failed"]:
        raise typer.Exit(code=3)


def _runtime_choice(value: str) -> str:
    if value not in ("torch", "onnx"):
        raise typer.BadParameter(f"choose torch or onnx, got {value!r}")
    return value


@app.command()
def segment(
    input: Annotated[Path, typer.Option(
        "--input", "-i", help="A CT study folder, a DICOM or NIfTI file, a folder of studies, or a dataset.")],
    out: Annotated[Path, typer.Option(*_OUT, help="Output folder (one sub-folder per study for a dataset).",
                                      callback=_out_folder)],
    model: Annotated[Path, typer.Option(
        "--model", help="Run folder (or model package) of a cervical/seg3d `spinelab train` (or of cervical/fracseg "
                        "with a seg section: adds fracture_prob.nii.gz), or a trained nnU-Net v2 model folder.")],
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto [default: the run's infer.device]")] = None,
    precision: Annotated[str | None, typer.Option(
        help="fp32, bf16 or fp16 (GPU) autocast [default: the run's infer.precision]",
        callback=_precision("inference"))] = None,
    compile: Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="torch.compile the models [default: the run's infer.compile]")] = None,
    folds: Annotated[str | None, typer.Option(help="Comma-separated folds to average (default all).",
                                              callback=_fold_list)] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="Left-right flip test-time augmentation [default: the run's infer.tta]")] = None,
    series: Annotated[str | None, typer.Option(
        help="The SeriesInstanceUID or SeriesDescription to read when a study holds several.")] = None,
) -> None:
    """Segment C1-C7: vertebrae.nii.gz on the input's grid, vertebrae.json (per-vertebra statistics and the
    vertebra check) and preview.png per study. Exit 0 when every study was segmented (warnings allowed), 3
    when some were refused or failed, 2 on an error."""
    from spinelab.api import segment as api_segment
    from spinelab.infer.batch import summary_line

    result = api_segment(input, out, model, device=device, precision=precision, compile=compile, tta=tta,
                         folds=[int(f) for f in folds.split(",")] if folds else None, series=series)
    for folder in result["folders"]:
        typer.echo(f"segmented: {folder}")
    console.print(summary_line(result["counts"]), markup=False, highlight=False)  # a note, so stderr
    if result["counts"]["refused"] or result["counts"]["failed"]:
        raise typer.Exit(code=3)


@app.command()
def report(
    task: Annotated[str, _task_argument()],
    predictions: Annotated[Path, typer.Option("--predictions", "-p", help="Output folder of `predict`.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="The dataset or study folder predicted.")],
    out: Annotated[Path, typer.Option(*_OUT, help="Report folder.", callback=_out_folder)],
    model: Annotated[Path | None, typer.Option("--model", help="Run folder: adds training curves.")] = None,
) -> None:
    """Per-study PNGs, an HTML index sorted by risk, and training curves."""
    from spinelab.api import report as api_report

    index = api_report(task, predictions=predictions, input=input, out=out, model=model)
    typer.echo(f"report: {index}")


@ensemble_app.command("fit")
def ensemble_fit(
    model: Annotated[list[Path], typer.Option("--model", help="Run folder; two or more, of one task.")],
    out: Annotated[Path, typer.Option(*_OUT, help="The weights.json to write.", callback=_out_file)],
) -> None:
    """Fit non-negative weights summing to 1 that minimise the task's metric on the runs' out-of-fold
    predictions; `spinelab predict --model A --model B --weights weights.json` uses them."""
    from spinelab.api import fit_ensemble

    path = fit_ensemble(model, out)
    record = json.loads(path.read_text())
    typer.echo(f"weights: {path}")
    console.print(f"out-of-fold score {record['oof_score']:.4f} (equal weights {record['equal_weights_score']:.4f}) "
                  f"on {record['studies']} studies: " + ", ".join(f"{Path(m['run_dir']).name} {m['weight']:.3f}"
                                                                  for m in record["members"]),
                  markup=False, highlight=False)


def main() -> None:
    """Entry point of the ``spinelab`` script and ``python -m spinelab``; errors are mapped in the group."""
    app()
