"""The preview PNG of ``spinelab segment``: sagittal and coronal reformats with coloured, labelled vertebrae.

Both panels are in display convention (head up; sagittal anterior on the left, coronal patient left on the
right; ``report.figures``) whatever the stored orientation. Each panel is a slab through the spine's centroid
(``SLAB_MM`` thick): the CT is its maximum-intensity projection in a bone window, so the whole curved column
shows, and each voxel's label is the one nearest the centre plane. A legend holds every vertebra's colour
(solid patches, the colours of ``LEVEL_COLORS`` in label order); the vertebra check's warnings are printed
under the panels. The image has a fixed size, ``PREVIEW_SIZE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spinelab.io.atomic import atomic_path
from spinelab.io.orientation import to_canonical
from spinelab.io.volume import Volume
from spinelab.report.figures import (
    LEVEL_COLORS,
    plt,
    readable_text_color,
    show_panel,
    spread_labels,
    volume_panel,
)

__all__ = ["write_segmentation_preview", "vertebra_color", "PREVIEW_SIZE", "SLAB_MM", "BONE_WINDOW"]

#: Width and height of the PNG in pixels.
PREVIEW_SIZE = (1200, 800)
_DPI = 100
#: Thickness of the slab shown in each panel, in mm (a cervical vertebra is about 15-20 mm wide in AP).
SLAB_MM = 16.0
#: Level and width of the bone window (HU).
BONE_WINDOW = (400.0, 1800.0)
_ALPHA = 0.45
_MAX_WARNINGS = 4


def vertebra_color(label: int) -> str:
    """The colour of segmentation class ``label`` (1 = C1 ...) in the preview."""
    return LEVEL_COLORS[(int(label) - 1) % len(LEVEL_COLORS)]


def _slab(canon: Volume, labels: np.ndarray, axis: int, centre: int) -> tuple[Volume, Volume]:
    """One-slice CT and label volumes across ``axis``: the CT's maximum over the slab, labels nearest the centre."""
    half = max(0, int(round(SLAB_MM / 2 / canon.spacing[axis])))
    lo, hi = max(0, centre - half), min(canon.shape[axis], centre + half + 1)
    ct = np.take(np.asarray(canon.array), range(lo, hi), axis=axis).max(axis=axis, keepdims=True)
    lab = np.zeros_like(ct, dtype=np.uint8)
    for offset in sorted(range(lo, hi), key=lambda i: -abs(i - centre)):  # the centre plane last, so it wins
        layer = np.take(labels, [offset], axis=axis)
        lab = np.where(layer > 0, layer, lab)
    aff = canon.affine.copy()
    aff[:3, 3] = canon.voxel_to_world(np.eye(3)[axis] * centre)
    return Volume(ct, aff), Volume(lab.astype(np.uint8), aff, is_label=True)


def _overlay(labels: np.ndarray) -> np.ndarray:
    """RGBA image of ``labels`` in the vertebra colours (transparent background)."""
    from matplotlib.colors import to_rgb

    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    for value in np.unique(labels):
        if value:
            rgba[labels == value] = (*to_rgb(vertebra_color(int(value))), _ALPHA)
    return rgba


def _name_vertebrae(ax: Any, labels: np.ndarray, present: list[int], names: dict[int, str]) -> None:
    """Each vertebra's name beside its right edge, inside the panel, names spread so that none overlap."""
    height, width = labels.shape
    found = []
    for value in present:
        rows, cols = np.nonzero(labels == value)
        if len(rows):
            found.append((float(rows.mean()), min(float(cols.max()) + 2, 0.88 * width), value))
    found.sort()
    ys = spread_labels(np.array([f[0] for f in found]), 0.035 * height, 0.04 * height, 0.92 * height)
    for y, (_, x, value) in zip(ys, found, strict=True):
        ax.text(x, float(y), names.get(value, str(value)), color=vertebra_color(value), fontsize=9,
                fontweight="bold", va="center", ha="left", gid=f"label-{value}",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "edgecolor": "none"})


def write_segmentation_preview(ct: Volume, labels: Volume, path: str | Path, *, names: dict[int, str],
                               title: str = "", warnings: list[str] | None = None) -> Path:
    """Write the preview PNG (atomically) of a CT and its vertebra labels on the same grid.

    Args:
        ct: the CT in HU (any orientation).
        labels: the label map on ``ct``'s grid.
        path: the PNG to write.
        names: class value -> vertebra name, for the legend and the labels in the panels.
        title: a line above the panels (the study id).
        warnings: printed under the panels (the first few).
    """
    canon, lab = to_canonical(ct), to_canonical(labels)
    lab_arr = np.ascontiguousarray(lab.array)
    present = [int(v) for v in np.unique(lab_arr) if v]
    fg = np.argwhere(lab_arr > 0)
    centre = fg.mean(axis=0).round().astype(int) if len(fg) else np.array(canon.shape) // 2
    fig, axes = plt.subplots(1, 2, figsize=(PREVIEW_SIZE[0] / _DPI, PREVIEW_SIZE[1] / _DPI), dpi=_DPI)
    for ax, (plane, axis) in zip(axes, (("sagittal", 2), ("coronal", 1)), strict=True):
        ct_slab, lab_slab = _slab(canon, lab_arr, axis, int(centre[axis]))
        panel = volume_panel(ct_slab, axis, 0, plane=plane)
        lab_panel = volume_panel(lab_slab, axis, 0, plane=plane)
        show_panel(ax, panel, window=BONE_WINDOW, title=f"{plane} ({SLAB_MM:g} mm slab)")
        ax.imshow(_overlay(lab_panel.image), aspect=panel.row_mm / panel.col_mm, interpolation="nearest")
        _name_vertebrae(ax, lab_panel.image, present, names)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=vertebra_color(v), edgecolor=vertebra_color(v), label=names.get(v, str(v)))
               for v in sorted(names) if v in present]
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False, fontsize=10,
                   bbox_to_anchor=(0.5, 0.955))
    fig.suptitle(title or "vertebrae", fontsize=12)
    lines = list(warnings or [])
    text = "\n".join(lines[:_MAX_WARNINGS] + ([f"... and {len(lines) - _MAX_WARNINGS} more"]
                                               if len(lines) > _MAX_WARNINGS else []))
    fig.text(0.5, 0.02, text or "vertebra check: no warnings", ha="center", va="bottom", fontsize=9,
             color="#c62828" if lines else readable_text_color("white"), wrap=True)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.15, wspace=0.05)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png")  # no tight box: the size stays PREVIEW_SIZE
    plt.close(fig)
    return Path(path)
