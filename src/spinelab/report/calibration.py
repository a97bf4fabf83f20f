"""Calibration tables: does a predicted 0.3 mean 30 %? Binned mean prediction against observed rate."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["calibration_table"]


def calibration_table(y_true: np.ndarray, y_prob: np.ndarray, *, bins: int = 10) -> pd.DataFrame:
    """Equal-width probability bins with count, mean predicted probability and observed positive rate.

    Args:
        y_true: 0/1 labels.
        y_prob: predicted probabilities.
        bins: number of bins over [0, 1].

    Returns:
        One row per non-empty bin: ``bin_low, bin_high, count, mean_predicted, observed_rate``.
    """
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_prob = np.asarray(y_prob, dtype=float).ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(y_prob, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "count": int(sel.sum()),
                         "mean_predicted": float(y_prob[sel].mean()), "observed_rate": float(y_true[sel].mean())})
    return pd.DataFrame(rows)
