"""Submission checks shared by both competition metrics, and the probability clip they use.

Submission probabilities are validated (row ids, duplicates, NaN, range) and a bad submission raises
``InputError`` naming the offending rows (at most ten of them, then a count).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spinelab.errors import InputError

__all__ = ["CLIP_EPS", "ids_text", "check_submission", "split_row_ids"]

#: Probabilities are clipped to ``[CLIP_EPS, 1 - CLIP_EPS]`` before taking logs (both competitions).
CLIP_EPS = 1e-15
_SHOW = 10  # how many offending row ids an error message lists


def ids_text(ids: Sequence[str]) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:_SHOW])
    more = f" ... (first {_SHOW} of {len(ids)})" if len(ids) > _SHOW else ""
    return f"{shown}{more}"


def check_submission(
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
        raise InputError(source, f"{len(dup)} row ids appear more than once: {ids_text(dup)}")
    present = set(row_ids)
    expected_set = set(expected)
    missing = [r for r in expected if r not in present]
    if missing:
        raise InputError(source, f"{len(missing)} row ids missing from the submission: {ids_text(missing)}")
    extra = [r for r in row_ids if r not in expected_set]
    if extra:
        raise InputError(source, f"{len(extra)} row ids not in the solution: {ids_text(extra)}")
    values = sub[list(value_cols)].apply(pd.to_numeric, errors="coerce")
    non_numeric = values.isna() & sub[list(value_cols)].notna()
    bad = row_ids[non_numeric.any(axis=1).to_numpy()].tolist()
    if bad:
        raise InputError(source, f"{len(bad)} rows hold non-numeric values: {ids_text(bad)}")
    arr = values.to_numpy(dtype=np.float64)
    bad = row_ids[~np.isfinite(arr).all(axis=1)].tolist()
    if bad:
        raise InputError(source, f"{len(bad)} rows hold NaN or infinite values: {ids_text(bad)}")
    bad = row_ids[((arr < 0.0) | (arr > 1.0)).any(axis=1)].tolist()
    if bad:
        raise InputError(source, f"{len(bad)} rows hold values outside [0, 1]: {ids_text(bad)}")
    values.index = pd.Index(row_ids, name="row_id")
    return values.astype(np.float64).loc[list(expected)]


def split_row_ids(
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
        raise InputError(source, f"{len(bad)} row ids do not end in a known target: {ids_text(bad)}")
    return out
