"""Slice-level pseudo-labels: stage-1 ratio x the study label, fracture boxes, the z-range with its margin."""

from __future__ import annotations

import numpy as np

from spinelab.tasks.cervical.sequence.labels import pseudo_labels, z_range


def _ratio() -> np.ndarray:
    """Six slices: C1 on slices 0-2, C2 on slices 2-5 (overlapping at slice 2), the rest absent."""
    r = np.zeros((6, 7), np.float32)
    r[:3, 0] = [0.4, 1.0, 0.5]
    r[2:, 1] = [0.3, 0.8, 1.0, 0.6]
    return r


def test_pseudo_labels_are_ratio_times_the_study_label() -> None:
    ratio = _ratio()
    labels = np.array([0, 1, 0, 0, 0, 0, 0, 1], np.float32)  # C2 fractured, patient positive
    out = pseudo_labels(ratio, labels)
    want = np.zeros_like(ratio)
    want[2:, 1] = [0.3, 0.8, 1.0, 0.6]  # C2's ratios; intact C1 gets nothing
    np.testing.assert_allclose(out, want)
    assert pseudo_labels(ratio, np.zeros(8, np.float32)).max() == 0.0  # an intact study has no positive slice


def test_a_box_makes_its_slice_positive_and_the_other_slices_keep_the_pseudo_label() -> None:
    ratio = _ratio()
    labels = np.array([1, 1, 0, 0, 0, 0, 0, 1], np.float32)
    out = pseudo_labels(ratio, labels, {"C2": {2}, "": {0}, "C5": {4}})
    assert out[2, 1] == 1.0  # boxed slice of C2: positive (its ratio was 0.3)
    np.testing.assert_allclose(out[3:, 1], [0.8, 1.0, 0.6])  # C2's other slices keep ratio x label
    assert out[0, 0] == 1.0  # a box of no vertebra goes to the fractured vertebra with the highest ratio there
    assert out[4, 4] == 0.0  # a box on an intact vertebra does not make it fractured
    np.testing.assert_allclose(out[1:3, 0], [1.0, 0.5])


def test_the_z_range_spans_the_vertebrae_plus_the_margin_clipped_to_the_study() -> None:
    summary = {"ranges": {"C1": [10, 14], "C2": [15, 20], "C7": [40, 44]}}
    assert z_range(summary, 60, 2.0, 10.0) == (5, 49)  # 10 mm = 5 slices of 2 mm either side
    assert z_range(summary, 46, 2.0, 10.0) == (5, 45)
    assert z_range(summary, 60, 1.0, 0.0) == (10, 44)
    assert z_range({"ranges": {}}, 30, 1.0, 5.0) == (0, 29)
