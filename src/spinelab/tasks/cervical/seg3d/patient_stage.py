"""Stage ``patient`` of the seg3d route (1st place's type 2): a study's 7 x 15 crops -> CNN -> BiGRU, one head
per vertebra and one over the whole study for ``patient_overall``; loss ``l1 + l2 / 2`` as in the seed, l1 the
weighted BCE of the seven vertebrae and l2 that of ``patient_overall`` (competition weights in both)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from spinelab.data.fake_fracture import paint_intact
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.data.transforms import SequenceAugment
from spinelab.registry import CERVICAL_TARGETS, CERVICAL_WEIGHTS, VERTEBRAE
from spinelab.tasks.cervical.seg3d.vertebra_stage import TrainingCrops, augment_crops, paint_crop_cleft, weighted_bce
from spinelab.tasks.cervical.studies import CervicalStudies
from spinelab.train.run_folder import load_trained_backbone
from spinelab.train.stage import Stage

__all__ = ["PatientStage", "PatientDataset", "patient_loss"]

log = logging.getLogger("spinelab")
_W_VERTEBRA = CERVICAL_WEIGHTS[VERTEBRAE[0]]
_W_OVERALL = CERVICAL_WEIGHTS["patient_overall"]


def patient_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, found: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """``l1 + l2 / 2``: l1 over the vertebrae the segmentation found, l2 over ``patient_overall``.

    Args:
        outputs: ``vertebra`` ``(B, 7)`` and ``overall`` ``(B,)`` logits.
        target: ``(B, 8)`` in ``CERVICAL_TARGETS`` order.
        found: ``(B, 7)`` bool.
    """
    n = len(VERTEBRAE)
    l1 = weighted_bce(outputs["vertebra"], target[:, :n], *_W_VERTEBRA, keep=found)
    l2 = weighted_bce(outputs["overall"], target[:, n], *_W_OVERALL)
    return {"loss": l1 + l2 / 2, "vertebra_loss": l1, "overall_loss": l2}


class PatientDataset(SeededDataset, Dataset):
    """One item = one study: ``(7, T, C, S, S)`` crops, the found vertebrae and the eight labels; in training,
    each intact vertebra gets a painted cleft with probability ``fake_prob`` (``fake`` marks them)."""

    def __init__(self, studies: CervicalStudies, crops: TrainingCrops, ids: list[str], *, train: bool,
                 augment: bool = True, seed: int = 0, fake_prob: float = 0.0,
                 window: tuple[float, float] = (400.0, 1800.0)) -> None:
        self.studies, self.crops, self.ids, self.seed = studies, crops, list(ids), seed
        self.augment = SequenceAugment(affine=0.3) if train and augment else None
        self.fake_prob, self.window = (fake_prob if train else 0.0), window

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> dict[str, Any]:
        uid = self.ids[k]
        crops = self.crops.get(uid)
        images, target = crops.images, self.studies.targets(uid)
        rng = self.rng() if self.augment is not None or self.fake_prob > 0 else None
        fake = np.zeros(len(VERTEBRAE), dtype=bool)
        if rng is not None and self.fake_prob > 0:
            for i in paint_intact(images, (target[:len(VERTEBRAE)] < 0.5) & crops.found, self.fake_prob, rng,
                                  lambda x: paint_crop_cleft(x, self.window, rng)):
                fake[i] = True
        if self.augment is not None:
            images = augment_crops(self.augment, images, rng)
        return {"image": torch.from_numpy(np.ascontiguousarray(images)), "mask": torch.from_numpy(crops.found),
                "target": torch.from_numpy(target), "fake": torch.from_numpy(fake), "uid": uid}


class PatientStage(Stage):
    """Type 2 of the 1st-place recipe (config section ``patient``)."""

    name = "patient"
    monitor = "val/loss"

    def __init__(self, cfg: Any, run_dir: Any) -> None:
        super().__init__(cfg, run_dir)
        self.studies = CervicalStudies(cfg)

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": self.cfg.crops.span + 1}

    def initialize(self, model: torch.nn.Module, fold: int | None) -> None:
        """The per-crop CNN and its GRU from the same fold's type-1 model (``patient.init_from_vertebra``),
        unless ImageNet weights were given (``model.pretrained_path``)."""
        sec = self.section
        if (sec.init_from_vertebra and sec.model.pretrained_path is None
                and load_trained_backbone(model.encoder, self.run_dir, "vertebra", "encoder.", fold) is None):
            log.info("stage patient starts from random weights: no type-1 model that fits in %s",
                     self.run_dir / "vertebra")

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        crops = TrainingCrops(self.run_dir)
        ids = [uid for uid in self.studies.labels.index if uid in crops.studies]
        train_ids, val_ids = self.studies.split(ids, fold)
        train = PatientDataset(self.studies, crops, train_ids, train=True, augment=self.section.augment,
                               seed=stage_seed(self.train_config.seed, fold),
                               fake_prob=self.section.fake_fracture_prob, window=self.cfg.crops.window)
        val = PatientDataset(self.studies, crops, val_ids, train=False) if val_ids else None
        return train, val

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        mask = batch["mask"]
        if "fake" in batch:
            # Painted vertebrae stay out of the patient head's pooling: patient_overall keeps its real label.
            mask = mask & ~batch["fake"].bool()
        return model(batch["image"], mask=mask)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        keep = batch["mask"].bool()
        if "fake" in batch:
            keep = keep & ~batch["fake"].bool()  # a painted vertebra's image and label disagree
        return patient_loss(outputs, batch["target"].float(), keep)

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        logits = torch.cat([outputs["vertebra"], outputs["overall"][:, None]], 1).float()
        frame = pd.DataFrame(torch.sigmoid(logits).cpu().numpy(), columns=list(CERVICAL_TARGETS))
        frame[[f"true_{t}" for t in CERVICAL_TARGETS]] = batch["target"].cpu().numpy()
        frame.insert(0, "StudyInstanceUID", list(batch["uid"]))
        return frame

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        from spinelab.tasks.cervical.fracture import evaluate_cervical

        return evaluate_cervical(predictions)
