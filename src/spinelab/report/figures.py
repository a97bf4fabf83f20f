"""Figure helpers shared by the reports: reformats with true aspect ratio, colours, atomic PNG writing."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from spinelab.io.atomic import atomic_path  # noqa: E402
from spinelab.io.volume import Volume  # noqa: E402

__all__ = ["plt", "save_figure", "risk_color", "reformat", "display_window", "LEVEL_COLORS"]

#: One colour per vertebra / level, in anatomical order (tab10 without grey).
LEVEL_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                "#bcbd22", "#7f7f7f"]


def save_figure(fig: plt.Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def risk_color(p: float) -> str:
    """Green below 0.2, amber to 0.5, red above: how a reader scans a list of probabilities."""
    return "#2e7d32" if p < 0.2 else ("#f9a825" if p < 0.5 else "#c62828")


def display_window(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Window (level, width) to [0, 1]; ``None`` uses the 1st-99th percentiles (MR)."""
    image = np.asarray(image, dtype=np.float32)
    if window is None:
        lo, hi = np.percentile(image, [1, 99])
    else:
        lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1)


def reformat(volume: Volume, plane: str, index: int) -> tuple[np.ndarray, float, bool]:
    """A sagittal (fixed column) or coronal (fixed row) reformat of an axial ``(D, H, W)`` volume.

    Returns:
        ``(image (D, H or W), aspect = slice spacing / in-plane spacing, head_at_top)``; show with
        ``imshow(image, aspect=aspect)`` and flip vertically when ``head_at_top`` is False.
    """
    sd, sh, sw = volume.spacing
    if plane == "sagittal":
        image, aspect = volume.array[:, :, int(index)], sd / sh
    elif plane == "coronal":
        image, aspect = volume.array[:, int(index), :], sd / sw
    else:
        raise ValueError(f"plane must be sagittal or coronal, got {plane!r}")
    head_at_top = bool(volume.affine[2, 0] < 0)  # D axis runs towards the feet
    return np.asarray(image), aspect, head_at_top
