"""The RSNA 2022 cervical metric, its submission frame and the prevalence baseline.

Binary log loss per (study, target) with weights (negative, positive) = (1, 2) for C1..C7 and (7, 14) for
``patient_overall`` (``registry.CERVICAL_WEIGHTS``); probabilities clipped to ``[1e-15, 1 - 1e-15]``; by
default each study's weighted losses are divided by that study's weight sum and the result is averaged over
studies (``normalisation="row"``, the convention of every seed and of mle-bench); ``normalisation="global"``
gives ``sum(w * l) / sum(w)`` over all rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spinelab.errors import InputError
from spinelab.metrics.common import CLIP_EPS, check_submission, ids_text, split_row_ids
from spinelab.registry import CERVICAL_TARGETS, CERVICAL_WEIGHTS

__all__ = ["cervical_score", "cervical_submission_frame", "cervical_prevalence_constant"]


def _cervical_truth(solution: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """Long frame ``row_id, study, target, y`` from train.csv or melted Kaggle format."""
    if "StudyInstanceUID" in solution.columns and all(t in solution.columns for t in CERVICAL_TARGETS):
        studies = solution["StudyInstanceUID"].astype(str)
        if studies.duplicated().any():
            dup = studies[studies.duplicated()].unique().tolist()
            raise InputError(source, f"{len(dup)} studies appear more than once: {ids_text(dup)}")
        y = solution[list(CERVICAL_TARGETS)].to_numpy()
        long = pd.DataFrame(
            {
                "study": np.repeat(studies.to_numpy(), len(CERVICAL_TARGETS)),
                "target": np.tile(np.array(CERVICAL_TARGETS, dtype=object), len(studies)),
                "y": y.reshape(-1),
            }
        )
        long["row_id"] = long["study"] + "_" + long["target"]
    elif {"row_id", "fractured"} <= set(solution.columns):
        row_ids = solution["row_id"].astype(str)
        if row_ids.duplicated().any():
            raise InputError(
                source, f"duplicate row ids: {ids_text(row_ids[row_ids.duplicated()].tolist())}"
            )
        parts = split_row_ids(row_ids, CERVICAL_TARGETS, source)
        long = pd.DataFrame(
            {
                "row_id": row_ids.to_numpy(),
                "study": [p[0] for p in parts],
                "target": [p[1] for p in parts],
                "y": solution["fractured"].to_numpy(),
            }
        )
    else:
        raise InputError(
            source,
            "solution must have StudyInstanceUID + C1..C7 + patient_overall "
            f"(train.csv) or row_id + fractured; got {list(map(str, solution.columns))}",
        )
    y = pd.to_numeric(long["y"], errors="coerce")
    bad = long.loc[~y.isin([0, 1]), "row_id"].tolist()
    if bad:
        raise InputError(source, f"{len(bad)} solution labels are not 0/1: {ids_text(bad)}")
    long["y"] = y.astype(np.float64)
    return long


def cervical_score(
    solution: pd.DataFrame,
    submission: pd.DataFrame,
    *,
    normalisation: str = "row",
    submission_name: str | Path = "submission",
    solution_name: str | Path = "solution",
) -> float:
    """RSNA 2022 weighted multi-label log loss.

    Args:
        solution: train.csv format (``StudyInstanceUID, patient_overall, C1..C7``) or melted Kaggle format
            (``row_id, fractured``). Every row id in it must be predicted.
        submission: ``row_id, fractured`` with ``row_id = <StudyInstanceUID>_<C1..C7|patient_overall>``.
        normalisation: ``"row"`` (default: per-study weighted mean, then mean over studies) or ``"global"``
            (``sum(w * l) / sum(w)`` over all rows).
        submission_name, solution_name: file names used in error messages.

    Returns:
        The loss (lower is better).

    Raises:
        InputError: malformed solution or submission (the message names the rows).
        ValueError: unknown ``normalisation``.
    """
    if normalisation not in ("row", "global"):
        raise ValueError(f"normalisation must be 'row' or 'global', got {normalisation!r}")
    truth = _cervical_truth(solution, solution_name)
    pred = check_submission(submission, truth["row_id"].tolist(), ["fractured"], submission_name)
    y = truth["y"].to_numpy()
    p = np.clip(pred["fractured"].to_numpy(), CLIP_EPS, 1.0 - CLIP_EPS)
    neg = truth["target"].map(lambda t: CERVICAL_WEIGHTS[t][0]).to_numpy(dtype=np.float64)
    pos = truth["target"].map(lambda t: CERVICAL_WEIGHTS[t][1]).to_numpy(dtype=np.float64)
    w = np.where(y > 0.5, pos, neg)
    loss = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    if normalisation == "global":
        return float(np.sum(w * loss) / np.sum(w))
    frame = pd.DataFrame({"study": truth["study"].to_numpy(), "wl": w * loss, "w": w})
    per_study = frame.groupby("study", sort=False).sum()
    return float((per_study["wl"] / per_study["w"]).mean())


def cervical_submission_frame(probs: pd.DataFrame) -> pd.DataFrame:
    """Kaggle rows ``row_id, fractured`` from per-study probabilities.

    Args:
        probs: frame indexed by StudyInstanceUID with columns C1..C7 and patient_overall.

    Returns:
        ``8 * n_studies`` rows: studies in index order, targets in registry order.

    Raises:
        ValueError: a target column is missing.
    """
    missing = [t for t in CERVICAL_TARGETS if t not in probs.columns]
    if missing:
        raise ValueError(f"probabilities lack columns {missing}")
    studies = probs.index.astype(str).to_numpy()
    values = probs[list(CERVICAL_TARGETS)].to_numpy(dtype=np.float64)
    row_ids = [f"{s}_{t}" for s in studies for t in CERVICAL_TARGETS]
    return pd.DataFrame({"row_id": row_ids, "fractured": values.reshape(-1)})


def cervical_prevalence_constant(
    train_df: pd.DataFrame, *, studies: Sequence[str] | None = None
) -> pd.DataFrame:
    """The per-column prevalence baseline: each target predicted as its training positive rate.

    Args:
        train_df: train.csv format labels.
        studies: studies to write rows for; default the studies of ``train_df``.

    Returns:
        A Kaggle-format submission (``row_id, fractured``).
    """
    prevalence = train_df[list(CERVICAL_TARGETS)].astype(np.float64).mean(axis=0)
    ids = [str(s) for s in (train_df["StudyInstanceUID"] if studies is None else studies)]
    probs = pd.DataFrame(
        np.tile(prevalence.to_numpy(), (len(ids), 1)), index=ids, columns=list(CERVICAL_TARGETS)
    )
    return cervical_submission_frame(probs)
