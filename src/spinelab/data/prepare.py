"""Before training: the volume cache and the folds of a dataset exist (each built once, then reused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["prepare_dataset"]


def prepare_dataset(cfg: Any, *, progress: bool = True) -> Any:
    """Build what training reads and fill in the config's defaults.

    ``cfg.data.cache_dir`` defaults to ``<dataset>_cache`` beside the dataset; the cache build skips series
    already cached (a rerun resumes); ``folds.csv`` is written when missing.

    Args:
        cfg: a cervical or lumbar experiment config (its ``task`` picks the stratification).

    Returns:
        ``cfg`` with ``data.cache_dir`` set.
    """
    from spinelab.data.folds import write_folds
    from spinelab.io.cache import build_cache

    data = cfg.data
    dataset = Path(data.dataset_dir)
    if data.cache_dir is None:
        data.cache_dir = dataset.parent / f"{dataset.name}_cache"
    build_cache(dataset, data.cache_dir, workers=2, progress=progress)
    if not (dataset / "folds.csv").is_file():
        write_folds(dataset, k=data.folds, seed=data.fold_seed, task=cfg.task)
    return cfg
