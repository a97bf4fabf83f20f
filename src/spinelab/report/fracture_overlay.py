"""The fracture-probability overlay of a study: sagittal, coronal and axial views at the most suspicious vertebra.

The map (any grid of the patient, e.g. the vertebra crop of ``cervical/fracseg``) is put on the canonical CT by
world position; the three planes cross at the map's highest voxel inside the most suspicious vertebra (the
vertebra with the highest predicted probability among those the labels hold; the map's highest voxel when there
are no labels). The CT is shown in a bone window, the probability above ``SHOW_FROM`` in a heat colour map with a
colour bar, the crossing point as a small cross. Panels follow the display convention of ``report.figures``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spinelab.io.geometry import resample_to
from spinelab.io.orientation import to_canonical
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.report.figures import plt, save_figure, show_panel, volume_panel

__all__ = ["write_fracture_overlay", "draw_fracture_overlay", "overlay_centre", "SHOW_FROM"]

#: Probabilities below this are not drawn (the CT shows through).
SHOW_FROM = 0.05
_WINDOW = (400.0, 1800.0)
_PLANES = (("sagittal", 2), ("coronal", 1), ("axial", 0))


def overlay_centre(prob: np.ndarray, vertebrae: np.ndarray | None,
                   probabilities: dict[str, float] | None) -> tuple[tuple[int, int, int], str | None]:
    """The voxel the three planes cross at and the vertebra it was chosen in (``None``: the whole map)."""
    target = None
    if vertebrae is not None:
        present = [v for k, v in enumerate(VERTEBRAE, start=1) if (vertebrae == k).any()]
        if present:
            probs = probabilities or {}
            peak = {v: float(prob[vertebrae == VERTEBRAE.index(v) + 1].max()) for v in present}
            target = max(present, key=lambda v: (probs.get(v, 0.0), peak[v]))
    masked = prob if target is None else np.where(vertebrae == VERTEBRAE.index(target) + 1, prob, -1.0)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(masked)), prob.shape)), target  # type: ignore[return-value]


def draw_fracture_overlay(ct: Volume, prob: Volume, *, vertebrae: Volume | None = None,
                          probabilities: dict[str, float] | None = None, title: str = "") -> Any:
    """The figure (three panels and a colour bar) of a CT and its fracture probability map.

    Args:
        ct: the CT in HU (any orientation).
        prob: the fracture probability (any grid of the patient; 0 outside it).
        vertebrae: vertebra labels (any grid of the patient), to centre on the most suspicious vertebra.
        probabilities: the study's predicted probabilities (``C1`` .. ``C7``), which pick that vertebra.
        title: the figure's title (the study id).
    """
    canon = to_canonical(ct)
    on_ct = np.clip(np.asarray(resample_to(prob, canon, order=1, fill=0.0).array, dtype=np.float32), 0, 1)
    labels = None if vertebrae is None else np.asarray(resample_to(vertebrae, canon, order=0).array)
    centre, target = overlay_centre(on_ct, labels, probabilities)
    fig, axes = plt.subplots(1, 3, figsize=(15, 6.2), dpi=100)
    image = None
    for ax, (plane, axis) in zip(axes, _PLANES, strict=True):
        panel = volume_panel(canon, axis, centre[axis], plane=plane)
        heat = volume_panel(canon.with_array(on_ct), axis, centre[axis], plane=plane)
        show_panel(ax, panel, window=_WINDOW, title=plane)
        shown = np.ma.masked_less(heat.image, SHOW_FROM)
        image = ax.imshow(shown, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.65, interpolation="nearest",
                          aspect=panel.row_mm / panel.col_mm)
        rest = [a for a in range(3) if a != axis]
        x, y = panel.to_display(float(centre[rest[1]]), float(centre[rest[0]]))
        ax.plot([x], [y], marker="+", color="#00e5ff", markersize=14, markeredgewidth=1.5, gid="centre")
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), fraction=0.025, pad=0.01)
        bar.set_label("fracture probability")
    where = f"at {target}" if target else "at the map's highest voxel"
    peak = float(on_ct[centre])
    fig.suptitle(f"{title + ': ' if title else ''}fracture probability {where} (peak {peak:.2f})", fontsize=12)
    return fig


def write_fracture_overlay(ct: Volume, prob: Volume, path: str | Path, *, vertebrae: Volume | None = None,
                           probabilities: dict[str, float] | None = None, title: str = "") -> Path:
    """Write ``draw_fracture_overlay``'s figure to the PNG ``path`` (atomically)."""
    return save_figure(draw_fracture_overlay(ct, prob, vertebrae=vertebrae, probabilities=probabilities,
                                             title=title), path)
