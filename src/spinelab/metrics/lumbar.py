"""The RSNA 2024 lumbar metric (with its parts), submission frame, grade parsing and weight-optimal constant.

The official Kaggle metric as copied in lhwcv ``patriot/metric.py``: rows are ``study x condition x level``;
rows without a label are dropped; sample weight ``2 ** grade`` (1/2/4). For each group (spinal, foraminal,
subarticular) a weighted multiclass log loss; plus ``any_severe_spinal`` per study (truth = any severe
spinal level, prediction = max P(severe) over the study's spinal levels, weight = max sample weight);
score = mean of the four.

The submission is clipped to ``[1e-15, 1 - 1e-15]`` and each row is normalised to sum to 1 *before* anything
else, so the any-severe max uses normalised P(severe). sklearn's ``log_loss`` normalises rows internally for
the three group losses but the official notebook takes the max over the raw column, so the two agree
whenever rows sum to 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spinelab.errors import InputError
from spinelab.metrics.common import CLIP_EPS, check_submission, ids_text, split_row_ids
from spinelab.registry import (
    LUMBAR_GRADE_NAMES,
    LUMBAR_GRADES,
    LUMBAR_GROUPS,
    condition_group,
    lumbar_columns,
    lumbar_row_ids,
)

__all__ = [
    "lumbar_score",
    "lumbar_score_details",
    "lumbar_submission_frame",
    "lumbar_weight_optimal_constant",
    "lumbar_grade_matrix",
]

_GRADE_LOOKUP: dict[str, int] = {name.lower(): i for i, name in enumerate(LUMBAR_GRADE_NAMES)}
_GRADE_LOOKUP.update({name: i for i, name in enumerate(LUMBAR_GRADES)})


def _is_blank(value: object) -> bool:
    """A missing label: None, NaN / NA, or an empty / 'missing' string."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "missing", "nan")


def _grade_code(value: object, col: str, source: str | Path) -> int:
    """0/1/2 (or -1) for one non-blank label value; ``InputError`` for anything else."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _GRADE_LOOKUP:
            return _GRADE_LOOKUP[key]
    elif isinstance(value, int | float | np.integer | np.floating) and float(value) in (-1.0, 0.0, 1.0, 2.0):
        return int(value)
    raise InputError(source, f"column {col}: unknown grade {value!r}")


def lumbar_grade_matrix(train_df: pd.DataFrame, *, source: str | Path = "train.csv") -> np.ndarray:
    """Grades ``(n_studies, 25)`` as int 0/1/2 with -1 for missing, from train.csv-format labels.

    Accepts the Kaggle strings ('Normal/Mild', 'Moderate', 'Severe', blank) or numbers 0/1/2 (-1 / NaN =
    missing), in the column order of ``registry.lumbar_columns()``.

    Raises:
        InputError: a label column is missing or holds an unknown value.
    """
    cols = lumbar_columns()
    missing = [c for c in cols if c not in train_df.columns]
    if missing:
        raise InputError(source, f"{len(missing)} label columns missing: {ids_text(missing)}")
    out = np.full((len(train_df), len(cols)), -1, dtype=np.int64)
    for j, col in enumerate(cols):
        series = train_df[col]
        # Map each distinct value once: a column holds at most a handful of them.
        codes = {v: _grade_code(v, col, source) for v in pd.unique(series) if not _is_blank(v)}
        out[:, j] = series.map(codes).fillna(-1).to_numpy(dtype=np.int64)
    return out


def _lumbar_truth(solution: pd.DataFrame, source: str | Path) -> tuple[list[str], pd.DataFrame]:
    """All row ids the submission must hold, and the labelled rows (row_id, study, column, grade, weight)."""
    cols = lumbar_columns()
    if "study_id" in solution.columns:
        studies = solution["study_id"].astype(str)
        if studies.duplicated().any():
            dup = studies[studies.duplicated()].unique().tolist()
            raise InputError(source, f"{len(dup)} studies appear more than once: {ids_text(dup)}")
        grades = lumbar_grade_matrix(solution, source=source)
        all_ids = [rid for s in studies for rid in lumbar_row_ids(s)]
        long = pd.DataFrame(
            {
                "row_id": all_ids,
                "study": np.repeat(studies.to_numpy(), len(cols)),
                "column": np.tile(np.array(cols, dtype=object), len(studies)),
                "grade": grades.reshape(-1),
            }
        )
        long["weight"] = np.where(long["grade"] >= 0, 2.0 ** long["grade"].clip(lower=0), 0.0)
    elif {"row_id", *LUMBAR_GRADES} <= set(solution.columns):
        row_ids = solution["row_id"].astype(str)
        if row_ids.duplicated().any():
            raise InputError(
                source, f"duplicate row ids: {ids_text(row_ids[row_ids.duplicated()].tolist())}"
            )
        all_ids = row_ids.tolist()
        parts = split_row_ids(all_ids, cols, source)
        onehot = solution[list(LUMBAR_GRADES)].apply(pd.to_numeric, errors="coerce").to_numpy()
        labelled = np.isfinite(onehot).all(axis=1) & (np.nansum(onehot, axis=1) == 1)
        grade = np.where(labelled, np.nanargmax(np.nan_to_num(onehot, nan=-1.0), axis=1), -1)
        if "sample_weight" in solution.columns:
            weight = pd.to_numeric(solution["sample_weight"], errors="coerce").fillna(0.0).to_numpy()
        else:
            weight = np.where(grade >= 0, 2.0 ** np.clip(grade, 0, None), 0.0)
        long = pd.DataFrame(
            {
                "row_id": all_ids,
                "study": [p[0] for p in parts],
                "column": [p[1] for p in parts],
                "grade": grade,
                "weight": np.where(grade >= 0, weight, 0.0),
            }
        )
    else:
        raise InputError(
            source,
            "solution must have study_id + the 25 condition_level columns (train.csv) or "
            f"row_id + {list(LUMBAR_GRADES)}; got {list(map(str, solution.columns))}",
        )
    long = long[long["grade"] >= 0].reset_index(drop=True)
    if long.empty:
        raise InputError(source, "the solution holds no labelled rows")
    long["group"] = [condition_group(c.rsplit("_", 2)[0]) for c in long["column"]]
    return all_ids, long


def _weighted_nll(y_index: np.ndarray, probs: np.ndarray, weight: np.ndarray) -> float:
    """``sum(w * -log p[y]) / sum(w)`` for rows of already clipped, normalised probabilities ``(N, C)``."""
    picked = probs[np.arange(len(y_index)), y_index]
    return float(np.sum(weight * -np.log(picked)) / np.sum(weight))


def lumbar_score_details(
    solution: pd.DataFrame,
    submission: pd.DataFrame,
    *,
    submission_name: str | Path = "submission",
    solution_name: str | Path = "solution",
) -> dict[str, float]:
    """RSNA 2024 metric with its parts.

    Args:
        solution: train.csv format (``study_id`` + 25 ``condition_level`` columns holding 'Normal/Mild',
            'Moderate', 'Severe' or blank) or melted Kaggle format (``row_id, normal_mild, moderate, severe``
            one-hot, optional ``sample_weight``). Unlabelled rows are dropped from scoring (but must still be
            present in the submission).
        submission: ``row_id, normal_mild, moderate, severe``. Each row is clipped to
            ``[1e-15, 1 - 1e-15]`` and normalised to sum to 1 before scoring.
        submission_name, solution_name: file names used in error messages.

    Returns:
        ``{"spinal", "foraminal", "subarticular", "any_severe_spinal", "score"}``. A group with no labelled
        row is NaN and left out of the mean.

    Raises:
        InputError: malformed solution or submission (the message names the rows).
    """
    all_ids, truth = _lumbar_truth(solution, solution_name)
    pred = check_submission(submission, all_ids, list(LUMBAR_GRADES), submission_name)
    probs = np.clip(pred.loc[truth["row_id"]].to_numpy(), CLIP_EPS, 1.0 - CLIP_EPS)
    probs = probs / probs.sum(axis=1, keepdims=True)
    grade = truth["grade"].to_numpy()
    weight = truth["weight"].to_numpy(dtype=np.float64)
    details: dict[str, float] = {}
    for group in LUMBAR_GROUPS:
        mask = (truth["group"] == group).to_numpy()
        details[group] = _weighted_nll(grade[mask], probs[mask], weight[mask]) if mask.any() else float("nan")
    spinal = (truth["group"] == "spinal").to_numpy()
    if spinal.any():
        per_study = (
            pd.DataFrame(
                {
                    "study": truth.loc[spinal, "study"].to_numpy(),
                    "y": (grade[spinal] == 2).astype(np.float64),
                    "p": probs[spinal, 2],
                    "w": weight[spinal],
                }
            )
            .groupby("study", sort=False)
            .max()
        )
        p_any = np.clip(per_study["p"].to_numpy(), CLIP_EPS, 1.0 - CLIP_EPS)
        y_any = per_study["y"].to_numpy()
        loss = -(y_any * np.log(p_any) + (1.0 - y_any) * np.log(1.0 - p_any))
        details["any_severe_spinal"] = float(np.sum(per_study["w"].to_numpy() * loss) / per_study["w"].sum())
    else:
        details["any_severe_spinal"] = float("nan")
    parts = [v for v in details.values() if np.isfinite(v)]
    details["score"] = float(np.mean(parts))
    return details


def lumbar_score(
    solution: pd.DataFrame,
    submission: pd.DataFrame,
    *,
    submission_name: str | Path = "submission",
    solution_name: str | Path = "solution",
) -> float:
    """RSNA 2024 weighted log loss: mean of spinal, foraminal, subarticular and any_severe_spinal losses.

    See ``lumbar_score_details`` for the arguments; raises ``InputError`` for a malformed submission.
    """
    return lumbar_score_details(
        solution, submission, submission_name=submission_name, solution_name=solution_name
    )["score"]


def lumbar_submission_frame(probs: Mapping[str | int, np.ndarray] | pd.DataFrame) -> pd.DataFrame:
    """Kaggle rows ``row_id, normal_mild, moderate, severe`` from per-study probabilities.

    Args:
        probs: either a mapping ``study_id -> (25, 3)`` array (rows in ``registry.lumbar_columns()`` order,
            columns normal_mild/moderate/severe), or a frame indexed by study_id with the 75 columns
            ``{condition}_{level}_{grade}``.

    Returns:
        ``25 * n_studies`` rows in sample-submission order.

    Raises:
        ValueError: an array has the wrong shape or a column is missing.
    """
    cols = lumbar_columns()
    if isinstance(probs, pd.DataFrame):
        wide = [f"{c}_{g}" for c in cols for g in LUMBAR_GRADES]
        missing = [c for c in wide if c not in probs.columns]
        if missing:
            raise ValueError(f"probabilities lack {len(missing)} columns, e.g. {missing[:3]}")
        items = [
            (str(s), row.reshape(len(cols), len(LUMBAR_GRADES)))
            for s, row in zip(probs.index, probs[wide].to_numpy(dtype=np.float64), strict=True)
        ]
    else:
        items = [(str(s), np.asarray(a, dtype=np.float64)) for s, a in probs.items()]
    for study, arr in items:
        if arr.shape != (len(cols), len(LUMBAR_GRADES)):
            raise ValueError(f"study {study}: expected a (25, 3) array, got {arr.shape}")
    values = np.concatenate([a for _, a in items]) if items else np.zeros((0, len(LUMBAR_GRADES)))
    frame = pd.DataFrame(values, columns=list(LUMBAR_GRADES))
    frame.insert(0, "row_id", [rid for study, _ in items for rid in lumbar_row_ids(study)])
    return frame


def lumbar_weight_optimal_constant(
    train_df: pd.DataFrame, *, studies: Sequence[str | int] | None = None
) -> pd.DataFrame:
    """The best constant under the weighted loss: per group, ``p_k ∝ w_k n_k`` with weights 1/2/4.

    Minimising ``sum_k w_k n_k (-log p_k)`` subject to ``sum p = 1`` gives ``p_k = w_k n_k / sum_j w_j n_j``.
    The any-severe prediction of a constant is its spinal P(severe), so it is consistent by construction.

    Args:
        train_df: train.csv format labels (the counts come from its labelled rows).
        studies: studies to write rows for; default the studies of ``train_df``.

    Returns:
        A Kaggle-format submission (``row_id, normal_mild, moderate, severe``).
    """
    grades = lumbar_grade_matrix(train_df)
    cols = lumbar_columns()
    group_of_col = np.array([condition_group(c.rsplit("_", 2)[0]) for c in cols])
    constant = np.zeros((len(cols), len(LUMBAR_GRADES)))
    for group in LUMBAR_GROUPS:
        g = grades[:, group_of_col == group].reshape(-1)
        counts = np.array([(g == k).sum() for k in range(len(LUMBAR_GRADES))], dtype=np.float64)
        mass = counts * 2.0 ** np.arange(len(LUMBAR_GRADES))
        if mass.sum() == 0:  # no labels at all in this group: fall back to uniform
            mass = np.ones(len(LUMBAR_GRADES))
        constant[group_of_col == group] = mass / mass.sum()
    ids = [str(s) for s in (train_df["study_id"] if studies is None else studies)]
    return lumbar_submission_frame({s: constant for s in ids})
