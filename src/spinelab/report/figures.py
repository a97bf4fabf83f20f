"""Figure helpers shared by the reports: panels in display convention with orientation letters and a scale
bar, risk colours with their legend, text colours chosen by contrast, atomic PNG writing.

Display conventions (what a radiologist expects): sagittal and coronal views with the head up, sagittal
with anterior on the left, axial and coronal in radiological convention (patient left on image right,
axial anterior up). A panel is put into that convention from the affine, so the picture does not depend on
how the series was stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from spinelab.io.atomic import atomic_path  # noqa: E402
from spinelab.io.orientation import axis_map, orientation_letters, reorient  # noqa: E402
from spinelab.io.volume import Volume  # noqa: E402

__all__ = [
    "plt",
    "save_figure",
    "RISK_BANDS",
    "risk_color",
    "risk_legend_handles",
    "display_window",
    "LEVEL_COLORS",
    "contrast_ratio",
    "readable_text_color",
    "Panel",
    "DISPLAY",
    "slice_panel",
    "volume_panel",
    "crop_columns",
    "show_panel",
    "spread_labels",
]

#: One colour per vertebra / level, in anatomical order (tab10 without grey).
LEVEL_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                "#bcbd22", "#7f7f7f"]

#: ``(upper bound, colour, legend text)``: green below 0.2, amber to 0.5, red above, how a reader scans risks.
RISK_BANDS: tuple[tuple[float, str, str], ...] = (
    (0.2, "#2e7d32", "p < 0.2"),
    (0.5, "#f9a825", "0.2 ≤ p < 0.5"),
    (float("inf"), "#c62828", "p ≥ 0.5"),
)

#: ``plane -> (letter at the top, letter on the right)`` of the display convention.
DISPLAY: dict[str, tuple[str, str]] = {"axial": ("A", "L"), "sagittal": ("S", "P"), "coronal": ("S", "L")}

# LPS axes: +x towards patient left, +y posterior, +z superior (head).
_AXIS_OF = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
_POSITIVE = ("L", "P", "S")
_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


def save_figure(fig: plt.Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def risk_color(p: float) -> str:
    """The colour of ``RISK_BANDS`` that ``p`` falls in."""
    return next(color for bound, color, _ in RISK_BANDS if p < bound)


def risk_legend_handles() -> list[Patch]:
    """Legend patches explaining the risk colours."""
    return [Patch(facecolor=color, label=label) for _, color, label in RISK_BANDS]


def _luminance(color: Any) -> float:
    """WCAG 2 relative luminance of a matplotlib colour."""
    rgb = np.asarray(to_rgb(color))
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(lin @ [0.2126, 0.7152, 0.0722])


def contrast_ratio(foreground: Any, background: Any) -> float:
    """WCAG 2 contrast ratio (1 to 21) of two colours; 4.5 is the minimum for normal text."""
    a, b = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def readable_text_color(background: Any) -> str:
    """Black or white, whichever contrasts more with ``background``."""
    return "black" if contrast_ratio("black", background) >= contrast_ratio("white", background) else "white"


def display_window(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Window (level, width) to [0, 1]; ``None`` uses the 1st-99th percentiles (MR)."""
    image = np.asarray(image, dtype=np.float32)
    if window is None:
        lo, hi = np.percentile(image, [1, 99])
    else:
        lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1)


@dataclass
class Panel:
    """A 2-D image in display orientation.

    Attributes:
        image: rows top to bottom, columns left to right as shown.
        row_mm: height of one displayed pixel in mm.
        col_mm: width of one displayed pixel in mm.
        letters: patient direction at each edge: ``{"top", "bottom", "left", "right"}`` (S/I, A/P, R/L).
        to_display: maps stored ``(x = column, y = row)`` pixel coordinates to displayed ones.
    """

    image: np.ndarray
    row_mm: float
    col_mm: float
    letters: dict[str, str]
    to_display: Callable[[float, float], tuple[float, float]]


def slice_panel(image: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray, *, plane: str) -> Panel:
    """Put a 2-D image into ``DISPLAY[plane]`` convention (transposes and flips only, by its directions).

    Args:
        image: ``(rows, columns)`` as stored.
        row_dir: LPS vector of one step down the rows (its length is the row spacing in mm).
        col_dir: LPS vector of one step along the columns.
        plane: ``axial``, ``sagittal`` or ``coronal``. An image whose normal is not nearest to that plane's
            normal is shown as stored, still with its true letters.
    """
    up, right = DISPLAY[plane]
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([normal / np.linalg.norm(normal), row_dir, col_dir], axis=1)
    flat = Volume(np.asarray(image)[None], affine)
    # One-slice volume: the slice axis gets the world axis the display does not use (its sign is moot).
    unused = ({0, 1, 2} - {_AXIS_OF[up], _AXIS_OF[right]}).pop()
    codes = _POSITIVE[unused] + _OPPOSITE[up] + right
    moves = axis_map(flat, codes)
    if moves.perm[0] != 0:
        moves = axis_map(flat, flat.orientation)  # identity: show as stored
    shown = reorient(flat, codes) if moves.perm[0] == 0 and not moves.identity else flat
    letters = orientation_letters(shown)["axial"]  # the array[d] panel: rows H, columns W

    def to_display(x: float, y: float) -> tuple[float, float]:
        _, row, col = moves.index(np.array([0.0, y, x]))
        return float(col), float(row)

    _, row_mm, col_mm = shown.spacing
    return Panel(np.ascontiguousarray(shown.array[0]), row_mm, col_mm, letters, to_display)


def volume_panel(volume: Volume, axis: int, index: int, *, plane: str) -> Panel:
    """The slice ``index`` across array ``axis`` (0 = D, 1 = H, 2 = W) of ``volume`` as a ``Panel``."""
    index = int(np.clip(index, 0, volume.shape[axis] - 1))
    image = np.take(np.asarray(volume.array), index, axis=axis)
    rest = [a for a in range(3) if a != axis]
    return slice_panel(image, volume.affine[:3, rest[0]], volume.affine[:3, rest[1]], plane=plane)


def crop_columns(panel: Panel, start: int, stop: int) -> Panel:
    """Columns ``[start, stop)`` of ``panel`` (a narrower view); points still map to where they are shown."""
    start, stop = max(0, int(start)), min(panel.image.shape[1], int(stop))
    inner = panel.to_display

    def to_display(x: float, y: float) -> tuple[float, float]:
        col, row = inner(x, y)
        return col - start, row

    return Panel(panel.image[:, start:stop], panel.row_mm, panel.col_mm, panel.letters, to_display)


def show_panel(ax: Any, panel: Panel, *, window: tuple[float, float] | None, title: str = "",
               fontsize: float = 10) -> None:
    """Draw ``panel`` in true proportions with its orientation letters on every edge and a scale bar."""
    ax.imshow(display_window(panel.image, window), cmap="gray", aspect=panel.row_mm / panel.col_mm,
              interpolation="bilinear", vmin=0, vmax=1)
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")
    box = {"facecolor": "black", "alpha": 0.65, "pad": 1.5, "edgecolor": "none"}
    style = {"color": "white", "fontsize": fontsize, "fontweight": "bold", "bbox": box, "gid": "orientation"}
    places = {"top": (0.5, 0.985, "center", "top"), "bottom": (0.5, 0.015, "center", "bottom"),
              "left": (0.015, 0.5, "left", "center"), "right": (0.985, 0.5, "right", "center")}
    for edge, (x, y, ha, va) in places.items():
        ax.text(x, y, panel.letters[edge], transform=ax.transAxes, ha=ha, va=va, **style)
    _scale_bar(ax, panel, fontsize=fontsize - 1)


def _scale_bar(ax: Any, panel: Panel, *, fontsize: float) -> None:
    """A white bar of a round length (at most a quarter of the image width) in the lower left corner."""
    height, width = panel.image.shape
    width_mm = width * panel.col_mm
    length = max([n for n in (1, 2, 5, 10, 20, 50, 100, 200) if n <= width_mm / 4] or [width_mm / 4])
    pixels = length / panel.col_mm
    x0 = 0.06 * width
    y = height - 1 - 0.06 * height
    x1 = x0 + pixels
    ax.plot([x0, x1], [y, y], color="white", lw=3, solid_capstyle="butt", gid="scale-bar",
            path_effects=_outline())
    ax.text(x1 - pixels / 2, y - 0.02 * height, f"{length:g} mm", color="white", fontsize=fontsize,
            ha="center", va="bottom", path_effects=_outline())


def _outline() -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=2.5, foreground="black")]


def spread_labels(centres: np.ndarray, gap: float, lo: float, hi: float) -> np.ndarray:
    """Label positions in the given order, each at least ``gap`` after the previous one, inside
    ``[lo, hi]``, as close to ``centres`` as that allows (so labels keep their order and never overlap).
    """
    centres = np.asarray(centres, dtype=float)
    n = len(centres)
    if n == 0:
        return centres
    gap = min(gap, (hi - lo) / max(n - 1, 1))
    pos = np.clip(centres.copy(), lo, hi)
    for i in range(1, n):  # push down
        pos[i] = max(pos[i], pos[i - 1] + gap)
    pos[-1] = min(pos[-1], hi)
    for i in range(n - 2, -1, -1):  # pull back up from the bottom edge
        pos[i] = min(pos[i], pos[i + 1] - gap)
    return np.maximum(pos, lo + gap * np.arange(n))
