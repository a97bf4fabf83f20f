"""Fake-fracture augmentation: a thin lucent cleft painted through bone on a run of consecutive steps.

The RSNA 2022 7th place (S3, ``Utils/fake_fracture_generation.py``) painted fake fracture planes into CT
patches so that the fracture model saw far more positives than the ~1,000 labelled fractured vertebrae. Here
the cleft is painted into stage-2 inputs after windowing: a band 1-3 px wide and 10-30 px long, centred on a
bone pixel, that replaces bone (above ``bone_hu``) by soft tissue (``fill_hu``) on every slice of the steps it
crosses, drifting slightly from step to step as an oblique fracture plane does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["paint_cleft", "paint_intact"]


def paint_cleft(
    images: np.ndarray,
    windows: Sequence[tuple[float, float]],
    rng: np.random.Generator,
    *,
    max_steps: int = 3,
    bone_hu: float = 150.0,
    fill_hu: tuple[float, float] = (30.0, 90.0),
    width_px: tuple[float, float] = (1.2, 2.5),
    half_length_px: tuple[float, float] = (5.0, 14.0),
) -> np.ndarray:
    """Paint one cleft into ``images`` in place.

    Args:
        images: ``(steps, k * n_windows, H, W)`` windowed CT in [0, 1], channels slice-major and window-minor
            (``window_stack`` order), as ``fracture_inputs`` builds them for one vertebra.
        windows: the HU windows ``(level, width)`` of the channels.
        rng: random generator.
        max_steps: the cleft spans 1 to ``max_steps`` consecutive steps.
        bone_hu: only pixels above this value are cut (soft tissue keeps its texture).
        fill_hu: range of the value painted into the cleft.
        width_px, half_length_px: cleft width and half length, in output pixels.

    Returns:
        Indices of the painted steps; empty when the middle step shows too little bone to cut.
    """
    steps, channels, height, width = images.shape
    n_win = len(windows)
    lows = np.array([level - w / 2 for level, w in windows], dtype=np.float32)
    widths = np.array([w for _, w in windows], dtype=np.float32)
    thresholds = (bone_hu - lows) / widths  # bone threshold in each window's [0, 1] units
    run = int(rng.integers(1, min(max_steps, steps) + 1))
    first = int(rng.integers(0, steps - run + 1))
    mid = images[first + run // 2, (channels // n_win // 2) * n_win]
    margin_y, margin_x = height // 5, width // 5
    ys, xs = np.nonzero(mid[margin_y:height - margin_y, margin_x:width - margin_x] > thresholds[0])
    if len(ys) < 20:
        return np.array([], dtype=np.int64)
    k = int(rng.integers(len(ys)))
    cy, cx = float(ys[k] + margin_y), float(xs[k] + margin_x)
    theta = float(rng.uniform(0.0, np.pi))
    band, half = float(rng.uniform(*width_px)), float(rng.uniform(*half_length_px))
    fill_value = float(rng.uniform(*fill_hu))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    drift = rng.normal(0.0, 0.7, size=2)
    painted = []
    for i, step in enumerate(range(first, first + run)):
        y0, x0 = cy + drift[0] * i, cx + drift[1] * i
        across = np.abs((xx - x0) * np.sin(theta) - (yy - y0) * np.cos(theta))
        along = np.abs((xx - x0) * np.cos(theta) + (yy - y0) * np.sin(theta))
        # Soft edge (partial volume) across the band; hard ends along it.
        weight = np.clip(1.0 - (across - band / 2), 0.0, 1.0) * (along < half)
        for c in range(channels):
            w = c % n_win
            fill = np.clip((fill_value - lows[w]) / widths[w], 0.0, 1.0)
            cut = weight * (images[step, c] > thresholds[w])
            noise = rng.normal(0.0, 0.01, size=(height, width)).astype(np.float32)
            images[step, c] = images[step, c] * (1 - cut) + (fill + noise) * cut
        painted.append(step)
    return np.array(painted, dtype=np.int64)


def paint_intact(
    images: np.ndarray,
    intact: np.ndarray,
    prob: float,
    rng: np.random.Generator,
    paint: Callable[[np.ndarray], np.ndarray],
) -> dict[int, np.ndarray]:
    """Paint a cleft into each intact vertebra of a study with probability ``prob``, in place.

    Args:
        images: per-vertebra inputs ``(7, steps, ...)``; ``paint(images[i])`` paints one vertebra's steps.
        intact: ``(7,)`` bool, the vertebrae that may be painted (labelled intact and found).
        prob: chance that an intact vertebra gets a cleft.
        rng: random generator (one draw per intact vertebra, then ``paint``'s own).
        paint: paints one vertebra's steps and returns the painted steps' indices (``paint_cleft`` with the
            stage's windows).

    Returns:
        ``{vertebra: painted step indices}`` for the vertebrae that got a cleft (not those showing too little
        bone to cut).
    """
    out: dict[int, np.ndarray] = {}
    for i in np.flatnonzero(intact):
        if rng.random() < prob:
            painted = paint(images[i])
            if len(painted):
                out[int(i)] = painted
    return out
