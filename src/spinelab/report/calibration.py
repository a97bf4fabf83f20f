"""Calibration tables (does a predicted 0.3 mean 30 %? binned mean prediction against observed rate), their
plot, and the labels a prediction folder was scored against (``evaluation.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["calibration_table", "plot_calibration", "read_evaluation"]


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


def plot_calibration(table: pd.DataFrame, path: str | Path, *, title: str = "Calibration") -> Path:
    """Reliability diagram of a ``calibration_table``: observed rate against mean prediction per bin, the
    diagonal of perfect calibration, and the number of predictions per bin.

    Returns:
        ``path`` (a PNG).
    """
    from spinelab.report.figures import plt, save_figure

    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5.6, 5.4), sharex=True, height_ratios=[3, 1],
                                     layout="constrained")
    ax.plot([0, 1], [0, 1], ls="--", color="#757575", lw=1, label="perfectly calibrated")
    if len(table):
        ax.plot(table.mean_predicted, table.observed_rate, "-o", color="#1565c0", ms=5, label="this model")
        counts.bar((table.bin_low + table.bin_high) / 2, table["count"], width=(table.bin_high - table.bin_low) * 0.9,
                   color="#90a4ae")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed fracture rate", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    counts.set(xlabel="mean predicted probability in the bin", ylabel="predictions")
    counts.grid(alpha=0.3)
    return save_figure(fig, path)


def read_evaluation(folder: str | Path, *, id_column: str) -> tuple[dict, pd.DataFrame | None, str]:
    """``(evaluation.json, its labels table or None, a note for the reader)`` of a ``predict`` folder.

    Empty when the predictions were not scored; the table is ``None`` (with a note) when the labels file it
    names has gone since. ``id_column`` is read as text (study ids are names, not numbers).
    """
    path = Path(folder) / "evaluation.json"
    if not path.is_file():
        return {}, None, ""
    evaluation = json.loads(path.read_text())
    labels = Path(str(evaluation.get("labels", "")))
    if not labels.is_file():
        return evaluation, None, f"labels file {labels} no longer exists: truth not shown per study"
    return evaluation, pd.read_csv(labels, dtype={id_column: str}), ""
