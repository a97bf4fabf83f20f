"""Python twins of the CLI commands, with the same parameter names (TotalSegmentator's rule)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spinelab.errors import ConfigError

__all__ = ["train", "set_keep", "predict", "fit_ensemble", "segment", "report", "export_nnunet", "default_run_dir"]


def default_run_dir(cfg: Any) -> Path:
    """``runs/<task>/<experiment>``."""
    return Path("runs") / cfg.task / cfg.experiment


def train(cfg: Any, *, run_dir: str | Path | None = None, fold: str = "all", stage: str = "all",
          resume: bool = False, keep: str | None = None, progress: bool = True) -> Path:
    """Train a validated config (see ``spinelab.config.load.load_config``) into a run folder.

    ``keep`` (``all``, ``last``, ``best`` or ``model``) sets every stage's ``train.keep``: the Lightning
    checkpoints left in a finished fold folder. A failed read or write is one ``InputError`` with its path.
    """
    from spinelab.data.prepare import os_error
    from spinelab.tasks.catalog import route_of
    from spinelab.tasks.route import train_route

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if keep is not None:
        set_keep(cfg, keep)
    route = route_of(cfg)
    try:
        return train_route(route, cfg, run_dir, fold=fold, stage=stage, resume=resume, progress=progress)
    except OSError as err:
        raise os_error(err, run_dir) from None


def set_keep(cfg: Any, keep: str) -> None:
    """Set ``train.keep`` of every stage section of ``cfg``.

    Raises:
        ConfigError: ``keep`` is not one of ``all``, ``last``, ``best``, ``model``.
    """
    from spinelab.config.schema import TrainConfig

    choices = ("all", "last", "best", "model")
    if keep not in choices:
        raise ConfigError(f"--keep must be one of {', '.join(choices)}; got {keep!r}")
    for name in type(cfg).model_fields:
        section = getattr(cfg, name)
        if isinstance(getattr(section, "train", None), TrainConfig):
            section.train.keep = keep


def predict(task: str, *, model: str | Path | Sequence[str | Path], input: str | Path, out: str | Path,
            labels: str | Path | None = None, weights: str | Path | Sequence[float] | None = None,
            device: str | None = None, precision: str | None = None, compile: bool | None = None,
            tta: bool | None = None, folds: list[int] | None = None, series: str | None = None,
            strict: bool = False, runtime: str = "torch", progress: bool = True, engine: str = "local",
            ray_address: str | None = None, dicom_out: bool = False) -> dict[str, Any]:
    """Predict a dataset, a study folder or one NIfTI/DICOM file with a run folder, or with several (an
    ensemble, ``spinelab.infer.ensemble``); see ``spinelab predict --help``.

    ``model``: one run folder, or a list of them (any routes of ``task``) whose probabilities are averaged per
    study with ``weights`` (numbers, ``"0.7,0.3"`` or a ``weights.json`` of ``spinelab ensemble fit``; equal
    when ``None``). ``device``, ``precision``, ``compile`` and ``tta`` left ``None`` come from each run's
    ``infer`` section. ``series`` picks a series by SeriesInstanceUID or description in every cervical study;
    ``strict`` refuses a study on any input warning. A model package (``spinelab export model``) works wherever
    a run folder does (verified against its manifest first); ``runtime="onnx"`` runs its exported 2D networks
    on onnxruntime (``spinelab export onnx``). ``engine="ray"`` runs the studies in Ray actors (each builds the
    predictor once) on the cluster at ``ray_address`` (``spinelab.ray_engine``); the outputs are the same.
    ``dicom_out`` also writes each DICOM study's SEG and SR (``spinelab.infer.dicom_results``) into
    ``out/dicom/<study id>/``.

    Returns:
        The submission, predictions, manifest and evaluation paths, ``studies`` and ``counts``
        (``{"ok", "warning", "refused", "failed"}``): every study was predicted when refused + failed is 0.
    """
    from spinelab.infer.batch import predict_dataset
    from spinelab.infer.ensemble import load_ensemble, load_predictor, parse_weights, run_route_of_task
    from spinelab.tasks.catalog import task_output

    output = task_output(task)
    options = {"series": series} if series is not None else {}
    for name in options:
        if name in output.refused_options:
            raise ConfigError(output.refused_options[name])
    models = [model] if isinstance(model, str | Path) else list(model)
    if not models:
        raise ConfigError("give a run folder (--model)")
    if len(models) == 1 and weights is not None:
        raise ConfigError("--weights needs two or more --model run folders")
    parse_weights(weights, models)  # a bad weight or weights file is refused before any study is read
    for m in models:
        run_route_of_task(task, m)  # a run of another task is refused before any study is read
    settings = {"device": device, "precision": precision, "compile": compile, "tta": tta, "folds": folds,
                "strict": strict, "runtime": runtime}

    def build() -> Any:
        if len(models) == 1:
            return load_predictor(task, models[0], **settings)
        return load_ensemble(task, models, weights, **settings)

    return predict_dataset(build, input, out, task=task, output=output, labels=labels, progress=progress,
                           engine=engine, ray_address=ray_address, dicom_out=dicom_out, **options)


def fit_ensemble(model: Sequence[str | Path], out: str | Path) -> Path:
    """Fit ensemble weights on the runs' out-of-fold predictions (``spinelab ensemble fit``); returns ``out``."""
    from spinelab.infer.ensemble import fit_weights

    return fit_weights(list(model), out)


def segment(input: str | Path, output: str | Path, model: str | Path, *, device: str | None = None,
            precision: str | None = None, compile: bool | None = None, tta: bool | None = None,
            folds: list[int] | None = None, series: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Segment C1-C7 (and T1) in one CT study or every study of a folder with a ``cervical/seg3d`` run, or
    with a trained nnU-Net v2 model folder (``interop.nnunet_model``; needs ``spinelab[nnunet]``); see
    ``spinelab segment --help``.

    One study (a DICOM folder or file, a NIfTI file) writes ``vertebrae.nii.gz``, ``vertebrae.json`` and
    ``preview.png`` into ``output``; a dataset or a folder of studies writes them into ``output/<study id>/``
    and lists the studies in ``output/manifest.json``. ``device``, ``precision``, ``compile`` and ``tta`` left
    ``None`` come from the run's ``infer`` section.

    Returns:
        ``studies``, ``counts`` (``{"ok", "warning", "refused", "failed"}``), ``results`` (each study's
        ``vertebrae.json``), ``folders`` and ``manifest`` (``None`` for one study).
    """
    from spinelab.infer.runtime import run_inference_options
    from spinelab.interop.nnunet_model import is_nnunet_model_folder
    from spinelab.tasks.cervical.seg3d.segment import Segmenter, segment_studies

    def build() -> Any:
        if is_nnunet_model_folder(model):
            from spinelab.infer.runtime import Runtime
            from spinelab.interop.nnunet_model import NnunetSegmenter

            return NnunetSegmenter(model, folds=folds, runtime=Runtime(device=device or "auto"),
                                   tta=True if tta is None else tta)
        runtime, use_tta = run_inference_options(model, device=device, precision=precision, compile=compile,
                                                 tta=tta)
        return Segmenter(model, folds=folds, runtime=runtime, tta=use_tta)

    if is_nnunet_model_folder(model):
        return segment_studies(build, input, output, series=series, progress=progress)
    if not (Path(model) / "config.yaml").is_file():  # before the input is searched: the cheaper mistake first
        raise ConfigError(f"{model}: not a run folder (no config.yaml) nor an nnU-Net model folder (plans.json); "
                          "give --model a run of `spinelab train`")
    return segment_studies(build, input, output, series=series, progress=progress)


def report(task: str, *, predictions: str | Path, input: str | Path, out: str | Path,
           model: str | Path | None = None) -> Path:
    """Write per-study pictures and an HTML index; returns the index path."""
    from spinelab.tasks.catalog import report_function

    return report_function(task)(predictions=predictions, input=input, out=out, model=model)


def export_nnunet(dataset_dir: str | Path, out: str | Path, *, task: str = "vertebrae", dataset_id: int | None = None,
                  name: str | None = None, spacing: Sequence[float] | None = None,
                  patch_size: Sequence[int] | None = None, folds_file: str | Path | None = None, k: int = 5,
                  cache_dir: str | Path | None = None, overwrite: bool = False, progress: bool = True) -> Any:
    """Write an nnU-Net v2 raw dataset ``out/DatasetNNN_Name`` from a Kaggle-layout RSNA 2022 dataset
    (``spinelab export nnunet``; see ``spinelab.interop.nnunet.export_nnunet``). Needs no nnU-Net install.

    Returns:
        An ``NnunetExport``: ``folder``, ``dataset_id``, ``cases``, ``skipped``, ``folds`` and ``commands`` (the
        nnU-Net commands to run next).
    """
    from spinelab.interop.nnunet import export_nnunet as export

    return export(dataset_dir, out, task=task, dataset_id=dataset_id, name=name,
                  spacing=list(spacing) if spacing is not None else None,
                  patch_size=list(patch_size) if patch_size is not None else None, folds_file=folds_file, k=k,
                  cache_dir=cache_dir, overwrite=overwrite, progress=progress)
