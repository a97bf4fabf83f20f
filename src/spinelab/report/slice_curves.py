"""The sequence route's per-study figure: the sagittal view beside each vertebra's per-slice fracture curve.

For a result with ``slice_curves`` (route ``cervical/sequence``), ``spinelab report cervical`` writes
``studies/<study>_slices.png``: the sagittal reformat through the crop box (bone window) and, on the same
head-to-feet axis, the slice models' fracture probability of C1..C7 at every route slice, so a peak sits level
with the slices that caused it. The z-range the route read is shaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from spinelab.io.orientation import to_canonical
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.report.figures import LEVEL_COLORS, plt, save_figure, show_panel, volume_panel

__all__ = ["draw_slice_curves", "write_slice_curves"]

_WINDOW = (400.0, 1800.0)


def draw_slice_curves(volume: Volume, result: dict[str, Any], *, title: str = "",
                      window: tuple[float, float] = _WINDOW) -> Figure:
    """The figure (see the module docstring); ``volume`` as read, shown in the canonical orientation."""
    volume = to_canonical(volume)
    depth, height, width = volume.shape
    curves = result["slice_curves"]
    box = result.get("crop_box") or [0, 0, width, height]
    cx = int(np.clip((box[0] + box[2]) / 2, 0, width - 1))
    sag = volume_panel(volume, 2, cx, plane="sagittal")
    fig = plt.figure(figsize=(10.5, 6.2))
    grid = fig.add_gridspec(1, 2, width_ratios=[1, 1.25], wspace=0.08, left=0.04, right=0.86, top=0.9, bottom=0.09)
    sag_ax, curve_ax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    show_panel(sag_ax, sag, window=window, title=f"sagittal through the crop box (column {cx})")
    indices = np.asarray(curves["indices"], dtype=float)
    # the displayed row of each slice (the sagittal panel's vertical axis runs head to feet)
    rows = np.array([sag.to_display(0, float(i))[1] for i in indices]) if len(indices) else indices
    top, bottom = sag_ax.get_ylim()[1], sag_ax.get_ylim()[0]
    z0, z1 = curves.get("z_range", [indices.min(), indices.max()] if len(indices) else [0, depth - 1])
    r0, r1 = sag.to_display(0, float(z0))[1], sag.to_display(0, float(z1))[1]
    for ax in (sag_ax, curve_ax):
        ax.axhspan(min(r0, r1), max(r0, r1), color="#ffd54f", alpha=0.10 if ax is sag_ax else 0.18, lw=0, gid="z-range")
    probs = result.get("probabilities", {})
    highest = 0.0
    for j, v in enumerate(VERTEBRAE):
        values = np.asarray(curves["fracture"][v], dtype=float)
        highest = max(highest, float(values.max()) if values.size else 0.0)
        curve_ax.plot(values, rows, color=LEVEL_COLORS[j], lw=1.6, label=f"{v}  (P {probs.get(v, 0.0):.2f})")
    curve_ax.set_ylim(bottom, top)  # the same rows as the sagittal panel
    # low curves stay readable: the axis ends above the highest value (at least 0.2, at most 1)
    curve_ax.set_xlim(0, float(np.clip(1.15 * highest, 0.2, 1.0)))
    curve_ax.set_xlabel("per-slice fracture probability (slice models)")
    curve_ax.yaxis.set_visible(False)
    curve_ax.grid(axis="x", alpha=0.3)
    curve_ax.set_title("fracture curve of each vertebra, level with the sagittal view", fontsize=10)
    curve_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False,
                    title="study head", title_fontsize=8.5)
    fig.suptitle(f"{title}    overall P(fracture) {probs.get('patient_overall', 0.0):.2f}", fontsize=11)
    return fig


def write_slice_curves(volume: Volume, result: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Write ``draw_slice_curves``' figure to the PNG ``path``."""
    return save_figure(draw_slice_curves(volume, result, title=title), path)
