"""Optional stage ``frames`` of the seg3d route: the type-1 CNN pre-trained on single crops, drawn balanced.

A type-1 sample is one vertebra's 15 crops, and the crops that show a cleft are few: on the 100-study benchmark
(about 50 fractured vertebrae in the training folds) type 1 trained from scratch stayed near chance for 1,400
steps. As in the slice route's frame pre-training (``tasks.cervical.frames``), every item here is one crop
(``span`` CT slices plus the vertebra's mask), drawn with probability ``positive_share`` from the crops that a
fracture box marks, ``fake_share`` an intact crop with a painted cleft, otherwise an intact crop. Type 1 then
starts its CNN from this one (``VertebraStage.initialize``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spinelab.config.schema import ModelConfig
from spinelab.config.seg3d import Seg3dConfig
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.data.transforms import SequenceAugment
from spinelab.errors import InputError
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.frames import FrameStage, draw_frame
from spinelab.tasks.cervical.seg3d.vertebra_stage import (
    TrainingCrops,
    augment_crops,
    crop_slice_targets,
    paint_crop_cleft,
)
from spinelab.tasks.cervical.studies import CervicalStudies

__all__ = ["CropFrameDataset", "CropFrameStage"]


class CropFrameDataset(SeededDataset, Dataset):
    """One item = one cached crop ``(span + 1, S, S)`` and whether it shows a fracture.

    Training items are drawn at random, ``frames.frames_per_epoch`` per epoch, by the ``frames`` shares;
    positives are the crops of fractured vertebrae that a fracture box marks (``crop_slice_targets``).
    Validation items are every crop of the held-out studies' found vertebrae, in order; a crop of a fractured
    vertebra without boxes has target -1 (unknown).
    """

    def __init__(self, studies: CervicalStudies, crops: TrainingCrops, ids: list[str], cfg: Seg3dConfig, *,
                 train: bool, seed: int = 0) -> None:
        self.studies, self.crops, self.cfg, self.train, self.seed = studies, crops, cfg, train, seed
        span = cfg.crops.span
        self.intact: list[tuple[str, int]] = []
        self.positive: list[tuple[str, int, int]] = []
        self.items: list[tuple[str, int, int, float, float]] = []  # validation: uid, vertebra, crop, target, label
        for uid in ids:
            labels = studies.targets(uid)
            # the centre slices (crop metadata) are needed only to place the boxes of a fractured vertebra
            centres = crops.centre_slices(uid) if (labels[:len(VERTEBRAE)] >= 0.5).any() else None
            for v, ok in enumerate(crops.found(uid)):
                if not ok:
                    continue
                if labels[v] < 0.5:
                    self.intact.append((uid, v))
                    per_crop = np.zeros(cfg.crops.n_slices, np.float32)
                else:
                    per_crop = crop_slice_targets(studies, uid, labels, v, centres[v], span)
                    self.positive += [(uid, v, int(c)) for c in np.flatnonzero(per_crop > 0.5)]
                self.items += [(uid, v, c, float(t), float(labels[v])) for c, t in enumerate(per_crop)]
        self.augment = SequenceAugment(affine=0.3) if train and cfg.vertebra.augment else None

    def __len__(self) -> int:
        return self.cfg.frames.frames_per_epoch if self.train else len(self.items)

    def _crop(self, uid: str, vertebra: int, crop: int) -> np.ndarray:
        return np.array(self.crops.get(uid, vertebra).images[0, crop])  # a writable copy: it may be painted

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not self.train:
            uid, v, c, target, label = self.items[k]
            return {"image": torch.from_numpy(self._crop(uid, v, c)), "target": torch.tensor(target),
                    "uid": uid, "vertebra": v, "step": c, "fractured": torch.tensor(label)}
        rng = self.rng()
        kind, drawn = draw_frame(rng, self.cfg.frames, self.positive, self.intact)
        if kind == "positive":
            uid, v, c = drawn
            image, target = self._crop(uid, v, c), 1.0
        else:
            uid, v = drawn
            image = self._crop(uid, v, int(rng.integers(self.cfg.crops.n_slices)))
            target = 0.0
            if kind == "fake":
                target = float(len(paint_crop_cleft(image[None], self.cfg.crops.window, rng, max_steps=1)) > 0)
        if self.augment is not None:
            image = augment_crops(self.augment, image[None], rng)[0]
        return {"image": torch.from_numpy(np.ascontiguousarray(image)), "target": torch.tensor(target)}


class CropFrameStage(FrameStage):
    """Frame pre-training of the type-1 CNN (``frames`` section of the seg3d route; run folder ``frames/``).

    Loss, predictions and held-out metrics (crop AUC, vertebra AUC from each vertebra's highest crop) are the
    slice route's frame stage's.
    """

    @property
    def model_config(self) -> ModelConfig:
        """The ``frames.model`` section, with type 1's backbone when unset (the weights carry over)."""
        mc = self.cfg.frames.model
        return mc if mc.backbone else mc.model_copy(update={"backbone": self.cfg.vertebra.model.backbone})

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": self.cfg.crops.span + 1}

    def initialize(self, model: torch.nn.Module, fold: int | None) -> None:
        """Random weights, or ImageNet ones through ``frames.model.pretrained_path`` (the builder's)."""
        return None

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        crops = TrainingCrops(self.run_dir)
        ids = [uid for uid in self.studies.labels.index if uid in crops.studies]
        train_ids, val_ids = self.studies.split(ids, fold)
        train = CropFrameDataset(self.studies, crops, train_ids, self.cfg, train=True,
                                 seed=stage_seed(self.train_config.seed, fold))
        if not train.intact:
            raise InputError(self.run_dir / "crops", "no intact vertebra among the training crops")
        val = CropFrameDataset(self.studies, crops, val_ids, self.cfg, train=False) if val_ids else None
        return train, val
