"""The cervical report: per study a sagittal and a coronal reformat with the predicted vertebra ranges
coloured and labelled and the fracture probabilities beside them; an HTML index sorted by risk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spinelab.infer.batch import progress_bar, read_study_results
from spinelab.infer.studies import find_input_studies
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.report.curves import plot_training_curves
from spinelab.report.figures import LEVEL_COLORS, display_window, plt, reformat, risk_color, save_figure
from spinelab.report.html import write_index

__all__ = ["write_cervical_report", "plot_cervical_study"]


def plot_cervical_study(volume: Volume, result: dict[str, Any], path: str | Path, *,
                        window: tuple[float, float] = (400.0, 1800.0)) -> Path:
    """Sagittal and coronal reformats through the crop-box centre, vertebra ranges, probabilities."""
    depth, height, width = volume.shape
    box = result.get("crop_box") or [0, 0, width, height]
    cx, cy = int(np.clip((box[0] + box[2]) / 2, 0, width - 1)), int(np.clip((box[1] + box[3]) / 2, 0, height - 1))
    fig, axes = plt.subplots(1, 3, figsize=(12, 5.2), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    for ax, plane, idx in ((axes[0], "sagittal", cx), (axes[1], "coronal", cy)):
        image, aspect, head_at_top = reformat(volume, plane, idx)
        shown = display_window(image, window)
        if not head_at_top:
            shown = shown[::-1]
        ax.imshow(shown, cmap="gray", aspect=aspect, interpolation="bilinear")
        ax.set_title(f"{plane} (column {idx})" if plane == "sagittal" else f"{plane} (row {idx})", fontsize=10)
        ax.axis("off")
        extent = image.shape[1]
        for j, v in enumerate(VERTEBRAE):
            r = result.get("vertebra_ranges", {}).get(v)
            if not r:
                continue
            a, b = r["start_index"], r["end_index"]
            if not head_at_top:
                a, b = depth - 1 - b, depth - 1 - a
            missing = v in result.get("missing_vertebrae", [])
            ax.axhspan(a - 0.5, b + 0.5, xmin=0.0, xmax=0.05, color=LEVEL_COLORS[j], alpha=0.9)
            ax.axhspan(a - 0.5, b + 0.5, color=LEVEL_COLORS[j], alpha=0.12 if not missing else 0.05)
            p = result["probabilities"].get(v, 0.0)
            ax.text(extent * 0.07, (a + b) / 2, f"{v}{'?' if missing else ''} {p:.2f}", color="white",
                    fontsize=8, va="center", bbox={"facecolor": risk_color(p), "alpha": 0.8, "pad": 1.5,
                                                   "edgecolor": "none"})
    probs = result["probabilities"]
    names = list(CERVICAL_TARGETS)
    values = [probs.get(t, 0.0) for t in names]
    axes[2].barh(range(len(names)), values, color=[risk_color(v) for v in values])
    axes[2].set_yticks(range(len(names)), [n.replace("patient_overall", "overall") for n in names])
    axes[2].invert_yaxis()
    axes[2].set_xlim(0, 1)
    axes[2].set_xlabel("fracture probability")
    for i, v in enumerate(values):
        axes[2].text(min(v + 0.02, 0.85), i, f"{v:.2f}", va="center", fontsize=8)
    title = f"{result.get('study', '')}   overall {probs.get('patient_overall', 0):.2f}"
    if result.get("warnings"):
        title += "   ⚠ " + "; ".join(result["warnings"])[:90]
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def write_cervical_report(*, predictions: str | Path, input: str | Path, out: str | Path,
                          model: str | Path | None = None, progress: bool = True) -> Path:
    """Per-study PNGs and ``index.html`` sorted by patient-level risk; training curves when ``model`` is given.

    Args:
        predictions: output folder of ``spinelab predict cervical`` (reads ``studies/*.json``).
        input: the dataset or study folder that was predicted (images are read from it).
        out: report folder.
        model: run folder, to add training curves.
    """
    from spinelab.io.dicom import read_series

    predictions, out = Path(predictions), Path(out)
    results = read_study_results(predictions)
    _, studies = find_input_studies(input)
    folders = dict(studies)
    rows = []
    with progress_bar() as bar:
        task = bar.add_task("report", total=len(results), visible=progress)
        for r in results:
            sid = r["study"]
            row: dict[str, Any] = {"study": sid, "warnings": list(r.get("warnings", []))}
            row.update({t: float(r["probabilities"][t]) for t in CERVICAL_TARGETS})
            if sid in folders and r.get("status", "ok") in ("ok", "warning"):  # predicted studies
                image = Path("studies") / f"{sid}.png"
                plot_cervical_study(read_series(folders[sid]), r, out / image)
                row["image"] = image.as_posix()
            rows.append(row)
            bar.advance(task)
    rows.sort(key=lambda x: -x["patient_overall"])
    curves = [p.relative_to(out).as_posix() for p in plot_training_curves(model, out)] if model else []
    intro = f"{len(rows)} studies from {predictions}, highest patient-level fracture probability first."
    return write_index(out / "index.html", title="spinelab cervical fracture report",
                       columns=["study", "patient_overall", *VERTEBRAE], rows=rows, intro=intro, images=curves)
