"""Stage ``vertebra`` of the seg3d route (1st place's type 1): one vertebra's 15 crops (5 CT slices + its mask)
-> CNN -> BiGRU -> a vertebra logit and per-slice logits, trained with the competition's vertebra weights.

The crops come from the run folder's crop cache (``crops/``, written by the ``masks`` step from out-of-fold
segmentations), so training reads them instead of cropping every epoch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spinelab.data.fake_fracture import paint_cleft
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.data.transforms import SequenceAugment, adjacent_indices
from spinelab.errors import InputError
from spinelab.registry import CERVICAL_WEIGHTS, VERTEBRAE
from spinelab.tasks.cervical.seg3d.crops import CropCache, VertebraCrops
from spinelab.tasks.cervical.studies import CervicalStudies, canonical_fracture_slices, step_targets
from spinelab.train.run_folder import load_trained_backbone
from spinelab.train.stage import Stage

__all__ = ["VertebraStage", "TrainingCrops", "weighted_bce", "augment_crops", "paint_crop_cleft", "crop_slice_targets",
           "CROPS_INDEX"]

#: the crop cache's table of contents in the run folder: ``{"key": ..., "studies": {uid: {...}}}``
CROPS_INDEX = "crops/index.json"
log = logging.getLogger("spinelab")
# Competition weights of a vertebra target (negative, positive); all seven vertebrae share them.
_W_NEG, _W_POS = CERVICAL_WEIGHTS[VERTEBRAE[0]]


class TrainingCrops:
    """The training studies' cached crops of a run folder (what the ``masks`` step wrote)."""

    def __init__(self, run_dir: str | Path) -> None:
        path = Path(run_dir) / CROPS_INDEX
        if not path.is_file():
            raise InputError(path, "crops of the training studies not found; run the masks step first "
                                   "(spinelab train cervical --stage vertebra)")
        index = json.loads(path.read_text())
        self.cache = CropCache(path.parent, index["key"])
        self.studies: dict[str, dict[str, Any]] = index["studies"]

    def found(self, uid: str) -> list[bool]:
        return list(self.studies[uid]["found"])

    def get(self, uid: str, vertebra: int | None = None) -> VertebraCrops:
        return self.cache.get(uid, vertebra)

    def centre_slices(self, uid: str) -> np.ndarray:
        """``(7, n_slices)`` centre slices of ``uid``'s crops (their metadata alone)."""
        return self.cache.centre_slices(uid)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, w_neg: float, w_pos: float,
                 keep: torch.Tensor | None = None) -> torch.Tensor:
    """BCE weighted like the competition metric (``w_pos`` for positives, ``w_neg`` for negatives), normalised
    by the weights (entries with ``keep`` False are left out)."""
    target = target.float()
    w = target * w_pos + (1 - target) * w_neg
    if keep is not None:
        w = w * keep.float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (w * loss).sum() / w.sum().clamp(min=1e-6)


def augment_crops(augment: SequenceAugment, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random flip/affine/intensity change for one vertebra's crops ``(T, C, H, W)``, the same for all of
    them, or for each vertebra of ``(V, T, C, H, W)`` on its own (each has its own crop box anyway, and OpenCV
    takes at most 128 channels at once); the mask channel moves with the CT and is kept binary."""
    if images.ndim == 5:
        return np.stack([augment_crops(augment, v, rng) for v in images])
    out, _, _ = augment(np.ascontiguousarray(images), rng=rng)
    out[:, -1] = out[:, -1] > 0.5
    return out


def paint_crop_cleft(images: np.ndarray, window: tuple[float, float], rng: np.random.Generator,
                     max_steps: int = 5) -> np.ndarray:
    """Paint one fake fracture (``data.fake_fracture.paint_cleft``) into a vertebra's crops ``(T, C, S, S)`` in
    place: through the bone of the CT channels on 1 to ``max_steps`` consecutive crops; the mask channel (the
    last) is left as it is. Returns the painted crops' indices (none when the crop shows too little bone)."""
    return paint_cleft(images[:, :-1], [tuple(window)], rng, max_steps=max_steps)


def crop_slice_targets(studies: CervicalStudies, uid: str, labels: np.ndarray, vertebra: int, centres: np.ndarray,
                       span: int) -> np.ndarray:
    """Per-crop targets ``(T,)`` of one vertebra from the fracture boxes (``studies.step_targets``): 1 where a
    box of this vertebra marks one of the crop's ``span`` slices, 0 for an intact vertebra, -1 (unknown) for
    a fractured vertebra without boxes. ``labels`` are the study's targets (``studies.targets(uid)``, which the
    caller has already read), ``centres`` the crops' centre slices on the canonical grid."""
    volume = studies.volume(uid)
    slices = np.zeros((len(VERTEBRAE), len(centres), span), dtype=np.int64)
    slices[vertebra] = adjacent_indices(centres, volume.shape[0], span=span)
    boxes = canonical_fracture_slices(studies.fracture_slices.get(uid), volume)
    return step_targets(slices, labels, boxes)[vertebra]


class VertebraDataset(SeededDataset, Dataset):
    """One item = one found vertebra of a study: its ``(T, C, S, S)`` crops, its label and per-crop targets
    (``slice_targets``: the label on every crop, or from the fracture boxes; -1 = unknown). In training an
    intact vertebra gets a painted cleft with probability ``fake_prob`` (``fake`` True, label kept; its
    painted crops, or with the vertebra's label all its crops, become per-crop positives)."""

    def __init__(self, studies: CervicalStudies, crops: TrainingCrops, ids: list[str], *, train: bool,
                 augment: bool = True, seed: int = 0, fake_prob: float = 0.0,
                 window: tuple[float, float] = (400.0, 1800.0),
                 slice_targets: Literal["vertebra", "boxes"] = "vertebra") -> None:
        self.studies, self.crops, self.seed = studies, crops, seed
        self.items = [(uid, i) for uid in ids for i, ok in enumerate(crops.found(uid)) if ok]
        self.augment = SequenceAugment(affine=0.3) if train and augment else None
        self.fake_prob, self.window, self.slice_targets = (fake_prob if train else 0.0), window, slice_targets

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        uid, i = self.items[k]
        crops = self.crops.get(uid, i)
        labels = self.studies.targets(uid)
        images, target = crops.images[0], labels[i]
        if self.slice_targets == "boxes":
            span = images.shape[1] - 1
            per_crop = crop_slice_targets(self.studies, uid, labels, i, crops.slices[i], span)
        else:
            per_crop = np.full(images.shape[0], target, dtype=np.float32)
        rng = self.rng() if self.augment is not None or self.fake_prob > 0 else None
        fake = False
        if rng is not None and self.fake_prob > 0 and target < 0.5 and rng.random() < self.fake_prob:
            painted = paint_crop_cleft(images, self.window, rng)
            fake = len(painted) > 0
            if fake:
                per_crop[painted if self.slice_targets == "boxes" else slice(None)] = 1.0
        if self.augment is not None:
            images = augment_crops(self.augment, images, rng)
        return {"image": torch.from_numpy(np.ascontiguousarray(images)), "target": torch.tensor(target),
                "slice_target": torch.from_numpy(per_crop), "fake": torch.tensor(fake), "uid": uid,
                "vertebra": i}


class VertebraStage(Stage):
    """Type 1 of the 1st-place recipe (config section ``vertebra``)."""

    name = "vertebra"

    def __init__(self, cfg: Any, run_dir: Any) -> None:
        super().__init__(cfg, run_dir)
        self.studies = CervicalStudies(cfg)

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": self.cfg.crops.span + 1}

    def initialize(self, model: torch.nn.Module, fold: int | None) -> None:
        """With ``frames.enabled`` (and no ImageNet weights given), the per-crop CNN starts from the same fold's
        frame pre-training on single crops (stage ``frames``)."""
        if not self.cfg.frames.enabled or self.section.model.pretrained_path is not None:
            return
        if load_trained_backbone(model.encoder.backbone, self.run_dir, "frames", "backbone.", fold) is None:
            log.warning("frames.enabled but no frame model fits type 1 in %s", self.run_dir / "frames")

    def training_ids(self, crops: TrainingCrops) -> list[str]:
        """Labelled studies that have crops."""
        return [uid for uid in self.studies.labels.index if uid in crops.studies]

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        crops = TrainingCrops(self.run_dir)
        train_ids, val_ids = self.studies.split(self.training_ids(crops), fold)
        aug = self.section.augment
        train = VertebraDataset(self.studies, crops, train_ids, train=True, augment=aug,
                                seed=stage_seed(self.train_config.seed, fold),
                                fake_prob=self.section.fake_fracture_prob, window=self.cfg.crops.window,
                                slice_targets=self.section.slice_targets)
        val = VertebraDataset(self.studies, crops, val_ids, train=False) if val_ids else None
        return train, val

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["image"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        target = batch["target"].float()
        fake = batch["fake"].bool() if "fake" in batch else torch.zeros_like(target, dtype=torch.bool)
        # A painted vertebra shows a fracture under an intact label: the vertebra loss leaves it out.
        vertebra = weighted_bce(outputs["vertebra"], target, _W_NEG, _W_POS, keep=~fake)
        weight = self.section.slice_loss_weight
        if not weight:
            return {"loss": vertebra, "vertebra_loss": vertebra}
        per_crop = batch["slice_target"].float()  # -1: unknown (a fractured vertebra without boxes)
        per_slice = weighted_bce(outputs["slice"], per_crop.clamp(min=0), _W_NEG, _W_POS, keep=per_crop >= 0)
        return {"loss": vertebra + weight * per_slice, "vertebra_loss": vertebra, "slice_loss": per_slice}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        return pd.DataFrame({"StudyInstanceUID": list(batch["uid"]),
                             "vertebra": [VERTEBRAE[int(i)] for i in batch["vertebra"]],
                             "probability": torch.sigmoid(outputs["vertebra"].float()).cpu().numpy(),
                             "target": batch["target"].cpu().numpy()})

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        """Vertebra-level AUC and the competition-weighted log loss of the vertebra targets."""
        from sklearn.metrics import roc_auc_score

        y, p = predictions["target"].to_numpy(), predictions["probability"].to_numpy().clip(1e-6, 1 - 1e-6)
        w = np.where(y > 0.5, _W_POS, _W_NEG)
        out = {"vertebra_logloss": float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())}
        if 0 < y.sum() < len(y):
            out["auc_vertebra"] = float(roc_auc_score(y, p))
        return out
