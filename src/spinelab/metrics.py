"""The two competition metrics (RSNA 2022 cervical, RSNA 2024 lumbar), submission frames, constant baselines.

Both metrics follow seed-systems.md section 1 exactly:

* **cervical** (RSNA 2022): binary log loss per (study, target) with weights (negative, positive) = (1, 2)
  for C1..C7 and (7, 14) for ``patient_overall`` (``registry.CERVICAL_WEIGHTS``); probabilities clipped to
  ``[1e-15, 1 - 1e-15]``; by default each study's weighted losses are divided by that study's weight sum
  and the result is averaged over studies (``normalisation="row"``, the convention of every seed and of
  mle-bench); ``normalisation="global"`` gives ``sum(w * l) / sum(w)`` over all rows.
* **lumbar** (RSNA 2024, the official Kaggle metric as copied in lhwcv ``patriot/metric.py``): rows are
  ``study x condition x level``; rows without a label are dropped; sample weight ``2 ** grade`` (1/2/4).
  For each group (spinal, foraminal, subarticular) a weighted multiclass log loss; plus ``any_severe_spinal``
  per study (truth = any severe spinal level, prediction = max P(severe) over the study's spinal levels,
  weight = max sample weight); score = mean of the four.

Submission probabilities are validated (row ids, duplicates, NaN, range) and a bad submission raises
``InputError`` naming the offending rows. For the lumbar metric the submission is clipped to
``[1e-15, 1 - 1e-15]`` and each row is normalised to sum to 1 *before* anything else, so the any-severe max
uses normalised P(severe). sklearn's ``log_loss`` normalises rows internally for the three group losses but
the official notebook takes the max over the raw column, so the two agree whenever rows sum to 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spinelab.errors import InputError
from spinelab.registry import (
    CERVICAL_TARGETS,
    CERVICAL_WEIGHTS,
    LUMBAR_GRADE_NAMES,
    LUMBAR_GRADES,
    LUMBAR_GROUPS,
    condition_group,
    lumbar_columns,
    lumbar_row_ids,
)

__all__ = [
    "CLIP_EPS",
    "cervical_score",
    "lumbar_score",
    "lumbar_score_details",
    "score_files",
    "cervical_submission_frame",
    "lumbar_submission_frame",
    "cervical_prevalence_constant",
    "lumbar_weight_optimal_constant",
    "lumbar_grade_matrix",
]

#: Probabilities are clipped to ``[CLIP_EPS, 1 - CLIP_EPS]`` before taking logs (both competitions).
CLIP_EPS = 1e-15
_SHOW = 10  # how many offending row ids an error message lists


# --- shared validation ------------------------------------------------------------------------------------
def _ids_text(ids: Sequence[str]) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:_SHOW])
    more = f" ... (first {_SHOW} of {len(ids)})" if len(ids) > _SHOW else ""
    return f"{shown}{more}"


def _check_submission(
    sub: pd.DataFrame, expected: Sequence[str], value_cols: Sequence[str], source: str | Path
) -> pd.DataFrame:
    """Validate a Kaggle-format submission and return its values indexed by row id in ``expected`` order.

    Args:
        sub: frame with ``row_id`` and ``value_cols``.
        expected: every row id the solution needs, in scoring order.
        value_cols: the probability columns.
        source: file name (or a label) used in error messages.

    Returns:
        Float frame indexed by ``row_id`` with ``value_cols``, rows in ``expected`` order.

    Raises:
        InputError: wrong columns, duplicate / missing / extra row ids, non-numeric, NaN or out-of-range
            values.
    """
    want = ["row_id", *value_cols]
    if sorted(map(str, sub.columns)) != sorted(want):
        raise InputError(source, f"submission columns must be {want}, got {[str(c) for c in sub.columns]}")
    row_ids = sub["row_id"].astype(str)
    dup = row_ids[row_ids.duplicated(keep=False)].unique().tolist()
    if dup:
        raise InputError(source, f"{len(dup)} row ids appear more than once: {_ids_text(dup)}")
    present = set(row_ids)
    expected_set = set(expected)
    missing = [r for r in expected if r not in present]
    if missing:
        raise InputError(source, f"{len(missing)} row ids missing from the submission: {_ids_text(missing)}")
    extra = [r for r in row_ids if r not in expected_set]
    if extra:
        raise InputError(source, f"{len(extra)} row ids not in the solution: {_ids_text(extra)}")
    values = sub[list(value_cols)].apply(pd.to_numeric, errors="coerce")
    non_numeric = values.isna() & sub[list(value_cols)].notna()
    bad = row_ids[non_numeric.any(axis=1).to_numpy()].tolist()
    if bad:
        raise InputError(source, f"{len(bad)} rows hold non-numeric values: {_ids_text(bad)}")
    arr = values.to_numpy(dtype=np.float64)
    bad = row_ids[~np.isfinite(arr).all(axis=1)].tolist()
    if bad:
        raise InputError(source, f"{len(bad)} rows hold NaN or infinite values: {_ids_text(bad)}")
    bad = row_ids[((arr < 0.0) | (arr > 1.0)).any(axis=1)].tolist()
    if bad:
        raise InputError(source, f"{len(bad)} rows hold values outside [0, 1]: {_ids_text(bad)}")
    values.index = pd.Index(row_ids, name="row_id")
    return values.astype(np.float64).loc[list(expected)]


def _split_row_ids(
    row_ids: Iterable[str], suffixes: Sequence[str], source: str | Path
) -> list[tuple[str, str]]:
    """Split ``<study>_<suffix>`` row ids on a known suffix (study ids may themselves hold underscores)."""
    out: list[tuple[str, str]] = []
    bad: list[str] = []
    # Longest first, so that e.g. "..._patient_overall" never matches a shorter suffix by accident.
    ordered = sorted(suffixes, key=len, reverse=True)
    for rid in row_ids:
        for suffix in ordered:
            if rid.endswith(f"_{suffix}") and len(rid) > len(suffix) + 1:
                out.append((rid[: -len(suffix) - 1], suffix))
                break
        else:
            bad.append(rid)
    if bad:
        raise InputError(source, f"{len(bad)} row ids do not end in a known target: {_ids_text(bad)}")
    return out


# --- cervical ---------------------------------------------------------------------------------------------
def _cervical_truth(solution: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """Long frame ``row_id, study, target, y`` from train.csv or melted Kaggle format."""
    if "StudyInstanceUID" in solution.columns and all(t in solution.columns for t in CERVICAL_TARGETS):
        studies = solution["StudyInstanceUID"].astype(str)
        if studies.duplicated().any():
            dup = studies[studies.duplicated()].unique().tolist()
            raise InputError(source, f"{len(dup)} studies appear more than once: {_ids_text(dup)}")
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
                source, f"duplicate row ids: {_ids_text(row_ids[row_ids.duplicated()].tolist())}"
            )
        parts = _split_row_ids(row_ids, CERVICAL_TARGETS, source)
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
        raise InputError(source, f"{len(bad)} solution labels are not 0/1: {_ids_text(bad)}")
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
    pred = _check_submission(submission, truth["row_id"].tolist(), ["fractured"], submission_name)
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


# --- lumbar -----------------------------------------------------------------------------------------------
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
        raise InputError(source, f"{len(missing)} label columns missing: {_ids_text(missing)}")
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
            raise InputError(source, f"{len(dup)} studies appear more than once: {_ids_text(dup)}")
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
                source, f"duplicate row ids: {_ids_text(row_ids[row_ids.duplicated()].tolist())}"
            )
        all_ids = row_ids.tolist()
        parts = _split_row_ids(all_ids, cols, source)
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
    pred = _check_submission(submission, all_ids, list(LUMBAR_GRADES), submission_name)
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


# --- files (the CLI) --------------------------------------------------------------------------------------
def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        # Ids stay strings: a lumbar study_id must not become an int and a UID must not lose digits.
        return pd.read_csv(
            path, dtype={"row_id": str, "study_id": str, "StudyInstanceUID": str}, keep_default_na=True
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot parse {what} CSV: {err}") from err


def score_files(solution_path: str | Path, submission_path: str | Path, *, task: str) -> float:
    """Score a submission CSV against a solution CSV (``spinelab score``).

    Args:
        solution_path: labels (train.csv format or melted Kaggle format).
        submission_path: Kaggle-format submission.
        task: ``"cervical"`` or ``"lumbar"``.

    Returns:
        The competition loss.

    Raises:
        InputError: a file is missing, unreadable or malformed.
        ValueError: unknown task.
    """
    solution_path, submission_path = Path(solution_path), Path(submission_path)
    solution = _read_csv(solution_path, "solution")
    submission = _read_csv(submission_path, "submission")
    if task == "cervical":
        return cervical_score(
            solution, submission, submission_name=submission_path, solution_name=solution_path
        )
    if task == "lumbar":
        return lumbar_score(
            solution, submission, submission_name=submission_path, solution_name=solution_path
        )
    raise ValueError(f"task must be 'cervical' or 'lumbar', got {task!r}")
