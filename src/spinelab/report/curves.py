"""Training curves from the CSV logs of every stage and fold in a run folder."""

from __future__ import annotations

from pathlib import Path

from spinelab.report.figures import plt, save_figure
from spinelab.train.run_folder import read_training_log

__all__ = ["plot_training_curves"]


def plot_training_curves(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """One PNG per stage: training and validation loss (and validation metrics) per epoch, one line per fold.

    Returns:
        Paths of the written figures (none when the run has no logs).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    written = []
    for stage_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and any(p.glob("*/logs/*/metrics.csv"))):
        logs = {d.name: read_training_log(d) for d in sorted(stage_dir.iterdir()) if d.is_dir()}
        logs = {fold: df for fold, df in logs.items() if not df.empty}
        metrics = sorted({c for df in logs.values() for c in df.columns if c.startswith("val/")} - {"val/loss"})
        panels = ["loss", *metrics]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
        for fold, df in logs.items():
            per_epoch = df.groupby("epoch").mean(numeric_only=True)
            for ax, panel in zip(axes[0], panels, strict=True):
                if panel == "loss":
                    if "train/loss_epoch" in per_epoch:
                        ax.plot(per_epoch.index, per_epoch["train/loss_epoch"], "-", label=f"{fold} train")
                    if "val/loss" in per_epoch:
                        ax.plot(per_epoch.index, per_epoch["val/loss"], "--", label=f"{fold} val")
                elif panel in per_epoch:
                    ax.plot(per_epoch.index, per_epoch[panel], "-o", ms=3, label=fold)
        for ax, panel in zip(axes[0], panels, strict=True):
            ax.set_title(panel.removeprefix("val/"))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{run_dir.name} / {stage_dir.name}")
        written.append(save_figure(fig, out_dir / f"curves_{stage_dir.name}.png"))
    return written
