"""``SpineModule``: the one LightningModule of spinelab; holds a stage's model, loss and optimiser.

Validation metrics under DDP: each rank sees a shard of the validation set (Lightning's
``DistributedSampler``, which pads the shards to equal length by repeating samples). An average of per-rank
AUCs or competition scores is not the metric of the fold, so the prediction rows of every rank are gathered,
the padding is dropped by sample id (the dataset index the sampler drew), the rows are put back in dataset
order, and ``Stage.evaluate`` runs once, on rank 0, on exactly the rows a single process would have seen.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import pandas as pd
import torch
import torch.distributed as dist

from spinelab.train.ranks import on_rank_zero
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
        #: the dataset indices of each validation batch of this rank (DDP only; ``None`` in one process)
        self._val_batches: list[list[int]] | None = None
        #: the metrics of the last validation epoch (Python floats, the same on every rank)
        self.val_metrics: dict[str, float] = {}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.stage.forward(self.model, batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.stage.loss(self(batch), batch)
        bs = _batch_size(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, batch_size=bs,
                      on_step=True, on_epoch=True)
        self.log("loss", losses["loss"].detach(), prog_bar=True, batch_size=bs, logger=False)
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val_frames.clear()
        self._val_batches = _batch_indices(self.trainer.val_dataloaders) if _world_size() > 1 else None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        outputs = self(batch)
        losses = self.stage.loss(outputs, batch)
        bs = _batch_size(batch)
        # The losses stay Lightning's batch-size-weighted mean over ranks (padding included: at most one
        # repeated sample per rank); the stage's metrics below are exact.
        self.log_dict({f"val/{k}": v.detach() for k, v in losses.items()}, prog_bar=False, batch_size=bs,
                      sync_dist=True)
        if _world_size() == 1:
            self._val_frames.append(self.stage.predictions(outputs, batch))
            return
        samples = self._val_batches[batch_idx] if self._val_batches is not None else None
        if samples is None or len(samples) != bs:  # indices unknown, or a collate that changes the batch size
            self._val_frames.append(self.stage.predictions(outputs, batch).assign(_sample=None, _slot=0))
            return
        for b, sample in enumerate(samples):
            rows = self.stage.predictions(_take(outputs, b, bs), _take(batch, b, bs))
            self._val_frames.append(rows.assign(_sample=sample, _slot=_slot(self.global_rank, batch_idx, b)))

    def on_validation_epoch_end(self) -> None:
        frame = pd.concat(self._val_frames, ignore_index=True) if self._val_frames else pd.DataFrame()
        self._val_frames.clear()
        if _world_size() > 1:
            frame = self._gather_rows(frame)
        # once, on rank 0; the others get its numbers (or its error, instead of waiting for ever)
        metrics = on_rank_zero(self._evaluate, frame)
        self.val_metrics = metrics
        if metrics:
            # Every rank logs the same numbers (the checkpoint callbacks of all ranks agree); no reduction.
            self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True, sync_dist=False)

    def _evaluate(self, frame: pd.DataFrame) -> dict[str, float]:
        return {k: float(v) for k, v in self.stage.evaluate(frame).items()} if len(frame) else {}

    def _gather_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Every rank's prediction rows, the sampler's padding dropped, in dataset order (all ranks)."""
        parts: list[pd.DataFrame | None] = [None] * _world_size()
        dist.all_gather_object(parts, frame)
        rows = pd.concat([p for p in parts if p is not None and len(p)], ignore_index=True)
        if not len(rows):
            return rows
        if rows["_sample"].isna().any():
            # An iterable dataset, a custom batch sampler or collate: the indices are not known, so nothing
            # is dropped.
            if self.global_rank == 0:
                import logging

                logging.getLogger("spinelab").warning(
                    "validation: sample indices unknown under DDP; padding rows may be counted twice")
            return rows.drop(columns=["_sample", "_slot"])
        first = rows.groupby("_sample")["_slot"].transform("min")
        rows = rows[rows["_slot"] == first]
        rows = rows.sort_values("_sample", kind="stable")
        return rows.drop(columns=["_sample", "_slot"]).reset_index(drop=True)

    def configure_optimizers(self) -> Any:
        tc = self.stage.train_config
        opt = torch.optim.AdamW(self.parameters(), lr=tc.optim.lr, weight_decay=tc.optim.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(tc.optim.warmup_frac * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, total, warmup, tc.optim.min_lr_frac))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _slot(rank: int, batch_idx: int, position: int) -> int:
    """One number per (rank, batch, position) that orders the copies of a sample: the first copy wins."""
    return (rank * 1_000_000_000 + batch_idx) * 100_000 + position


def _batch_indices(loaders: Any) -> list[list[int]] | None:
    """The dataset indices of each validation batch of this rank, from its batch sampler (``None`` if none)."""
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    sampler = getattr(loader, "batch_sampler", None)
    if sampler is None:
        return None
    try:
        return [list(map(int, b)) for b in sampler]
    except TypeError:
        return None


def _take(value: Any, b: int, n: int) -> Any:
    """Sample ``b`` of a collated batch of ``n`` (tensors, arrays, lists and dicts of them), batch axis kept."""
    if isinstance(value, dict):
        return {k: _take(v, b, n) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
        return value[b:b + 1]
    if isinstance(value, list | tuple) and len(value) == n:
        return type(value)([value[b]]) if isinstance(value, list) else (value[b],)
    if hasattr(value, "shape") and getattr(value, "ndim", 0) and value.shape[0] == n:
        return value[b:b + 1]
    return value


def _batch_size(batch: dict[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return int(v.shape[0])
    return 1
