"""A Boring-style stage (Lightning's idea): a learnable toy problem to test the shared training machinery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from spinelab.config.schema import ModelConfig, TrainConfig
from spinelab.train.stage import Stage


class LinearProblem(Dataset):
    """y = x @ w with fixed w: any working optimiser drives the loss down quickly."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.linspace(-1, 1, 8)[:, None]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "id": i}


class BoringStage(Stage):
    name = "boring"

    def __init__(self, run_dir: Path, *, epochs: int = 3, ema: float | None = None, fail_at_step: int | None = None,
                 limit_train_batches: int | None = None, monitor: str | None = "val/loss", keep: str = "all"
                 ) -> None:
        super().__init__(cfg=None, run_dir=run_dir)
        self.monitor = monitor
        self._train = TrainConfig(epochs=epochs, batch_size=8, ema=ema, limit_train_batches=limit_train_batches,
                                  optim={"lr": 0.05, "warmup_frac": 0.0}, keep=keep)
        self.fail_at_step = fail_at_step
        self.steps_seen = 0

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(name="boring_linear")

    @property
    def train_config(self) -> TrainConfig:
        return self._train

    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(8, 1)

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        return LinearProblem(64, 0), (LinearProblem(16, 1) if fold is not None else None)

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if model.training and self.fail_at_step is not None:
            self.steps_seen += 1
            if self.steps_seen > self.fail_at_step:
                raise RuntimeError("simulated kill")
        return {"y": model(batch["x"])}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        loss = torch.nn.functional.mse_loss(outputs["y"], batch["y"])
        # "constant" never improves: monitoring it keeps checkpoint_best at the first epoch.
        return {"loss": loss, "constant": torch.ones(())}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        return pd.DataFrame({"id": batch["id"].numpy(), "pred": outputs["y"][:, 0].detach().numpy(),
                             "true": batch["y"][:, 0].numpy()})

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        return {"mae": float((predictions.pred - predictions.true).abs().mean())}
