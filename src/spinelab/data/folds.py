"""Cross-validation folds by study: multilabel-stratified, reproducible, stored as ``folds.csv``.

Stratification uses iterative stratification (``MultilabelStratifiedKFold``) so that rare targets (C3
fractures: 73 of 2019 studies; severe spinal stenosis) are spread evenly over folds, which a plain random
split does not guarantee. The label matrix is:

* cervical: C1..C7 and patient_overall (8 binary labels per study);
* lumbar: per condition, "any level moderate" and "any level severe" (10 binary labels; a missing label is
  not positive).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.errors import ConfigError, InputError
from spinelab.io.atomic import atomic_write_csv
from spinelab.registry import CERVICAL_TARGETS, LUMBAR_CONDITIONS, LUMBAR_LEVELS

__all__ = ["id_column", "make_folds", "stratification_matrix", "cervical_stratification", "lumbar_stratification",
           "detect_task", "make_dataset_folds", "write_folds", "read_folds", "load_folds"]


def id_column(task: str) -> str:
    """The study id column of ``task``'s train.csv and folds.csv (``spinelab.tasks.catalog``).

    Raises:
        ConfigError: unknown task.
    """
    from spinelab.tasks.catalog import get_task

    return get_task(task).id_column


def detect_task(labels: pd.DataFrame, *, source: str | Path = "train.csv") -> str:
    """The catalog task whose train.csv has ``labels``' columns (its id column and every target).

    Raises:
        InputError: the columns match no task.
    """
    from spinelab.tasks.catalog import get_task, task_names, task_of_columns

    task = task_of_columns(labels.columns)
    if task is None:
        expected = "; ".join(f"{get_task(t).id_column} + {len(get_task(t).targets)} label columns ({t})"
                             for t in task_names())
        raise InputError(source, f"cannot tell the task: expected {expected}; got {sorted(map(str, labels.columns))}")
    return task


def stratification_matrix(labels: pd.DataFrame, *, task: str, source: str | Path = "train.csv") -> np.ndarray:
    """The binary label matrix ``(n_studies, n_labels)`` the folds of ``task`` are stratified on (the task's
    ``stratify`` in the catalog).

    Raises:
        InputError: label columns missing or invalid.
        ConfigError: unknown task.
    """
    from spinelab.tasks.catalog import task_function

    return task_function(task, "stratify")(labels, source=source)


def cervical_stratification(labels: pd.DataFrame, *, source: str | Path = "train.csv") -> np.ndarray:
    """C1..C7 and patient_overall: 8 binary labels per study, ``uint8``.

    Raises:
        InputError: label columns missing or not 0/1.
    """
    missing = [t for t in CERVICAL_TARGETS if t not in labels.columns]
    if missing:
        raise InputError(source, f"label columns missing: {missing}")
    values = labels[list(CERVICAL_TARGETS)].apply(pd.to_numeric, errors="coerce")
    if not values.isin([0, 1]).all().all():
        raise InputError(source, "cervical labels must be 0/1 in C1..C7 and patient_overall")
    return values.to_numpy(dtype=np.uint8)


def lumbar_stratification(labels: pd.DataFrame, *, source: str | Path = "train.csv") -> np.ndarray:
    """Per condition, moderate and severe at any level: 10 binary labels per study (a missing label is not
    positive), ``uint8``.

    Raises:
        InputError: label columns missing or grades invalid.
    """
    from spinelab.metrics import lumbar_grade_matrix

    grades = lumbar_grade_matrix(labels, source=source).reshape(len(labels), len(LUMBAR_CONDITIONS),
                                                               len(LUMBAR_LEVELS))
    return np.concatenate([(grades == 1).any(axis=2), (grades == 2).any(axis=2)], axis=1).astype(np.uint8)


def make_folds(
    labels: pd.DataFrame, *, task: str, k: int = 5, seed: int = 42, swaps: int = 20000
) -> pd.Series:
    """Assign each study a fold: multilabel-stratified K-fold, then a balancing pass.

    Iterative stratification balances the rarest labels to within one study per fold, but it handles the
    commonest labels (patient_overall, about half the studies; C7) last, and on the RSNA 2022 labels they
    end up a median of about 7 studies (at worst 17) off the per-fold mean. A short hill-climb then swaps
    pairs of studies between folds (fold sizes unchanged) whenever that lowers the squared deviation of the
    per-fold positive counts from their means, which brings every label to within about one study.

    Args:
        labels: train.csv format (one row per study).
        task: a task of the catalog (its id column and stratification).
        k: number of folds (2 .. number of studies).
        seed: seeds both passes; the same labels and seed give the same folds.
        swaps: number of candidate swaps of the balancing pass (0 keeps the plain iterative stratification).

    Returns:
        Integer series named ``fold`` indexed by the study id (as a string), in ``labels`` order.

    Raises:
        InputError: missing id column, duplicated studies or invalid labels.
        ConfigError: unknown task or impossible ``k``.
    """
    id_col = id_column(task)
    if id_col not in labels.columns:
        raise InputError("train.csv", f"no {id_col} column")
    ids = labels[id_col].astype(str)
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].unique().tolist()
        raise InputError("train.csv", f"{len(dup)} studies appear more than once, e.g. {dup[:5]}")
    if not 2 <= k <= len(ids):
        raise ConfigError(f"k must be between 2 and the number of studies ({len(ids)}), got {k}")
    y = stratification_matrix(labels, task=task)
    rng = np.random.default_rng(seed)
    folds = _stratified_split(y, k=k, seed=int(rng.integers(0, 2**31 - 1)))
    folds = _rebalance(y, folds, k=k, rng=rng, swaps=swaps)
    return pd.Series(folds, index=pd.Index(ids.to_numpy(), name=id_col), name="fold")


def _rebalance(
    y: np.ndarray, folds: np.ndarray, *, k: int, rng: np.random.Generator, swaps: int
) -> np.ndarray:
    """Swap studies between folds while the squared deviation of per-fold label counts from the mean drops.

    Args:
        y: binary labels ``(N, L)``.
        folds: fold per study ``(N,)``; not modified.
        k: number of folds.
        rng: source of the candidate pairs.
        swaps: number of candidate pairs to try.

    Returns:
        The improved fold assignment ``(N,)`` (same fold sizes).
    """
    folds = folds.copy()
    yf = y.astype(np.float64)
    counts = np.stack([yf[folds == f].sum(axis=0) for f in range(k)])
    target = yf.sum(axis=0) / k
    pairs = rng.integers(0, len(y), size=(swaps, 2))
    for i, j in pairs:
        fi, fj = folds[i], folds[j]
        if fi == fj:
            continue
        diff = yf[i] - yf[j]
        if not diff.any():
            continue
        # Moving study i to fold fj and j to fi changes the counts by -diff / +diff.
        old = ((counts[fi] - target) ** 2 + (counts[fj] - target) ** 2).sum()
        new = ((counts[fi] - diff - target) ** 2 + (counts[fj] + diff - target) ** 2).sum()
        if new < old - 1e-9:
            counts[fi] -= diff
            counts[fj] += diff
            folds[i], folds[j] = fj, fi
    return folds


def _stratified_split(y: np.ndarray, *, k: int, seed: int) -> np.ndarray:
    """One ``MultilabelStratifiedKFold`` pass: fold index per row of the label matrix ``(N, L)``."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    folds = np.full(len(y), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, valid_idx) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
        folds[valid_idx] = fold
    return folds


def make_dataset_folds(dataset_dir: str | Path, *, k: int = 5, seed: int = 42, task: str | None = None
                       ) -> pd.Series:
    """The folds of ``DATASET_DIR/train.csv`` (in memory, nothing written); see ``make_folds``.

    Raises:
        InputError: train.csv missing, unreadable, of the wrong task, or with a study id that is not a
            folder name.
        ConfigError: impossible ``k``.
    """

    from spinelab.tasks.catalog import task_function

    train_csv = Path(dataset_dir) / "train.csv"
    if not train_csv.is_file():
        raise InputError(train_csv, "train.csv not found")
    detected = detect_task(_read_id_table(train_csv, header_only=True), source=train_csv)
    if task is not None and task != detected:
        raise InputError(train_csv, f"asked for task {task!r} but the columns are those of {detected!r}")
    labels = task_function(detected, "read_labels")(train_csv)  # the task's one reader: ids and values checked
    return make_folds(labels, task=detected, k=k, seed=seed)


def write_folds(dataset_dir: str | Path, *, k: int = 5, seed: int = 42, task: str | None = None,
                out: str | Path | None = None) -> Path:
    """Write ``folds.csv`` (``<id column>,fold``) from ``DATASET_DIR/train.csv``.

    Args:
        dataset_dir: a Kaggle-layout dataset folder.
        k: number of folds.
        seed: shuffling seed.
        task: a catalog task; detected from train.csv columns when ``None``.
        out: the file to write; default ``DATASET_DIR/folds.csv`` (pass one elsewhere for a read-only
            dataset, then point ``data.folds_file`` at it).

    Returns:
        The path written (atomically).

    Raises:
        InputError: train.csv missing, unreadable or of the wrong task; ``out`` a folder or not writable.
        ConfigError: impossible ``k``.
    """
    target = Path(dataset_dir) / "folds.csv" if out is None else Path(out)
    if target.is_dir():
        raise InputError(target, "is a folder; --out names the folds CSV file to write")
    folds = make_dataset_folds(dataset_dir, k=k, seed=seed, task=task)
    try:
        return atomic_write_csv(target, folds.reset_index())
    except OSError as err:
        hint = " (a read-only dataset? write the folds elsewhere with --out FILE)" if out is None else ""
        raise InputError(target, f"cannot write: {err.strerror or err}{hint}") from None


def load_folds(cfg: Any) -> pd.Series:
    """The folds a training run uses: ``data.folds_file``, else ``DATASET/folds.csv``, else made in memory."""
    data = cfg.data
    path = Path(data.folds_file) if data.folds_file is not None else Path(data.dataset_dir) / "folds.csv"
    if path.is_file():
        return read_folds(path)
    if data.folds_file is not None:
        raise InputError(path, "data.folds_file not found (write it with `spinelab folds DATASET --out FILE`)")
    return make_dataset_folds(data.dataset_dir, k=data.folds, seed=data.fold_seed, task=cfg.task)


def read_folds(dataset_dir: str | Path) -> pd.Series:
    """Read ``DATASET_DIR/folds.csv`` (or a folds CSV path) as a ``fold`` series indexed by study id (str).

    Raises:
        InputError: the file is missing or does not hold an id column and a ``fold`` column.
    """
    path = Path(dataset_dir)
    if path.is_dir():
        path = path / "folds.csv"
    if not path.is_file():
        raise InputError(path, "folds.csv not found (run `spinelab folds DATASET_DIR`)")
    from spinelab.tasks.catalog import get_task, task_names

    frame = _read_id_table(path)
    id_cols = [c for c in dict.fromkeys(get_task(t).id_column for t in task_names()) if c in frame.columns]
    if len(id_cols) != 1 or "fold" not in frame.columns:
        raise InputError(
            path, f"expected columns '<StudyInstanceUID|study_id>,fold', got {list(frame.columns)}"
        )
    from spinelab.data.study_ids import check_folder_ids

    check_folder_ids(frame[id_cols[0]], csv=path, column=id_cols[0])
    fold = pd.to_numeric(frame["fold"], errors="coerce")
    if fold.isna().any() or (fold < 0).any():
        raise InputError(path, "fold values must be non-negative integers")
    return pd.Series(
        fold.astype(np.int64).to_numpy(), index=pd.Index(frame[id_cols[0]], name=id_cols[0]), name="fold"
    )


def _read_id_table(path: Path, *, header_only: bool = False) -> pd.DataFrame:
    """A CSV keyed by any task's study id, ids as text (only the header with ``header_only``); unreadable or
    unparsable -> ``InputError``."""
    from spinelab.tasks.catalog import get_task, task_names

    ids = {get_task(t).id_column: str for t in task_names()}
    try:
        return pd.read_csv(path, dtype=ids, nrows=0 if header_only else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot parse CSV: {err}") from err
    except OSError as err:
        raise InputError(path, f"cannot read: {err.strerror or err}") from None
