"""Before training: check the dataset, then make sure the volume cache and the folds exist.

Nothing is written into the dataset folder (Kaggle's ``/kaggle/input`` is read-only). What training
derives goes under the run folder unless the config names another place (``spinelab.config.schema.DataConfig``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from spinelab.errors import InputError

__all__ = ["check_dataset", "fold_count", "make_writable_folder", "prepare_dataset", "os_error"]

log = logging.getLogger("spinelab")
#: The image folder of the training split, in both Kaggle layouts.
TRAIN_IMAGES = "train_images"


def os_error(err: OSError, fallback: str | Path) -> InputError:
    """One-line ``InputError`` for a failed read or write (read-only file system, permissions, disk full)."""
    return InputError(err.filename or fallback, f"file system error: {err.strerror or err}")


def make_writable_folder(path: str | Path) -> Path:
    """Create ``path`` (and parents) and check that files can be written in it.

    Raises:
        InputError: a file stands there, or the folder cannot be created or written (read-only, permissions).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, path) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(path, "folder is not writable")
    return path


def check_dataset(cfg: Any) -> None:
    """The dataset folder, its ``train.csv`` (read by the task's reader: columns, study ids, labels) and its
    ``train_images/`` exist.

    Raises:
        InputError: naming the first missing or bad input.
    """
    from spinelab.tasks.catalog import task_function

    dataset = Path(cfg.data.dataset_dir)
    if not dataset.is_dir():
        raise InputError(dataset, "dataset folder does not exist (data.dataset_dir)")
    train_csv = dataset / "train.csv"
    if not train_csv.is_file():
        raise InputError(train_csv, "train.csv not found: is data.dataset_dir a Kaggle-layout dataset?")
    if not (dataset / TRAIN_IMAGES).is_dir():
        raise InputError(dataset / TRAIN_IMAGES, "image folder not found: is data.dataset_dir a Kaggle-layout "
                                                 "dataset?")
    task_function(cfg.task, "read_labels")(train_csv)  # the task's one reader checks the columns and the ids
    if cfg.data.folds_file is not None and not Path(cfg.data.folds_file).is_file():
        raise InputError(cfg.data.folds_file, "data.folds_file not found "
                                              "(write it with `spinelab folds DATASET --out FILE`)")


def fold_count(cfg: Any) -> int:
    """Number of folds training will see: that of the folds file in use when one exists, else ``data.folds``."""
    from spinelab.data.folds import read_folds

    data = cfg.data
    path = Path(data.folds_file) if data.folds_file is not None else Path(data.dataset_dir) / "folds.csv"
    if path.is_file():
        folds = read_folds(path)
        return int(folds.max()) + 1 if len(folds) else data.folds
    return data.folds


def prepare_dataset(cfg: Any, run_dir: str | Path, *, progress: bool = True) -> Any:
    """Resolve where the cache, folds and derived labels live, build the cache and write the folds.

    Defaults (fields left unset): ``data.cache_dir`` = ``<dataset>_cache`` beside the dataset when that
    folder exists (an earlier build), else ``RUN_DIR/cache``; ``data.folds_file`` = ``DATASET/folds.csv``
    when it exists, else the folds are made and written to ``RUN_DIR/folds.csv``; ``data.derived_dir`` =
    ``DATASET/derived`` when it holds ``slice_labels.csv``, else ``RUN_DIR/derived``. The cache build skips
    series already cached (a rerun resumes); a cache folder that exists but is read-only is used as it is.

    Args:
        cfg: a cervical or lumbar experiment config (its ``task`` picks the stratification); call
            ``check_dataset`` first.
        run_dir: the run folder (created).

    Returns:
        ``cfg`` with ``data.cache_dir``, ``data.folds_file`` and ``data.derived_dir`` set.

    Raises:
        InputError: a folder that cannot be written (read-only, permissions, disk full), with its path.
    """
    from spinelab.data.folds import make_dataset_folds
    from spinelab.io.atomic import atomic_write_csv
    from spinelab.io.cache import build_cache

    data = cfg.data
    dataset = Path(data.dataset_dir)
    run_dir = make_writable_folder(run_dir)
    if data.cache_dir is None:
        beside = dataset.parent / f"{dataset.name}_cache"
        data.cache_dir = beside if beside.is_dir() else run_dir / "cache"
    if data.derived_dir is None:
        beside = dataset / "derived"
        data.derived_dir = beside if (beside / "slice_labels.csv").is_file() else run_dir / "derived"
    cache = Path(data.cache_dir)
    try:
        if cache.is_dir() and not os.access(cache, os.W_OK | os.X_OK):
            # A cache shipped read-only (a Kaggle dataset of its own): series missing from it are decoded
            # from DICOM when read (``load_series``), so training still works.
            log.warning("%s: volume cache is read-only; using it as it is", cache)
        else:
            build_cache(dataset, cache, workers=2, progress=progress)
        if data.folds_file is None:
            if (dataset / "folds.csv").is_file():
                data.folds_file = dataset / "folds.csv"
            else:
                folds = make_dataset_folds(dataset, k=data.folds, seed=data.fold_seed, task=cfg.task)
                data.folds_file = atomic_write_csv(run_dir / "folds.csv", folds.reset_index())
    except OSError as err:
        raise os_error(err, data.cache_dir) from None
    return cfg
