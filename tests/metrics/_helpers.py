"""Solution and submission frames in the Kaggle layouts, shared by the metrics tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spinelab.metrics import lumbar_submission_frame
from spinelab.registry import CERVICAL_TARGETS, LUMBAR_GRADE_NAMES, lumbar_columns


def cervical_train(rows: dict[str, list[int]]) -> pd.DataFrame:
    """train.csv frame from ``{uid: [C1..C7]}``; patient_overall = max."""
    records = [
        {
            "StudyInstanceUID": uid,
            "patient_overall": max(v),
            **dict(zip(CERVICAL_TARGETS[:7], v, strict=True)),
        }
        for uid, v in rows.items()
    ]
    return pd.DataFrame(records)[["StudyInstanceUID", "patient_overall", *CERVICAL_TARGETS[:7]]]


def lumbar_train(grades: dict[str, np.ndarray]) -> pd.DataFrame:
    """train.csv frame from ``{study_id: (25,) int grades, -1 = blank}``."""
    records = []
    for sid, g in grades.items():
        rec: dict[str, object] = {"study_id": sid}
        for col, v in zip(lumbar_columns(), g, strict=True):
            rec[col] = LUMBAR_GRADE_NAMES[v] if v >= 0 else np.nan
        records.append(rec)
    return pd.DataFrame(records)


def lumbar_pair(grades: dict[str, np.ndarray], probs: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """train.csv frame from ``grades`` and a submission predicting ``probs`` ``(25, 3)`` for every study."""
    return lumbar_train(grades), lumbar_submission_frame({s: probs for s in grades})
