"""Calibration tables and their reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from spinelab.report.calibration import calibration_table, plot_calibration


def test_calibration_table_bins_predictions_and_rates() -> None:
    y_prob = np.array([0.05, 0.08, 0.5, 0.55, 0.95, 1.0])
    y_true = np.array([0, 0, 1, 0, 1, 1])
    table = calibration_table(y_true, y_prob, bins=10)
    assert list(table.bin_low) == pytest.approx([0.0, 0.5, 0.9])
    assert list(table["count"]) == [2, 2, 2]
    assert list(table.mean_predicted) == pytest.approx([0.065, 0.525, 0.975])
    assert list(table.observed_rate) == pytest.approx([0.0, 0.5, 1.0])


def test_plot_calibration_writes_a_png(tmp_path: Path) -> None:
    table = calibration_table(np.array([0, 1, 1, 0]), np.array([0.1, 0.7, 0.9, 0.3]))
    path = plot_calibration(table, tmp_path / "calibration.png")
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.std() > 0.05  # drawn, not blank
    empty = plot_calibration(table.iloc[:0], tmp_path / "empty.png")  # no bins: still a valid figure
    assert imread(empty).shape[0] > 300
