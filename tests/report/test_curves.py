"""Training curves: one figure per stage, losses labelled as losses, the kept epoch and the constant baseline
drawn, titles that do not overlap, readable at page width."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from matplotlib.image import imread

from spinelab.report.curves import best_epoch, curve_panels, direction, draw_stage_curves, plot_training_curves
from spinelab.report.figures import plt
from spinelab.train.run import read_training_log


def test_panels_pair_training_with_validation_and_group_families() -> None:
    columns = ["epoch", "step", "train/loss_epoch", "train/loss_step", "val/loss", "val/auc", "val/error_mm",
               "val/error_mm_l1_l2", "val/error_mm_l2_l3", "val/loss_spinal", "val/loss_foraminal",
               "train/box_epoch"]
    panels = curve_panels(columns)
    assert list(panels)[0] == "loss" and panels["loss"] == ["train/loss_epoch", "val/loss"]
    assert panels["error_mm"] == ["val/error_mm", "val/error_mm_l1_l2", "val/error_mm_l2_l3"]
    assert panels["loss_* (metric parts)"] == ["val/loss_foraminal", "val/loss_spinal"]
    assert panels["box"] == ["train/box_epoch"] and panels["auc"] == ["val/auc"]


def test_direction_of_losses_and_metrics() -> None:
    assert direction("loss") == direction("competition_score") == direction("error_mm") == "lower is better"
    assert direction("auc_vertebra") == direction("within_5mm") == direction("presence_acc") == "higher is better"
    assert direction("step_loss") == direction("ratio_mae") == "lower is better"


def test_best_epoch_from_the_checkpoint_without_running_code(cervical_run: Path, tmp_path: Path) -> None:
    assert best_epoch(cervical_run / "stage2" / "fold_0") == 2
    assert best_epoch(tmp_path) is None  # no checkpoint, no scores: no marker
    (tmp_path / "scores.json").write_text('{"best_epoch": 4}')
    assert best_epoch(tmp_path) == 4


def test_one_figure_per_stage_readable_at_page_width(cervical_run: Path, tmp_path: Path) -> None:
    written = plot_training_curves(cervical_run, tmp_path)
    assert [p.name for p in written] == ["curves_stage1.png", "curves_stage2.png"]
    for p in written:
        height, width = imread(p).shape[:2]
        assert 1000 <= width <= 1700 and height < width  # about the page width: shown near 1:1


@pytest.fixture
def stage2_figure(cervical_run: Path):
    logs = {f: read_training_log(cervical_run / "stage2" / f) for f in ("fold_0", "fold_1")}
    fig = draw_stage_curves(cervical_run, "stage2", logs, {"fold_0": 2, "fold_1": 2})
    fig.canvas.draw()
    yield fig
    plt.close(fig)


def test_losses_labelled_best_epoch_and_baseline_drawn(stage2_figure) -> None:
    axes = {ax.get_title(): ax for ax in stage2_figure.axes if ax.get_visible()}
    assert set(axes) == {"loss", "study_loss", "competition_score", "auc_vertebra"}
    assert axes["loss"].get_ylabel() == "loss (lower is better)"
    assert axes["study_loss"].get_ylabel() == "loss (lower is better)"
    assert axes["auc_vertebra"].get_ylabel() == "auc_vertebra (higher is better)"
    for ax in axes.values():
        labels = [line.get_label() for line in ax.lines]
        assert "fold_0 best epoch 2 (model.pt)" in labels
        best = next(line for line in ax.lines if line.get_label().startswith("fold_0 best"))
        assert list(best.get_xdata()) == [2, 2]
    baseline = [line for line in axes["competition_score"].lines if line.get_label().startswith("constant")]
    assert len(baseline) == 1 and baseline[0].get_ydata()[0] == pytest.approx(0.51)
    assert not any(line.get_label().startswith("constant") for line in axes["auc_vertebra"].lines)
    train = [line for line in axes["loss"].lines if line.get_label() == "fold_0 train"]
    assert len(train) == 1 and train[0].get_linestyle() == "-"


def test_titles_do_not_overlap(stage2_figure) -> None:
    renderer = stage2_figure.canvas.get_renderer()
    boxes = [stage2_figure._suptitle.get_window_extent(renderer)]
    boxes += [ax.title.get_window_extent(renderer) for ax in stage2_figure.axes if ax.get_visible()]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    for ax in stage2_figure.axes:  # and no title runs into its own panel
        if ax.get_visible():
            assert ax.title.get_window_extent(renderer).y0 >= ax.get_window_extent(renderer).y1 - 1


def test_a_first_epoch_far_above_the_rest_gets_a_log_axis(cervical_run: Path) -> None:
    import pandas as pd

    rows = [{"epoch": e, "step": e, "val/error_mm": 100.0 if e == 0 else 3.0 - 0.1 * e} for e in range(6)]
    rows += [{"epoch": e, "step": e, "train/loss_epoch": 1.0 - 0.1 * e} for e in range(6)]
    fig = draw_stage_curves(cervical_run, "stage1", {"fold_0": pd.DataFrame(rows)}, {"fold_0": 5})
    scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes if ax.get_visible()}
    assert scales == {"loss": "linear", "error_mm": "log"}
    plt.close(fig)
