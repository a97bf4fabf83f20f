"""The lumbar report: per study the sagittal T2 and T1 slices and the axial slice of each level with the
predicted points drawn, plus the 25 grades as a table; an HTML index sorted by the highest P(severe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spinelab.errors import InputError
from spinelab.infer.batch import progress_bar, read_study_results
from spinelab.infer.studies import find_input_studies
from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_GRADES, LUMBAR_LEVEL_TITLES, LUMBAR_LEVELS
from spinelab.report.curves import plot_training_curves
from spinelab.report.figures import LEVEL_COLORS, display_window, plt, risk_color, save_figure
from spinelab.report.html import write_index

__all__ = ["write_lumbar_report", "plot_lumbar_study", "max_severe"]

_SHORT = {"spinal_canal_stenosis": "SCS", "left_neural_foraminal_narrowing": "L-NFN",
          "right_neural_foraminal_narrowing": "R-NFN", "left_subarticular_stenosis": "L-SS",
          "right_subarticular_stenosis": "R-SS"}


def max_severe(result: dict[str, Any], prefix: str = "") -> float:
    """Highest P(severe) over the study's rows whose column starts with ``prefix``."""
    values = [g["severe"] for c, g in result.get("grades", {}).items() if c.startswith(prefix)]
    return float(max(values)) if values else 0.0


def _show(ax: Any, volume: Any, index: int, title: str) -> None:
    image = display_window(np.asarray(volume.array[int(index)]), None)
    ax.imshow(image, cmap="gray", interpolation="bilinear")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _draw_points(ax: Any, records: dict[str, Any] | None, *, marker: str = "o", label: bool = True) -> None:
    for li, level in enumerate(LUMBAR_LEVELS):
        rec = (records or {}).get(level)
        if rec:
            ax.plot(rec["x"], rec["y"], marker, ms=5, mec="white", mew=0.8, color=LEVEL_COLORS[li])
            if label:
                ax.text(rec["x"] + 2, rec["y"], LUMBAR_LEVEL_TITLES[level], color=LEVEL_COLORS[li],
                        fontsize=7)


def plot_lumbar_study(study: Any, result: dict[str, Any], path: str | Path) -> Path:
    """Draw one study's points and grades.

    Args:
        study: ``tasks.lumbar.studies.LumbarStudy`` (oriented volumes, as predicted).
        result: the study's prediction JSON.
        path: PNG to write.
    """
    fig, axes = plt.subplots(2, 5, figsize=(15, 6.8))
    for ax in axes.ravel():
        ax.axis("off")
    pts = result.get("points", {})
    t2, t1 = study.first("sag_t2"), study.first("sag_t1")
    if t2 is not None:
        rec = [r for r in (pts.get("spinal_canal_stenosis") or {}).values() if r]
        idx = rec[0]["slice_index"] if rec else t2.shape[0] // 2
        _show(axes[0, 0], t2, idx, f"Sagittal T2/STIR, slice {idx}: canal")
        _draw_points(axes[0, 0], pts.get("spinal_canal_stenosis"))
    for k, side in enumerate(("left", "right")):
        cond = f"{side}_neural_foraminal_narrowing"
        if t1 is not None:
            rec = [r for r in (pts.get(cond) or {}).values() if r]
            idx = rec[0]["slice_index"] if rec else t1.shape[0] // 2
            _show(axes[0, 1 + k], t1, idx, f"Sagittal T1, slice {idx}: {side} foramina")
            _draw_points(axes[0, 1 + k], pts.get(cond))
    _grade_table(axes[0, 3:], result)
    axial = study.series.get("axial") or []
    ids = study.series_ids.get("axial") or []
    for li, level in enumerate(LUMBAR_LEVELS):
        ax = axes[1, li]
        rec = (result.get("axial_level_slices") or {}).get(level)
        if not rec or rec["series_id"] not in ids:
            ax.set_title(f"{LUMBAR_LEVEL_TITLES[level]}: no axial slice", fontsize=9)
            continue
        vol = axial[ids.index(rec["series_id"])]
        _show(ax, vol, rec["slice_index"], f"Axial {LUMBAR_LEVEL_TITLES[level]} (slice {rec['slice_index']})")
        for side, marker in (("left", "<"), ("right", ">")):
            r = (pts.get(f"{side}_subarticular_stenosis") or {}).get(level)
            if r:
                ax.plot(r["x"], r["y"], marker, ms=6, color=LEVEL_COLORS[li], mec="white", mew=0.8)
    title = f"{result.get('study', '')}   max P(severe) {max_severe(result):.2f}"
    if result.get("warnings"):
        title += "   ⚠ " + "; ".join(result["warnings"])[:100]
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _grade_table(axes: Any, result: dict[str, Any]) -> None:
    """P(moderate) and P(severe) as condition x level grids coloured by risk."""
    grades = result.get("grades", {})
    for ax, grade in zip(axes, LUMBAR_GRADES[1:], strict=True):
        grid = np.array([[grades.get(f"{c}_{lv}", {}).get(grade, 0.0) for lv in LUMBAR_LEVELS]
                         for c in LUMBAR_CONDITIONS])
        ax.imshow(grid, cmap="Reds", vmin=0, vmax=1)
        ax.axis("on")
        ax.set_xticks(range(len(LUMBAR_LEVELS)), [LUMBAR_LEVEL_TITLES[lv] for lv in LUMBAR_LEVELS],
                      fontsize=7)
        ax.set_yticks(range(len(LUMBAR_CONDITIONS)), [_SHORT[c] for c in LUMBAR_CONDITIONS], fontsize=7)
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.5 else risk_color(v))
        ax.set_title(f"P({grade})", fontsize=9)


def write_lumbar_report(*, predictions: str | Path, input: str | Path, out: str | Path,
                        model: str | Path | None = None, progress: bool = True) -> Path:
    """Per-study PNGs and ``index.html`` sorted by the highest P(severe); training curves with ``model``.

    Args:
        predictions: output folder of ``spinelab predict lumbar`` (reads ``studies/*.json``).
        input: the dataset or study folder that was predicted (images are read from it).
        out: report folder.
        model: run folder, to add training curves.

    Returns:
        The path of ``index.html``.
    """
    from spinelab.tasks.lumbar.studies import load_study, read_descriptions

    predictions, out, input = Path(predictions), Path(out), Path(input)
    results = read_study_results(predictions)
    split, studies = find_input_studies(input, nested=True)
    descriptions = read_descriptions(input, split) if split in ("train", "test") else None
    folders = dict(studies)
    rows = []
    with progress_bar() as bar:
        task = bar.add_task("report", total=len(results), visible=progress)
        for r in results:
            sid = str(r["study"])
            row: dict[str, Any] = {"study": sid, "max_severe": max_severe(r),
                                   "spinal": max_severe(r, "spinal"),
                                   "foraminal": max(max_severe(r, "left_neural"),
                                                    max_severe(r, "right_neural")),
                                   "subarticular": max(max_severe(r, "left_sub"), max_severe(r, "right_sub")),
                                   "status": r.get("status", "ok"), "warnings": list(r.get("warnings", []))}
            if sid in folders and r.get("status", "ok") in ("ok", "warning"):  # predicted studies
                image = Path("studies") / f"{sid}.png"
                try:
                    study = load_study(folders[sid], descriptions=descriptions)
                    plot_lumbar_study(study, r, out / image)
                    row["image"] = image.as_posix()
                except InputError as err:
                    row["warnings"].append(f"no picture: {err}")
            rows.append(row)
            bar.advance(task)
    rows.sort(key=lambda x: -x["max_severe"])
    curves = [p.relative_to(out).as_posix() for p in plot_training_curves(model, out)] if model else []
    intro = f"{len(rows)} studies from {predictions}, highest probability of a severe grade first."
    return write_index(out / "index.html", title="spinelab lumbar grading report",
                       columns=["study", "max_severe", "spinal", "foraminal", "subarticular", "status"],
                       rows=rows, intro=intro, images=curves)
