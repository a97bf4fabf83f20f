"""``Stage``: what one trainable step of a pipeline contributes (data, model, loss, predictions, metric).

Every pipeline stage of every task is a ``Stage`` subclass; the loop, devices, precision, checkpoints,
EMA, logging and out-of-fold predictions are shared (``spinelab.train.module`` / ``spinelab.train.run``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from spinelab.config.schema import ModelConfig, TrainConfig
from spinelab.errors import ConfigError
from spinelab.models import create_model
from spinelab.models.registry import accepted_args, check_model_args

__all__ = ["Stage"]


class Stage(ABC):
    """One trainable step of a pipeline.

    Args:
        cfg: the full experiment config (stages read their own section and the data section).
        run_dir: the run folder (stages may read what earlier stages wrote there).
    """

    #: folder name inside the run folder, e.g. ``"stage1"``.
    name: str = "stage"
    #: validation quantity (minimised) that picks ``checkpoint_best``; a stage whose optimised loss carries
    #: auxiliary terms names the loss that matters here instead; ``None`` keeps the last epoch.
    monitor: str | None = "val/loss"

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)

    # --- config sections (by default ``cfg.<name>``; override when a stage's section is named otherwise) --
    @property
    def section(self) -> Any:
        """This stage's config section, ``cfg.<name>`` (e.g. ``cfg.stage1``)."""
        return getattr(self.cfg, self.name)

    @property
    def model_config(self) -> ModelConfig:
        """The ``model`` section of this stage."""
        return self.section.model

    @property
    def train_config(self) -> TrainConfig:
        """The ``train`` section of this stage."""
        return self.section.train

    # --- what subclasses provide ------------------------------------------------------------------
    @abstractmethod
    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        """Training and validation datasets for ``fold`` (``None``: all data, no validation)."""

    @abstractmethod
    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Run the model on a batch and return its named outputs."""

    @abstractmethod
    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named loss terms; key ``"loss"`` is optimised."""

    @abstractmethod
    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        """Rows of out-of-fold predictions (with ids and targets) for a validation batch."""

    # --- optional hooks ---------------------------------------------------------------------------
    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        """Validation metrics from the concatenated ``predictions`` rows (default: none)."""
        return {}

    def model_kwargs(self) -> dict[str, Any]:
        """Extra builder arguments beyond the ``model`` section (e.g. input channels)."""
        return {}

    def collate_fn(self) -> Callable[[list[Any]], Any] | None:
        """A custom collate function, or ``None`` for torch's default."""
        return None

    def initialize(self, model: nn.Module, fold: int | None) -> None:
        """Set starting weights before training ``fold`` (default: keep the builder's); not called at inference."""
        return None

    def build_model(self) -> nn.Module:
        """Create the stage's model from the registry.

        What the ``model`` section sets must be an argument of the builder (else a ``ConfigError`` naming the
        model and the key); what ``model_kwargs`` offers (input channels, ...) reaches it only where the
        builder takes it, so a 2D and a 3D builder both fit a stage.
        """
        mc = self.model_config
        return create_model(mc.name, **self.model_args())

    def model_args(self) -> dict[str, Any]:
        """The builder arguments ``build_model`` passes, checked against the builder's signature without
        building anything, so a caller can refuse a wrong key before any training work.

        Raises:
            ConfigError: a key the builder does not take, or ``model.kwargs`` setting what the stage sets.
        """
        mc = self.model_config
        configured = mc.builder_args()
        check_model_args(mc.name, configured)
        offered = self.model_kwargs()
        clash = sorted(set(mc.kwargs) & set(offered))
        if clash:
            raise ConfigError(f"model {mc.name!r}: model.kwargs.{clash[0]} is set by the {self.name} stage "
                              "from its other settings; remove it from model.kwargs")
        return {**configured, **accepted_args(mc.name, offered)}
