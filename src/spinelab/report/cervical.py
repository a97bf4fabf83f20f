"""The cervical report: per study a sagittal and a coronal reformat with the predicted vertebra ranges, an
axial slice at the most suspicious level with the crop box, and the fracture probabilities (beside the
labels when they exist); an HTML index sorted by risk with the status and warnings of every study and, when
the predictions were evaluated, the metric, the AUCs and a calibration plot."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory

from spinelab.errors import SpinelabError
from spinelab.infer.batch import progress_bar, read_study_results
from spinelab.infer.studies import find_input_studies, read_study_volume
from spinelab.io.orientation import to_canonical
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.report.calibration import plot_calibration, read_evaluation
from spinelab.report.curves import check_run_folder, plot_training_curves
from spinelab.report.figures import (
    LEVEL_COLORS,
    Panel,
    crop_columns,
    plt,
    readable_text_color,
    risk_color,
    risk_legend_handles,
    save_figure,
    show_panel,
    spread_labels,
    volume_panel,
)
from spinelab.report.html import Column, check_report_folder, metric_row, metric_table, write_index

__all__ = ["write_cervical_report", "plot_cervical_study", "draw_cervical_study", "vertebra_slices", "most_suspicious"]

_WINDOW = (400.0, 1800.0)  # bone window (level, width) in HU


def vertebra_slices(volume: Volume, result: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Each predicted vertebra's inclusive slice range on ``volume``'s grid.

    Slice file names (``slice_numbers``) locate the range when the volume has them, so the range holds on
    any ordering of the slices; the stored indices are the fallback.
    """
    position = {str(s): i for i, s in enumerate(volume.slice_ids or [])}
    out = {}
    for v in VERTEBRAE:
        r = (result.get("vertebra_ranges") or {}).get(v)
        if not r:
            continue
        numbers = r.get("slice_numbers") or []
        if len(numbers) == 2 and all(str(n) in position for n in numbers):
            a, b = (position[str(n)] for n in numbers)
        else:
            a, b = int(r["start_index"]), int(r["end_index"])
        out[v] = (min(a, b), max(a, b))
    return out


def most_suspicious(result: dict[str, Any], ranges: dict[str, tuple[int, int]]) -> str | None:
    """The located vertebra with the highest fracture probability (``None`` when none was located)."""
    probs = result.get("probabilities", {})
    located = [v for v in VERTEBRAE if v in ranges]
    return max(located, key=lambda v: probs.get(v, 0.0)) if located else None


def plot_cervical_study(volume: Volume, result: dict[str, Any], path: str | Path, *,
                        truth: dict[str, int] | None = None, window: tuple[float, float] = _WINDOW) -> Path:
    """Write ``draw_cervical_study``'s figure to the PNG ``path``."""
    return save_figure(draw_cervical_study(volume, result, truth=truth, window=window), path)


def draw_cervical_study(volume: Volume, result: dict[str, Any], *, truth: dict[str, int] | None = None,
                        window: tuple[float, float] = _WINDOW) -> Figure:
    """One study: sagittal and coronal through the crop-box centre, axial at the most suspicious level, the
    probabilities (and labels).

    Args:
        volume: the study as read (it is shown in the canonical orientation, like the models see it).
        result: its prediction JSON (slice ranges and the crop box on the canonical grid).
        truth: ``{target: 0/1}`` from the labels, drawn beside the probabilities.
        window: CT window (level, width).
    """
    volume = to_canonical(volume)
    depth, height, width = volume.shape
    box = result.get("crop_box") or [0, 0, width, height]
    cx = int(np.clip((box[0] + box[2]) / 2, 0, width - 1))
    cy = int(np.clip((box[1] + box[3]) / 2, 0, height - 1))
    ranges = vertebra_slices(volume, result)
    worst = most_suspicious(result, ranges)
    level = (sum(ranges[worst]) // 2) if worst else depth // 2
    probs = result.get("probabilities", {})

    margin = 20.0 / volume.spacing[2]  # 2 cm either side of the crop box
    sag_narrow = ((cy, 0), (box[3] - box[1]) + 2 * margin)
    cor_narrow = ((cx, 0), (box[2] - box[0]) + 2 * margin)
    sag = volume_panel(volume, 2, cx, plane="sagittal")
    sag = _narrow(sag, sag.to_display(*sag_narrow[0])[0], sag_narrow[1])
    cor = volume_panel(volume, 1, cy, plane="coronal")
    cor = _narrow(cor, cor.to_display(*cor_narrow[0])[0], cor_narrow[1])
    axial = volume_panel(volume, 0, level, plane="axial")
    # As tall as the tallest panel needs at its width (a long scan is tall, a short one is not squashed).
    tallest = max(_height_ratio(p) for p in (sag, cor, axial))
    fig = plt.figure(figsize=(13.5, float(np.clip(2.9 * tallest, 3.4, 8.0)) + 1.95))
    grid = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1.15, 0.95], wspace=0.32, left=0.08, right=0.97,
                            top=1 - 0.65 / fig.get_figheight(), bottom=1.3 / fig.get_figheight())
    sag_ax, cor_ax, ax_ax, bar_ax = (fig.add_subplot(grid[0, i]) for i in range(4))
    show_panel(sag_ax, sag, window=window, title=f"sagittal through the crop box (column {cx})")
    show_panel(cor_ax, cor, window=window, title=f"coronal through the crop box (row {cy})")
    where = f"{worst} (P {probs.get(worst, 0.0):.2f})" if worst else "mid-volume (no vertebra located)"
    show_panel(ax_ax, axial, window=window, title=f"axial at {where}, slice {level}")
    _draw_crop_box(ax_ax, axial, box)
    sections = result.get("mask_sections") or {}
    _draw_mask_section(sag_ax, volume, sections.get("sagittal"), 2, cx, "sagittal", sag_narrow)
    _draw_mask_section(cor_ax, volume, sections.get("coronal"), 1, cy, "coronal", cor_narrow)
    for ax, panel in ((sag_ax, sag), (cor_ax, cor)):
        row = panel.to_display(0, level)[1]
        ax.axhline(row, color="#ffd54f", ls="--", lw=0.9, gid="axial-level")
    fig.canvas.draw()  # the panels' final size decides how far apart the labels must be
    _draw_vertebrae(sag_ax, sag, ranges, result)
    _draw_vertebrae(cor_ax, cor, ranges, result, labels=False)
    _draw_probabilities(bar_ax, probs, truth)

    status = result.get("status", "ok")
    fig.suptitle(f"{result.get('study', '')}    status: {status}    "
                 f"overall P(fracture) {probs.get('patient_overall', 0.0):.2f}", fontsize=11, y=0.985)
    notes = list(result.get("warnings") or [])
    if notes:
        text = "\n".join(textwrap.shorten(w, 190, placeholder=" ...") for w in notes[:4])
        more = f"\n(+{len(notes) - 4} more warnings)" if len(notes) > 4 else ""
        fig.text(0.01, 0.02, "⚠ " + text + more, fontsize=8.5, va="bottom", color="#6d4c00")
    return fig


def _draw_mask_section(ax: Any, volume: Volume, section: dict[str, Any] | None, axis: int, index: int,
                       plane: str, narrow: tuple[tuple[float, float], float]) -> None:
    """A segmentation route's vertebra labels on a reformat (``mask_sections`` of its result: the label plane
    through ``index`` across ``axis`` of the canonical grid, run-length coded), coloured per vertebra."""
    from matplotlib.colors import ListedColormap

    if not section or int(section.get("column", section.get("row", -1))) != index:
        return
    rle = np.asarray(section["rle"], dtype=np.int64).reshape(-1, 2)
    plane_shape = tuple(int(n) for n in section["shape"])
    expected = tuple(n for a, n in enumerate(volume.shape) if a != axis)
    if plane_shape != expected or rle[:, 1].sum() != np.prod(plane_shape):
        return  # not this volume's plane: draw nothing rather than something misplaced
    labels = np.repeat(rle[:, 0], rle[:, 1]).reshape(plane_shape).astype(np.uint8)
    # A one-plane volume with the CT's axes: volume_panel reads only their directions, so it is shown as the CT is.
    panel = volume_panel(Volume(np.expand_dims(labels, axis), volume.affine), axis, 0, plane=plane)
    panel = _narrow(panel, panel.to_display(*narrow[0])[0], narrow[1])
    shown = np.ma.masked_equal(panel.image, 0)
    cmap = ListedColormap(["none", *LEVEL_COLORS[:len(VERTEBRAE)]])
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=len(VERTEBRAE), alpha=0.4, interpolation="nearest",
              aspect=panel.row_mm / panel.col_mm, gid="vertebra-mask")


def _narrow(panel: Panel, centre: float, least: float) -> Panel:
    """A reformat of a short scan is a thin strip: keep the columns around the crop box (at least ``least``
    pixels), so that it is at least half as tall as wide."""
    height, width = panel.image.shape
    if height * panel.row_mm >= 0.5 * width * panel.col_mm:
        return panel
    keep = int(min(width, max(2 * height * panel.row_mm / panel.col_mm, least)))
    start = int(np.clip(round(centre - keep / 2), 0, width - keep))
    return crop_columns(panel, start, start + keep)


def _height_ratio(panel: Panel) -> float:
    height, width = panel.image.shape
    return height * panel.row_mm / (width * panel.col_mm)


def _draw_crop_box(ax: Any, panel: Panel, box: list[float]) -> None:
    """The crop box (pixels, end exclusive) as the model's crop, on the axial panel."""
    x0, y0 = panel.to_display(box[0] - 0.5, box[1] - 0.5)
    x1, y1 = panel.to_display(box[2] - 0.5, box[3] - 0.5)
    ax.add_patch(Rectangle((min(x0, x1), min(y0, y1)), abs(x1 - x0), abs(y1 - y0), fill=False, lw=1.4,
                           edgecolor="#00e5ff", gid="crop-box"))
    ax.text(min(x0, x1), min(y0, y1) - 1, "crop box", color="#00e5ff", fontsize=9, va="bottom")


def _draw_vertebrae(ax: Any, panel: Panel, ranges: dict[str, tuple[int, int]], result: dict[str, Any], *,
                    labels: bool = True) -> None:
    """A coloured bar beside the image per vertebra range and, left of it, the labels in anatomical order
    (C1 at the top), spread so that they never overlap, each joined to its range by a leader line."""
    blend = blended_transform_factory(ax.transAxes, ax.transData)
    missing = set(result.get("missing_vertebrae") or [])
    probs = result.get("probabilities", {})
    rows = {v: sorted(panel.to_display(0, d)[1] for d in r) for v, r in ranges.items()}
    for j, v in enumerate(VERTEBRAE):
        if v not in rows:
            continue
        top, bottom = rows[v]
        x = -0.03 if j % 2 == 0 else -0.055  # neighbours side by side, so overlapping ranges stay visible
        ax.add_patch(Rectangle((x, top - 0.5), 0.022, bottom - top + 1, transform=blend, clip_on=False,
                               facecolor=LEVEL_COLORS[j], hatch="///" if v in missing else None,
                               edgecolor="white" if v in missing else "none", gid="vertebra-range"))
    if not labels or not rows:
        return
    names = [v for v in VERTEBRAE if v in rows]
    centres = np.array([(rows[v][0] + rows[v][1]) / 2 for v in names])
    height_px = ax.get_window_extent().height
    lo, hi = sorted(ax.get_ylim())
    line_px = 9 * 1.6 * ax.figure.dpi / 72  # one 9-point label with its box and a little air
    gap = line_px * (hi - lo) / max(height_px, 1.0)  # in rows
    need = gap * len(names)
    if hi - lo < need:  # a short scan: the label column runs past the image's top and bottom
        mid = (lo + hi) / 2
        lo, hi = mid - need / 2, mid + need / 2
    placed = spread_labels(centres, gap, lo + gap / 2, hi - gap / 2)
    for v, centre, y in zip(names, centres, placed, strict=True):
        p = round(float(probs.get(v, 0.0)), 2)  # coloured as shown: a "0.20" is never green
        color = risk_color(p)
        ax.annotate(f"{v}{'?' if v in missing else ''} {p:.2f}", xy=(-0.06, centre), xycoords=blend,
                    xytext=(-0.1, y), textcoords=blend, ha="right", va="center", fontsize=9,
                    color=readable_text_color(color), gid="vertebra-label",
                    bbox={"facecolor": color, "pad": 1.5, "edgecolor": "none"},
                    arrowprops={"arrowstyle": "-", "color": LEVEL_COLORS[VERTEBRAE.index(v)], "lw": 1.0})


def _draw_probabilities(ax: Any, probs: dict[str, float], truth: dict[str, int] | None) -> None:
    """Horizontal bars of the eight probabilities, the risk-colour legend and the labels when known."""
    names = list(CERVICAL_TARGETS)
    values = [round(float(probs.get(t, 0.0)), 2) for t in names]  # coloured as shown
    ax.barh(range(len(names)), values, color=[risk_color(v) for v in values])
    ax.set_yticks(range(len(names)), ["overall" if n == "patient_overall" else n for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("predicted fracture probability")
    ax.set_title("fracture probabilities" + (" and labels" if truth else ""), fontsize=9)
    for i, v in enumerate(values):
        inside = v > 0.8
        ax.text(v - 0.02 if inside else v + 0.02, i, f"{v:.2f}", va="center", ha="right" if inside else "left",
                fontsize=9, color=readable_text_color(risk_color(v)) if inside else "black")
    if truth:
        ax.text(1.04, -0.9, "label", transform=ax.get_yaxis_transform(), fontsize=9, fontweight="bold")
        for i, t in enumerate(names):
            fractured = int(truth.get(t, 0)) == 1
            ax.text(1.04, i, "fracture" if fractured else "none", transform=ax.get_yaxis_transform(),
                    va="center", fontsize=9, color="#b71c1c" if fractured else "#424242",
                    fontweight="bold" if fractured else "normal", gid="truth")
    ax.legend(handles=risk_legend_handles(), title="colour = probability", fontsize=8.5, title_fontsize=9,
              loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)


def _labels(predictions: Path) -> tuple[dict[str, Any], dict[str, dict[str, int]], str]:
    """``(evaluation.json, {study: {target: 0/1}}, note)``; empty when the predictions were not scored."""
    evaluation, frame, note = read_evaluation(predictions, id_column="StudyInstanceUID")
    if frame is None:
        return evaluation, {}, note
    cols = [t for t in CERVICAL_TARGETS if t in frame.columns]
    truth = {str(r.StudyInstanceUID): {t: int(getattr(r, t)) for t in cols} for r in frame.itertuples()}
    return evaluation, truth, note


def _evaluation_section(evaluation: dict[str, Any], out: Path) -> tuple[str, list[tuple[str, str]]]:
    """The metric and AUC tables (HTML) and the calibration figure of ``evaluation.json``."""
    if "competition_score" not in evaluation:
        return "", []
    score = [("studies with labels", str(evaluation.get("studies", ""))),
             ("competition metric (weighted log loss, lower is better)", f"{evaluation['competition_score']:.4f}"),
             ("the same for the constant that predicts the label prevalence",
              f"{evaluation.get('prevalence_constant_score', float('nan')):.4f}")]
    aucs = evaluation.get("auc", {})
    auc_rows = [("overall" if t == "patient_overall" else t, f"{aucs[t]:.3f}" if t in aucs else "n/a")
                for t in CERVICAL_TARGETS]
    auc_rows.append(("C1-C7 pooled", f"{aucs['vertebra_level']:.3f}" if "vertebra_level" in aucs else "n/a"))
    html = (metric_table("Score against the labels", score)
            + metric_row("ROC AUC against the labels (higher is better; n/a: only one class labelled)", auc_rows))
    figures = []
    if evaluation.get("calibration"):
        calib = plot_calibration(pd.DataFrame(evaluation["calibration"]), out / "calibration.png",
                                 title="Calibration of the vertebra probabilities")
        figures.append(("Calibration: predicted probability against the observed fracture rate",
                        calib.relative_to(out).as_posix()))
    return html, figures


def _fracture_overlay(volume: Volume, result: dict[str, Any], out: Path, sid: str) -> list[str]:
    """The fracture-probability overlay PNG of a result that carries a fracture map (``cervical/fracseg``)."""
    from spinelab.io.nifti import read_nifti
    from spinelab.report.fracture_overlay import write_fracture_overlay

    path = result.get("fracture_map")
    if not path or not Path(path).is_file():
        return []
    verts = result.get("fracture_vertebrae")
    image = Path("studies") / f"{sid}_fracture.png"
    write_fracture_overlay(volume, read_nifti(path), out / image, probabilities=result.get("probabilities"),
                           vertebrae=read_nifti(verts, is_label=True) if verts and Path(verts).is_file() else None,
                           title=sid)
    return [image.as_posix()]


def _slice_curves(volume: Volume, result: dict[str, Any], out: Path, sid: str) -> list[str]:
    """The per-slice fracture curves beside the sagittal view, for a result that has them (``cervical/sequence``)."""
    if not result.get("slice_curves"):
        return []
    from spinelab.report.slice_curves import write_slice_curves

    image = Path("studies") / f"{sid}_slices.png"
    write_slice_curves(volume, result, out / image, title=sid)
    return [image.as_posix()]


def write_cervical_report(*, predictions: str | Path, input: str | Path, out: str | Path,
                          model: str | Path | None = None, progress: bool = True) -> Path:
    """Per-study PNGs and ``index.html`` sorted by patient-level risk; training curves when ``model`` is given.

    Args:
        predictions: output folder of ``spinelab predict cervical`` (its manifest's studies).
        input: the dataset or study folder that was predicted (images are read from it).
        out: report folder.
        model: run folder, to add training curves.
    """
    predictions, out = Path(predictions), Path(out)
    folder = predictions if predictions.is_dir() else predictions.parent
    check_report_folder(out)
    if model is not None:
        check_run_folder(model)
    results = read_study_results(predictions)
    _, studies = find_input_studies(input)
    folders = dict(studies)
    evaluation, truth, note = _labels(folder)
    rows = []
    with progress_bar() as bar:
        task = bar.add_task("report", total=len(results), visible=progress)
        for r in results:
            sid = str(r["study"])
            status = r.get("status", "ok")
            row: dict[str, Any] = {"study": sid, "status": status, "warnings": list(r.get("warnings", [])),
                                   "truth": truth.get(sid, {})}
            row.update({t: float(r["probabilities"][t]) for t in CERVICAL_TARGETS})
            if status not in ("ok", "warning"):
                pass  # refused or failed: its reason is among the warnings, there is nothing to draw
            elif sid in folders:
                image = Path("studies") / f"{sid}.png"
                try:
                    volume = read_study_volume(folders[sid])
                    plot_cervical_study(volume, r, out / image, truth=truth.get(sid))
                    row["images"] = [image.as_posix(), *_fracture_overlay(volume, r, out, sid),
                                     *_slice_curves(volume, r, out, sid)]
                except SpinelabError as err:
                    row["warnings"].append(f"no picture: {err}")
            else:
                row["warnings"].append(f"no picture: study not found under {input}")
            rows.append(row)
            bar.advance(task)
    rows.sort(key=lambda x: -x["patient_overall"])
    summary, figures = _evaluation_section(evaluation, out)
    curves = [(f"Training curves: {p.stem.removeprefix('curves_')}", p.relative_to(out).as_posix())
              for p in plot_training_curves(model, out)] if model else []
    intro = [f"{len(rows)} studies from {folder}, highest patient-level fracture probability first. "
             "Cells show the predicted fracture probability"
             + ("; ● marks a vertebra labelled fractured." if truth else ".")]
    if note:
        intro.append(note)
    columns = [Column("study", "study", "id"),
               Column("patient_overall", "overall", "prob", "patient-level fracture probability"),
               *(Column(v, v, "prob", f"fracture probability of vertebra {v}") for v in VERTEBRAE),
               Column("status", "status", "status", "ok, warning, refused (prior used) or failed (prior used)"),
               Column("warnings", "warnings", "warnings")]
    return write_index(out / "index.html", title="spinelab cervical fracture report", columns=columns, rows=rows,
                       intro=intro, summary=summary, figures=figures + curves, legend=True)
