"""The sequence route's figure: each vertebra's per-slice curve is drawn level with the sagittal view."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.report.slice_curves import draw_slice_curves, write_slice_curves


def _study() -> tuple[Volume, dict]:
    d, h, w = 40, 48, 48
    _, y, x = np.mgrid[:d, :h, :w]
    ct = np.where((y - 24) ** 2 + (x - 24) ** 2 < 60, 700.0, -50.0).astype(np.float32)
    affine = np.array([[0, 0, 0.8, 0], [0, 0.8, 0, 0], [-2.0, 0, 0, 0], [0, 0, 0, 1.0]])  # canonical: head first
    indices = list(range(4, 36, 2))
    fracture = {v: [0.02] * len(indices) for v in VERTEBRAE}
    fracture["C3"][indices.index(20)] = 0.9  # a peak of C3 on slice 20
    result = {"study": "s1", "probabilities": dict.fromkeys(CERVICAL_TARGETS, 0.1), "crop_box": [12, 12, 36, 36],
              "slice_curves": {"indices": indices, "z_range": [4, 35], "fracture": fracture,
                               "ratio": {v: [0.0] * len(indices) for v in VERTEBRAE}}}
    return Volume(ct, affine), result


def test_the_curves_share_the_sagittal_rows(tmp_path: Path) -> None:
    vol, result = _study()
    fig = draw_slice_curves(vol, result, title="s1")
    sag_ax, curve_ax = fig.axes[:2]
    assert curve_ax.get_ylim() == sag_ax.get_ylim()  # one head-to-feet axis for both panels
    lines = {ln.get_label().split()[0]: ln for ln in curve_ax.get_lines()}
    assert set(lines) == set(VERTEBRAE)
    x, y = lines["C3"].get_data()
    peak_row = y[int(np.argmax(x))]
    assert abs(peak_row - 20) < 1e-6  # slice 20 is row 20 of the sagittal panel of a head-first volume
    assert np.all(np.diff(y) > 0)  # head at the top: slice order runs down the panel
    path = write_slice_curves(vol, result, tmp_path / "s1_slices.png", title="s1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
