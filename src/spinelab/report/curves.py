"""Training curves from the CSV logs of every stage and fold in a run folder: one figure per stage, one panel
per loss or metric (training solid, validation dashed), the epoch kept as ``model.pt`` marked, and the
constant baseline drawn where the run folder holds one."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spinelab.report.figures import LEVEL_COLORS, plt, save_figure
from spinelab.train.run_folder import read_training_log

__all__ = ["plot_training_curves", "draw_stage_curves", "best_epoch", "curve_panels", "direction", "check_run_folder"]

#: metric -> (file, key, label) of the constant it must beat, as ``spinelab train`` writes them.
_BASELINES = {
    "competition_score": ("cv_scores.json", "prevalence_constant_score", "constant = label prevalence"),
    "lumbar_score": ("cv_scores.json", "weight_optimal_constant_score", "best constant"),
}


_MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # one per fold


def direction(name: str) -> str:
    """``"higher is better"`` or ``"lower is better"`` for a logged name (losses, scores, errors are lower)."""
    words = set(name.lower().replace("/", "_").split("_"))
    if words & {"auc", "acc", "accuracy", "within", "dice", "f1", "precision", "recall"}:
        return "higher is better"
    return "lower is better"


def best_epoch(fold_folder: str | Path) -> int | None:
    """The epoch whose weights became ``model.pt``: ``best_epoch`` in ``scores.json`` when recorded, else
    the epoch stored in ``checkpoint_best.ckpt`` (memory-mapped, weights only: nothing is executed).
    ``None`` when neither exists."""
    import torch

    fold_folder = Path(fold_folder)
    scores = fold_folder / "scores.json"
    if scores.is_file():
        recorded = json.loads(scores.read_text()).get("best_epoch")
        if recorded is not None:
            return int(recorded)
    ckpt = fold_folder / "checkpoint_best.ckpt"
    if not ckpt.is_file():
        return None
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # an unreadable checkpoint costs only the marker, not the report
        return None


def curve_panels(columns: list[str]) -> dict[str, list[str]]:
    """Group logged columns into panels: ``{panel name: [column, ...]}``.

    ``train/X_epoch`` and ``val/X`` share panel ``X``; a validation family ``X_suffix`` joins panel ``X`` when
    ``X`` is logged too (``error_mm_l1_l2`` with ``error_mm``); the metric parts ``loss_*`` share one panel.
    """
    train = {c.removeprefix("train/").removesuffix("_epoch"): c for c in columns
             if c.startswith("train/") and c.endswith("_epoch")}
    val = {c.removeprefix("val/"): c for c in columns if c.startswith("val/")}
    panels: dict[str, list[str]] = {}
    names = sorted(set(train) | set(val), key=lambda n: (n != "loss", n))
    for name in names:
        base = next((b for b in names if b != "loss" and name.startswith(b + "_") and b in val), None)
        if base is None and name.startswith("loss_") and name in val and name not in train:
            base = "loss_* (metric parts)"
        key = base or name
        panels.setdefault(key, []).extend(c for c in (train.get(name), val.get(name)) if c)
    return panels


def check_run_folder(run_dir: str | Path) -> Path:
    """``run_dir`` (``--model``) must be a folder: checked before a report draws anything."""
    from spinelab.errors import InputError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "run folder (--model) not found")
    return run_dir


def plot_training_curves(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """One PNG per stage (``curves_<stage>.png``), one line per fold and split.

    Returns:
        Paths of the written figures (none when the run has no logs).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    written = []
    for stage_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and any(p.glob("*/logs/*/metrics.csv"))):
        folds = {d.name: d for d in sorted(stage_dir.iterdir()) if d.is_dir()}
        logs = {name: read_training_log(d) for name, d in folds.items()}
        logs = {name: df for name, df in logs.items() if not df.empty and "epoch" in df}
        if not logs:
            continue
        fig = draw_stage_curves(run_dir, stage_dir.name, logs, {n: best_epoch(folds[n]) for n in logs})
        written.append(save_figure(fig, out_dir / f"curves_{stage_dir.name}.png"))
    return written


def draw_stage_curves(run_dir: Path, stage: str, logs: dict[str, pd.DataFrame],
                      best: dict[str, int | None]) -> Figure:
    """The figure of one stage: ``logs`` and ``best`` epochs by fold name, baselines from ``run_dir``."""
    panels = curve_panels(sorted({c for df in logs.values() for c in df.columns}))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.2 * nrows + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, (panel, cols) in zip(axes.ravel(), panels.items(), strict=False):
        family = len(cols) > 2  # e.g. error_mm and its per-level parts: one colour per member
        for k, (fold, df) in enumerate(logs.items()):
            per_epoch = df.groupby("epoch").mean(numeric_only=True)
            for m, c in enumerate(cols):
                series = per_epoch[c].dropna() if c in per_epoch else pd.Series(dtype=float)
                if series.empty:
                    continue
                split = "train" if c.startswith("train/") else "val"
                color = LEVEL_COLORS[(m if family else k) % len(LEVEL_COLORS)]
                label = f"{fold} {split}" + (f" {c.split('/', 1)[1]}" if family else "")
                ax.plot(series.index, series.to_numpy(), "-" if split == "train" else "--",
                        marker=_MARKERS[k % len(_MARKERS)], ms=4, color=color, label=label, gid="curve")
            if best.get(fold) is not None:
                ax.axvline(best[fold], color="#424242" if family else LEVEL_COLORS[k % len(LEVEL_COLORS)], ls=":",
                           lw=1.3,
                           label=f"{fold} best epoch {best[fold]} (model.pt)")
        _draw_baseline(ax, run_dir, panel)
        low, high = _data_range(ax)
        if low > 0 and high / low > 20:  # a first epoch far above the rest would flatten every later one
            ax.set_yscale("log")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        what = "loss" if "loss" in panel else panel
        ax.set_ylabel(f"{what} ({direction(panel)})", fontsize=8.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{run_dir.name}: {stage} (solid = training, dashed = validation)", fontsize=11)
    return fig


def _data_range(ax: Any) -> tuple[float, float]:
    """Smallest and largest y drawn by the curves of ``ax`` (markers and baselines left out)."""
    ys = [y for line in ax.lines if line.get_gid() == "curve" for y in line.get_ydata()]
    return (float(min(ys)), float(max(ys))) if ys else (0.0, 0.0)


def _draw_baseline(ax: Any, run_dir: Path, panel: str) -> None:
    known = _BASELINES.get(panel)
    if known is None or not (run_dir / known[0]).is_file():
        return
    value = json.loads((run_dir / known[0]).read_text()).get(known[1])
    if value is not None:
        ax.axhline(float(value), color="#616161", ls="-.", lw=1.2, label=f"{known[2]}: {float(value):.3f}")
