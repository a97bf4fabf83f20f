"""The lumbar report: per study the sagittal T2 and T1 slices and the axial slice of each level with the
predicted points drawn, plus the 25 grades as a table; an HTML index sorted by the highest P(severe)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from spinelab.errors import SpinelabError
from spinelab.infer.batch import progress_bar, read_study_results
from spinelab.infer.studies import find_input_studies
from spinelab.io.volume import Volume
from spinelab.registry import (
    LUMBAR_CONDITIONS,
    LUMBAR_GRADE_NAMES,
    LUMBAR_GRADES,
    LUMBAR_LEVEL_TITLES,
    LUMBAR_LEVELS,
    lumbar_columns,
)
from spinelab.report.calibration import read_evaluation
from spinelab.report.curves import check_run_folder, plot_training_curves
from spinelab.report.figures import (
    LEVEL_COLORS,
    Panel,
    plt,
    readable_text_color,
    save_figure,
    show_panel,
    volume_panel,
)
from spinelab.report.html import Column, check_report_folder, metric_table, write_index

__all__ = ["write_lumbar_report", "plot_lumbar_study", "draw_lumbar_study", "max_severe", "grade_cell_colors",
           "ABBREVIATIONS"]

_SHORT = {"spinal_canal_stenosis": "SCS", "left_neural_foraminal_narrowing": "L-NFN",
          "right_neural_foraminal_narrowing": "R-NFN", "left_subarticular_stenosis": "L-SS",
          "right_subarticular_stenosis": "R-SS"}
#: The abbreviations of the figures and the index, spelled out once.
ABBREVIATIONS = ("SCS = spinal canal stenosis, NFN = neural foraminal narrowing, SS = subarticular stenosis; "
                 "L- / R- = the patient's left / right side")
_GRADE_CMAP = "Reds"


def max_severe(result: dict[str, Any], prefix: str = "") -> float:
    """Highest P(severe) over the study's rows whose column starts with ``prefix``."""
    values = [g["severe"] for c, g in result.get("grades", {}).items() if c.startswith(prefix)]
    return float(max(values)) if values else 0.0


def grade_cell_colors(value: float) -> tuple[tuple[float, float, float, float], str]:
    """``(cell colour, text colour)`` of a grade-table cell: the text colour that contrasts most with it."""
    background = plt.get_cmap(_GRADE_CMAP)(float(np.clip(value, 0.0, 1.0)))
    return background, readable_text_color(background[:3])


def _series_panel(ax: Any, volume: Volume, index: int, plane: str, title: str) -> Panel:
    panel = volume_panel(volume, 0, index, plane=plane)
    show_panel(ax, panel, window=None, title=title, fontsize=9)  # MR: each slice by its own percentiles
    return panel


def _draw_points(ax: Any, panel: Panel, records: dict[str, Any] | None) -> None:
    """Each level's predicted point, coloured by level and labelled with its name."""
    for li, level in enumerate(LUMBAR_LEVELS):
        rec = (records or {}).get(level)
        if rec:
            x, y = panel.to_display(rec["x"], rec["y"])
            ax.plot(x, y, "o", ms=5, mec="white", mew=0.8, color=LEVEL_COLORS[li])
            ax.annotate(LUMBAR_LEVEL_TITLES[level], (x, y), xytext=(4, 0), textcoords="offset points",
                        color=readable_text_color(LEVEL_COLORS[li]), fontsize=7.5, va="center", gid="level-label",
                        bbox={"facecolor": LEVEL_COLORS[li], "pad": 1, "edgecolor": "none"})


def _slice_of(records: dict[str, Any] | None, default: int) -> int:
    """The slice most of a condition's points were found on (the middle one when there are none)."""
    found = [int(r["slice_index"]) for r in (records or {}).values() if r]
    return int(np.median(found)) if found else default


def plot_lumbar_study(study: Any, result: dict[str, Any], path: str | Path, *,
                      truth: dict[str, int] | None = None) -> Path:
    """Write ``draw_lumbar_study``'s figure to the PNG ``path``."""
    return save_figure(draw_lumbar_study(study, result, truth=truth), path)


def draw_lumbar_study(study: Any, result: dict[str, Any], *, truth: dict[str, int] | None = None) -> Figure:
    """One study's points on the sagittal and axial slices and its grades as tables.

    Args:
        study: ``tasks.lumbar.studies.LumbarStudy`` (oriented volumes, as predicted).
        result: the study's prediction JSON.
        truth: ``{condition_level: 0/1/2}`` from the labels (-1 unlabelled): the labelled grade's cell is framed.
    """
    notes = [ABBREVIATIONS + ". Letters at the image edges: S/I superior/inferior, A/P anterior/posterior, "
             "R/L the patient's right/left." + (" A framed cell is the labelled grade." if truth else "")]
    notes += [f"⚠ {textwrap.shorten(w, 190, placeholder=' ...')}" for w in (result.get("warnings") or [])[:4]]
    fig, axes = plt.subplots(2, 5, figsize=(14.5, 7.6), height_ratios=[1, 1])
    # the notes get a margin of their own below the panels, one line of 8.5-point text each
    fig.subplots_adjust(left=0.04, right=0.99, top=0.9, bottom=(0.3 + 0.17 * len(notes)) / 7.6, wspace=0.28,
                        hspace=0.3)
    for ax in axes.ravel():
        ax.axis("off")
    pts = result.get("points", {})
    t2, t1 = study.first("sag_t2"), study.first("sag_t1")
    if t2 is not None:
        canal = pts.get("spinal_canal_stenosis")
        idx = _slice_of(canal, t2.shape[0] // 2)
        _draw_points(axes[0, 0], _series_panel(axes[0, 0], t2, idx, "sagittal",
                                               f"Sagittal T2/STIR, slice {idx}: canal (SCS)"), canal)
    for k, side in enumerate(("left", "right")):
        cond = f"{side}_neural_foraminal_narrowing"
        if t1 is not None:
            idx = _slice_of(pts.get(cond), t1.shape[0] // 2)
            panel = _series_panel(axes[0, 1 + k], t1, idx, "sagittal",
                                  f"Sagittal T1, slice {idx}: {side} foramina ({side[0].upper()}-NFN)")
            _draw_points(axes[0, 1 + k], panel, pts.get(cond))
    _grade_table(axes[0, 3:], result, truth or {})
    axial = study.series.get("axial") or []
    ids = study.series_ids.get("axial") or []
    for li, level in enumerate(LUMBAR_LEVELS):
        ax = axes[1, li]
        rec = (result.get("axial_level_slices") or {}).get(level)
        if not rec or rec["series_id"] not in ids:
            ax.set_title(f"{LUMBAR_LEVEL_TITLES[level]}: no axial slice", fontsize=9)
            continue
        vol = axial[ids.index(rec["series_id"])]
        panel = _series_panel(ax, vol, rec["slice_index"], "axial",
                              f"Axial {LUMBAR_LEVEL_TITLES[level]} (slice {rec['slice_index']}): SS")
        for side in ("left", "right"):
            r = (pts.get(f"{side}_subarticular_stenosis") or {}).get(level)
            if r:
                x, y = panel.to_display(r["x"], r["y"])
                ax.plot(x, y, "o", ms=6, color=LEVEL_COLORS[li], mec="white", mew=0.8)
                # each side's label goes outwards, towards the image edge of that side, so the two never collide
                outwards = -1 if panel.letters["left"] == side[0].upper() else 1
                ax.annotate(f"{side[0].upper()}-SS", (x, y), xytext=(7 * outwards, 0), textcoords="offset points",
                            ha="right" if outwards < 0 else "left", va="center", color="white", fontsize=7.5,
                            gid="side-marker",
                            bbox={"facecolor": "black", "alpha": 0.7, "pad": 1, "edgecolor": "none"})
    status = result.get("status", "ok")
    fig.suptitle(f"{result.get('study', '')}    status: {status}    max P(severe) {max_severe(result):.2f}",
                 fontsize=11)
    fig.text(0.01, 0.005, "\n".join(notes), fontsize=8.5, va="bottom", color="#1a1a1a")
    return fig


def _grade_table(axes: Any, result: dict[str, Any], truth: dict[str, int]) -> None:
    """P(moderate) and P(severe) as condition x level grids; each value in the colour that reads best on its
    cell; the labelled grade's cell framed."""
    grades = result.get("grades", {})
    for ax, grade, name in zip(axes, LUMBAR_GRADES[1:], LUMBAR_GRADE_NAMES[1:], strict=True):
        grid = np.array([[round(grades.get(f"{c}_{lv}", {}).get(grade, 0.0), 2) for lv in LUMBAR_LEVELS]
                         for c in LUMBAR_CONDITIONS])
        ax.imshow(grid, cmap=_GRADE_CMAP, vmin=0, vmax=1)
        ax.axis("on")
        ax.set_xticks(range(len(LUMBAR_LEVELS)), [LUMBAR_LEVEL_TITLES[lv] for lv in LUMBAR_LEVELS], fontsize=8.5)
        ax.set_yticks(range(len(LUMBAR_CONDITIONS)), [_SHORT[c] for c in LUMBAR_CONDITIONS], fontsize=8.5)
        ax.tick_params(length=0)
        index = LUMBAR_GRADES.index(grade)
        for (i, j), v in np.ndenumerate(grid):
            _, text = grade_cell_colors(v)
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9, color=text, gid="grade-value")
            if truth.get(f"{LUMBAR_CONDITIONS[i]}_{LUMBAR_LEVELS[j]}") == index:
                ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, lw=2, edgecolor="#1565c0",
                                       gid="truth-cell"))
        ax.set_title(f"P({name.lower()})", fontsize=10)


def _labels(folder: Path) -> tuple[dict[str, Any], dict[str, dict[str, int]], str]:
    """``(evaluation.json, {study: {condition_level: 0/1/2 or -1}}, note)``; empty when not scored."""
    from spinelab.metrics import lumbar_grade_matrix

    evaluation, frame, note = read_evaluation(folder, id_column="study_id")
    if frame is None:
        return evaluation, {}, note
    grades = lumbar_grade_matrix(frame, source=evaluation["labels"])
    columns = lumbar_columns()
    return evaluation, {str(sid): dict(zip(columns, (int(g) for g in row), strict=True))
                        for sid, row in zip(frame.study_id, grades, strict=True)}, note


def _severe_marks(truth: dict[str, int]) -> dict[str, int]:
    """Which index cells get the ● of a level labelled severe (2)."""
    severe = {c for c, g in truth.items() if g == 2}
    groups = {"spinal": ("spinal",), "foraminal": ("left_neural", "right_neural"),
              "subarticular": ("left_sub", "right_sub")}
    marks = {k: int(any(c.startswith(p) for c in severe for p in prefixes)) for k, prefixes in groups.items()}
    return {**marks, "max_severe": int(bool(severe))}


def _evaluation_section(evaluation: dict[str, Any]) -> str:
    """The score against the labels (``evaluation.json``) as HTML, empty when the predictions were not scored."""
    if "lumbar_score" not in evaluation:
        return ""
    rows = [("studies with labels", str(evaluation.get("studies", ""))),
            ("competition metric (weighted log loss, lower is better)", f"{evaluation['lumbar_score']:.4f}"),
            ("the same for the best constant prediction",
             f"{evaluation.get('weight_optimal_constant_score', float('nan')):.4f}")]
    rows += [(f"part: {k.replace('_', ' ')}", f"{evaluation[k]:.4f}")
             for k in ("spinal", "foraminal", "subarticular", "any_severe_spinal") if k in evaluation]
    points = evaluation.get("point_error_mm") or {}
    if "median_mm" in points:
        rows.append(("median distance of the predicted points to the labelled ones", f"{points['median_mm']:.1f} mm"))
    return metric_table("Score against the labels", rows)


def write_lumbar_report(*, predictions: str | Path, input: str | Path, out: str | Path,
                        model: str | Path | None = None, progress: bool = True) -> Path:
    """Per-study PNGs and ``index.html`` sorted by the highest P(severe); training curves with ``model``.

    Args:
        predictions: output folder of ``spinelab predict lumbar`` (its manifest's studies).
        input: the dataset or study folder that was predicted (images are read from it).
        out: report folder.
        model: run folder, to add training curves.

    Returns:
        The path of ``index.html``.
    """
    from spinelab.tasks.lumbar.studies import load_study, read_descriptions

    predictions, out, input = Path(predictions), Path(out), Path(input)
    folder = predictions if predictions.is_dir() else predictions.parent
    check_report_folder(out)
    if model is not None:
        check_run_folder(model)
    results = read_study_results(predictions)
    split, studies = find_input_studies(input, nested=True)
    descriptions = read_descriptions(input, split) if split in ("train", "test") else None
    folders = dict(studies)
    evaluation, truth, note = _labels(folder)
    rows = []
    with progress_bar() as bar:
        task = bar.add_task("report", total=len(results), visible=progress)
        for r in results:
            sid = str(r["study"])
            status = r.get("status", "ok")
            row: dict[str, Any] = {"study": sid, "max_severe": max_severe(r),
                                   "spinal": max_severe(r, "spinal"),
                                   "foraminal": max(max_severe(r, "left_neural"),
                                                    max_severe(r, "right_neural")),
                                   "subarticular": max(max_severe(r, "left_sub"), max_severe(r, "right_sub")),
                                   "status": status, "warnings": list(r.get("warnings", [])),
                                   "truth": _severe_marks(truth.get(sid, {}))}
            if status not in ("ok", "warning"):
                pass  # refused or failed: its reason is among the warnings, there is nothing to draw
            elif sid in folders:
                image = Path("studies") / f"{sid}.png"
                try:
                    study = load_study(folders[sid], descriptions=descriptions)
                    plot_lumbar_study(study, r, out / image, truth=truth.get(sid))
                    row["image"] = image.as_posix()
                except SpinelabError as err:
                    row["warnings"].append(f"no picture: {err}")
            else:
                row["warnings"].append(f"no picture: study not found under {input}")
            rows.append(row)
            bar.advance(task)
    rows.sort(key=lambda x: -x["max_severe"])
    curves = [(f"Training curves: {p.stem.removeprefix('curves_')}", p.relative_to(out).as_posix())
              for p in plot_training_curves(model, out)] if model else []
    intro = [f"{len(rows)} studies from {folder}, highest probability of a severe grade first. Cells show the "
             "highest predicted probability of a severe grade over the levels (and both sides).",
             ABBREVIATIONS + "."]
    if truth:
        intro.append("● marks a group with a level labelled severe; the pictures frame each labelled grade.")
    if note:
        intro.append(note)
    columns = [Column("study", "study", "id"),
               Column("max_severe", "max P(severe)", "prob", "highest P(severe) of the 25 rows"),
               Column("spinal", "SCS", "prob", "spinal canal stenosis: highest P(severe) over the levels"),
               Column("foraminal", "NFN (L/R)", "prob",
                      "neural foraminal narrowing: highest P(severe) over levels and sides"),
               Column("subarticular", "SS (L/R)", "prob",
                      "subarticular stenosis: highest P(severe) over levels and sides"),
               Column("status", "status", "status", "ok, warning, refused (prior used) or failed (prior used)"),
               Column("warnings", "warnings", "warnings")]
    return write_index(out / "index.html", title="spinelab lumbar grading report", columns=columns, rows=rows,
                       intro=intro, summary=_evaluation_section(evaluation), figures=curves, legend=True)
