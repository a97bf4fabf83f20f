"""Optional 2D pre-training of the stage-2 CNN on single step images (2nd place's first stage).

A stage-2 study item has 7 x ``n_slices // 3`` step images of which a few percent show a fracture, and
the study labels say little about which. Here every item is one step image, built exactly as stage 2 builds
it, and batches are balanced: steps that a fracture box marks, intact steps with a painted cleft (7th
place's fake fractures) and intact steps. Stage 2 then starts its CNN from this one
(``FractureStage.initialize``), so its sequence layers learn from features that already see fractures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from spinelab.config.schema import CervicalConfig, ModelConfig
from spinelab.data.fake_fracture import paint_cleft
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.data.transforms import SequenceAugment
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.fracture import (
    known_step_bce,
    read_localization,
    step_images,
    step_slices,
)
from spinelab.tasks.cervical.studies import CervicalStudies, canonical_fracture_slices, step_targets
from spinelab.train.run_folder import load_trained_backbone
from spinelab.train.stage import Stage

__all__ = ["FrameDataset", "FrameStage", "draw_frame"]

T = TypeVar("T")
U = TypeVar("U")


def draw_frame(rng: np.random.Generator, frames: Any, positive: Sequence[T], intact: Sequence[U]
               ) -> tuple[str, T | U]:
    """One balanced training draw of the frame pre-training (every route's): ``("positive", item)`` with
    probability ``frames.positive_share`` (when there are positives), else an intact item, ``"fake"`` (to be
    painted) with probability ``frames.fake_share`` and ``"intact"`` otherwise."""
    draw = rng.random()
    if draw < frames.positive_share and positive:
        return "positive", positive[rng.integers(len(positive))]
    kind = "fake" if draw < frames.positive_share + frames.fake_share else "intact"
    return kind, intact[rng.integers(len(intact))]


class FrameDataset(SeededDataset, Dataset):
    """One item = one stage-2 step image and whether it shows a fracture.

    Training items are drawn at random, ``frames_per_epoch`` per epoch: with probability ``positive_share``
    a step that a fracture box marks, ``fake_share`` an intact step with a painted cleft, otherwise an
    intact step. Validation items are every step of the held-out studies whose target is known. Training draws
    its random numbers from the generator seeded by ``seed``.
    """

    def __init__(self, studies: CervicalStudies, ids: list[str], cfg: CervicalConfig,
                 localization: dict[str, dict[str, Any]], *, train: bool, seed: int = 0) -> None:
        self.studies, self.cfg, self.loc, self.train = studies, cfg, localization, train
        self.seed = seed
        self.boxes = studies.fracture_slices
        self.targets = {uid: studies.targets(uid) for uid in ids}  # one pandas lookup per study, not per item
        found = [(uid, i) for uid in ids for i, v in enumerate(VERTEBRAE)
                 if v not in localization[uid].get("missing", [])]
        self.intact = [(uid, i) for uid, i in found if self.targets[uid][i] < 0.5]
        # fractured vertebrae whose boxes mark slices
        self.positive = [(uid, i) for uid, i in found if self.targets[uid][i] >= 0.5
                         and (self.boxes.get(uid, {}).get(VERTEBRAE[i]) or self.boxes.get(uid, {}).get(""))]
        steps = cfg.stage2.n_slices // 3
        self.items = [] if train else [(uid, i, s) for uid, i in found for s in range(steps)]
        self.augment = SequenceAugment(affine=0.3) if train else None

    def __len__(self) -> int:
        return self.cfg.frames.frames_per_epoch if self.train else len(self.items)

    def _step(self, uid: str, vertebra: int, rng: np.random.Generator | None
              ) -> tuple[Volume, np.ndarray, np.ndarray]:
        """The study volume, the slice indices ``(steps, 3)`` of one vertebra and their per-step targets."""
        vol = self.studies.volume(uid)
        slices = step_slices(vol, self.loc[uid], self.cfg, rng=rng)
        targets = step_targets(slices, self.targets[uid], canonical_fracture_slices(self.boxes.get(uid), vol))
        return vol, slices[vertebra], targets[vertebra]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not self.train:
            uid, v, s = self.items[i]
            vol, slices, targets = self._step(uid, v, None)
            image = step_images(vol, slices[s], self.loc[uid], self.cfg)
            return {"image": torch.from_numpy(image), "target": torch.tensor(float(targets[s])),
                    "uid": uid, "vertebra": v, "step": s, "fractured": torch.tensor(float(self.targets[uid][v]))}
        rng = self.rng()
        kind, (uid, v) = draw_frame(rng, self.cfg.frames, self.positive, self.intact)
        if kind == "positive":
            vol, slices, targets = self._step(uid, v, rng)
            marked = np.flatnonzero(targets > 0.5)
            s = int(rng.choice(marked)) if len(marked) else int(rng.integers(len(targets)))
            image = step_images(vol, slices[s], self.loc[uid], self.cfg)
            target = float(targets[s] > 0.5)
        else:
            vol, slices, _ = self._step(uid, v, rng)
            s = int(rng.integers(len(slices)))
            image = step_images(vol, slices[s], self.loc[uid], self.cfg)
            target = 0.0
            if kind == "fake":
                painted = paint_cleft(image[None], self.cfg.stage2.windows, rng, max_steps=1)
                target = float(len(painted) > 0)
        if self.augment is not None:
            image = self.augment(image[None], rng=rng)[0][0]
        return {"image": torch.from_numpy(np.ascontiguousarray(image)), "target": torch.tensor(target)}


class FrameStage(Stage):
    """Frame pre-training of the cervical stage-2 CNN (``frames`` section; run folder ``frames/``)."""

    name = "frames"
    # Keep the last epoch: the held-out loss is not comparable across epochs here (balanced training items,
    # a few percent positives among the held-out steps), and it picked an early, weaker CNN in the benchmark.
    monitor = None

    def __init__(self, cfg: CervicalConfig, run_dir: Any) -> None:
        super().__init__(cfg, run_dir)
        self.studies = CervicalStudies(cfg)

    @property
    def model_config(self) -> ModelConfig:
        """The ``frames.model`` section, with stage 2's backbone when unset (the weights carry over)."""
        mc = self.cfg.frames.model
        return mc if mc.backbone else mc.model_copy(update={"backbone": self.cfg.stage2.model.backbone})

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": 3 * len(self.cfg.stage2.windows)}

    def initialize(self, model: torch.nn.Module, fold: int | None) -> None:
        """Start from the same fold's stage-1 backbone, as stage 2 would (``stage2.init_from_stage1``)."""
        if self.cfg.stage2.init_from_stage1 and self.model_config.pretrained_path is None:
            load_trained_backbone(model.backbone, self.run_dir, "stage1", "encoder.backbone.", fold)

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        loc = read_localization(self.run_dir)
        ids = [uid for uid in self.studies.labels.index if uid in loc]
        train_ids, val_ids = self.studies.split(ids, fold)
        train = FrameDataset(self.studies, train_ids, self.cfg, loc, train=True,
                             seed=stage_seed(self.train_config.seed, fold))
        if not train.intact:
            from spinelab.errors import InputError

            raise InputError(self.run_dir / "localization.json", "no intact vertebra to train the frames on")
        val = FrameDataset(self.studies, val_ids, self.cfg, loc, train=False) if val_ids else None
        return train, val

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["image"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": known_step_bce(outputs["step"], batch["target"])}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        return pd.DataFrame({"StudyInstanceUID": list(batch["uid"]), "vertebra": batch["vertebra"].numpy(),
                             "step": batch["step"].numpy(),
                             "prob": torch.sigmoid(outputs["step"].float()).cpu().numpy(),
                             "true": batch["target"].numpy(), "fractured": batch["fractured"].numpy()})

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        """Held-out AUC of the steps with a known target, and of vertebrae scored by their highest step."""
        from sklearn.metrics import roc_auc_score

        out: dict[str, float] = {}
        known = predictions[predictions["true"] >= 0]
        if known["true"].nunique() == 2:
            out["auc_step"] = float(roc_auc_score(known["true"], known["prob"]))
        per_vertebra = predictions.groupby(["StudyInstanceUID", "vertebra"]).agg(prob=("prob", "max"),
                                                                                 true=("fractured", "max"))
        if per_vertebra["true"].nunique() == 2:
            out["auc_vertebra_max_step"] = float(roc_auc_score(per_vertebra["true"], per_vertebra["prob"]))
        return out
