"""Python twins of the CLI commands, with the same parameter names (TotalSegmentator's rule)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spinelab.errors import ConfigError

__all__ = ["train", "set_keep", "predict", "report", "default_run_dir"]


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

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    if keep is not None:
        set_keep(cfg, keep)
    try:
        if cfg.task == "cervical":
            from spinelab.tasks.cervical.pipeline import train_cervical

            return train_cervical(cfg, run_dir, fold=fold, stage=stage, resume=resume, progress=progress)
        if cfg.task == "lumbar":
            from spinelab.tasks.lumbar.pipeline import train_lumbar

            return train_lumbar(cfg, run_dir, fold=fold, stage=stage, resume=resume, progress=progress)
    except OSError as err:
        raise os_error(err, run_dir) from None
    raise ConfigError(f"unknown task {cfg.task!r}")


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


def predict(task: str, *, model: str | Path, input: str | Path, out: str | Path, labels: str | Path | None = None,
            device: str | None = None, precision: str | None = None, compile: bool | None = None,
            tta: bool | None = None, folds: list[int] | None = None, series: str | None = None,
            strict: bool = False, progress: bool = True) -> dict[str, Any]:
    """Predict a dataset, a study folder or one NIfTI/DICOM file with a run folder; see
    ``spinelab predict --help``.

    ``device``, ``precision``, ``compile`` and ``tta`` left ``None`` come from the run's ``infer`` section.
    ``series`` picks a series by SeriesInstanceUID or description in every cervical study; ``strict`` refuses
    a study on any input warning.

    Returns:
        The submission, predictions, manifest and evaluation paths, ``studies`` and ``counts``
        (``{"ok", "warning", "refused", "failed"}``): every study was predicted when refused + failed is 0.
    """
    kwargs = dict(labels=labels, device=device, precision=precision, compile=compile, tta=tta, folds=folds,
                  strict=strict, progress=progress)
    if task == "cervical":
        from spinelab.tasks.cervical.predict import predict_cervical_dataset

        return predict_cervical_dataset(input, model, out, series=series, **kwargs)
    if task == "lumbar":
        if series is not None:
            raise ConfigError("--series applies to cervical studies; lumbar series are chosen by kind "
                              "(descriptions, then image plane and TR/TE/TI)")
        from spinelab.tasks.lumbar.predict import predict_lumbar_dataset

        return predict_lumbar_dataset(input, model, out, **kwargs)
    raise ConfigError(f"unknown task {task!r}")


def report(task: str, *, predictions: str | Path, input: str | Path, out: str | Path,
           model: str | Path | None = None) -> Path:
    """Write per-study pictures and an HTML index; returns the index path."""
    if task == "cervical":
        from spinelab.report.cervical import write_cervical_report

        return write_cervical_report(predictions=predictions, input=input, out=out, model=model)
    if task == "lumbar":
        from spinelab.report.lumbar import write_lumbar_report

        return write_lumbar_report(predictions=predictions, input=input, out=out, model=model)
    raise ConfigError(f"unknown task {task!r}")
