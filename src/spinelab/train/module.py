"""``SpineModule``: the one LightningModule of spinelab; holds a stage's model, loss and optimiser."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pandas as pd
import torch

from spinelab.train.stage import Stage

__all__ = ["SpineModule", "warmup_cosine"]


def warmup_cosine(step: int, total: int, warmup: int, min_frac: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to ``min_frac``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress))


class SpineModule(L.LightningModule):
    """Trains any ``Stage``: forward and loss come from the stage, the loop from the Trainer.

    Validation predictions of each epoch are kept so the stage can compute its metric on the whole
    validation fold (AUC, competition score) rather than per batch.
    """

    def __init__(self, stage: Stage) -> None:
        super().__init__()
        self.stage = stage
        self.model = stage.build_model()
        self._val_frames: list[pd.DataFrame] = []

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.stage.forward(self.model, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.stage.loss(self(batch), batch)
        bs = _batch_size(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, batch_size=bs,
                      on_step=True, on_epoch=True)
        self.log("loss", losses["loss"].detach(), prog_bar=True, batch_size=bs, logger=False)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs = self(batch)
        losses = self.stage.loss(outputs, batch)
        self.log_dict({f"val/{k}": v.detach() for k, v in losses.items()}, prog_bar=False,
                      batch_size=_batch_size(batch), sync_dist=True)
        self._val_frames.append(self.stage.predictions(outputs, batch))

    def on_validation_epoch_end(self) -> None:
        if not self._val_frames:
            return
        frame = pd.concat(self._val_frames, ignore_index=True)
        self._val_frames.clear()
        metrics = self.stage.evaluate(frame)
        if metrics:
            self.log_dict({f"val/{k}": float(v) for k, v in metrics.items()}, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        tc = self.stage.train_config
        opt = torch.optim.AdamW(self.parameters(), lr=tc.optim.lr, weight_decay=tc.optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(tc.optim.warmup_frac * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, total, warmup, tc.optim.min_lr_frac))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _batch_size(batch: dict[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    return 1
