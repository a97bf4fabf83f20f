"""Figure helpers: display orientation from the affine, edge letters, scale bar, contrast, label spreading."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.io.orientation import orientation_letters, to_canonical
from spinelab.io.volume import Volume
from spinelab.report.figures import (
    RISK_BANDS,
    contrast_ratio,
    plt,
    readable_text_color,
    risk_color,
    show_panel,
    slice_panel,
    spread_labels,
    volume_panel,
)

IMAGE = np.arange(12.0).reshape(3, 4)


def test_contrast_ratio_matches_wcag() -> None:
    assert contrast_ratio("black", "white") == pytest.approx(21.0)
    assert contrast_ratio("#777777", "#777777") == pytest.approx(1.0)
    assert contrast_ratio("white", "#767676") == pytest.approx(4.54, abs=0.01)  # WCAG's 4.5:1 grey


@pytest.mark.parametrize("background", ["#ffffff", "#000000", "#f9a825", "#2e7d32", "#c62828", "#fde0dc"])
def test_readable_text_color_reaches_aa(background: str) -> None:
    assert contrast_ratio(readable_text_color(background), background) >= 4.5


def test_risk_bands_have_readable_text_and_cover_0_to_1() -> None:
    assert [risk_color(p) for p in (0.0, 0.19, 0.2, 0.49, 0.5, 1.0)] == [RISK_BANDS[i][1] for i in (0, 0, 1, 1, 2, 2)]
    for _, color, _ in RISK_BANDS:
        assert contrast_ratio(readable_text_color(color), color) >= 4.5


def test_axial_stored_any_way_is_shown_radiologically() -> None:
    standard = slice_panel(IMAGE, [0, 0.5, 0], [0.7, 0, 0], plane="axial")  # rows -> P, columns -> L
    mirrored = slice_panel(IMAGE[:, ::-1], [0, 0.5, 0], [-0.7, 0, 0], plane="axial")  # columns -> R
    transposed = slice_panel(IMAGE.T, [0.7, 0, 0], [0, 0.5, 0], plane="axial")  # rows -> L
    for panel in (standard, mirrored, transposed):
        np.testing.assert_array_equal(panel.image, IMAGE)
        assert panel.letters == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
        assert (panel.row_mm, panel.col_mm) == pytest.approx((0.5, 0.7))
    # a stored pixel lands where its value is shown
    assert mirrored.to_display(0, 2) == (3, 2) and IMAGE[2, 3] == IMAGE[:, ::-1][2, 0]
    x, y = transposed.to_display(2, 1)
    assert IMAGE[int(y), int(x)] == IMAGE.T[1, 2]


def test_sagittal_feet_first_is_shown_head_up_anterior_left() -> None:
    panel = slice_panel(IMAGE, [0, 0, 2.0], [0, 0.5, 0], plane="sagittal")  # rows towards the head
    np.testing.assert_array_equal(panel.image, IMAGE[::-1])
    assert panel.letters == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    assert panel.to_display(1, 0) == (1, 2)


def test_canonical_panels_agree_with_orientation_letters(oblique_affine: np.ndarray) -> None:
    canon = to_canonical(Volume(np.zeros((5, 6, 7)), oblique_affine))
    letters = orientation_letters(canon)
    for axis, plane in ((0, "axial"), (1, "coronal"), (2, "sagittal")):
        panel = volume_panel(canon, axis, 2, plane=plane)
        assert panel.letters == letters[plane]
        assert panel.to_display(3, 1) == (3, 1)  # nothing to move on the canonical grid


def test_show_panel_draws_four_letters_and_a_true_scale_bar() -> None:
    panel = slice_panel(np.zeros((100, 200)), [0, 0.5, 0], [0.8, 0, 0], plane="axial")  # 160 mm wide
    fig, ax = plt.subplots()
    show_panel(ax, panel, window=(0, 100), title="t")
    letters = sorted(t.get_text() for t in ax.texts if t.get_gid() == "orientation")
    assert letters == ["A", "L", "P", "R"]
    (bar,) = [line for line in ax.lines if line.get_gid() == "scale-bar"]
    length_px = np.ptp(bar.get_xdata())
    label = next(t.get_text() for t in ax.texts if t.get_text().endswith(" mm"))
    assert label == "20 mm" and length_px * 0.8 == pytest.approx(20.0)
    plt.close(fig)


def test_spread_labels_keeps_order_gap_and_bounds() -> None:
    centres = np.array([5.0, 5.2, 5.1, 30.0, 99.0, 99.5, 99.9])
    pos = spread_labels(centres, 4.0, 0.0, 100.0)
    assert np.all(np.diff(pos) >= 4.0 - 1e-9)
    assert pos[0] >= 0.0 and pos[-1] <= 100.0
    assert pos[3] == pytest.approx(30.0)  # a label with room stays beside its range
    crowded = spread_labels(np.full(7, 50.0), 10.0, 0.0, 30.0)  # no room: the gap shrinks to fit
    assert np.allclose(np.diff(crowded), 5.0) and crowded[0] >= 0 and crowded[-1] <= 30
