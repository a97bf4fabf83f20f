"""Stage ``slices`` of the sequence route: windows of consecutive slices -> per-slice vertebra and fracture.

One item is a window of ``slices.window_len`` consecutive route slices (``inputs.study_positions``) of one study:
random starts in training (``windows_per_study`` per study and epoch), every window of ``window_stride`` over the
held-out studies. Targets per slice: the stage-1 ratios and the fracture pseudo-labels of step ``labels``.
Loss: BCE of the ratios plus BCE of the fractures with positives up-weighted (``pos_weight``). Validation: the
held-out slices' fracture probabilities (overlaps averaged), each vertebra's highest slice against the study's
label (``auc_vertebra``).

Each seed of ``slices.seeds`` is one stage, ``slices_s<seed>``, with its own backbone (``slices.backbones``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spinelab.config.schema import ModelConfig, TrainConfig
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.data.transforms import SequenceAugment
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.sequence.inputs import slice_images, study_positions, window_starts
from spinelab.tasks.cervical.sequence.labels import read_slice_labels
from spinelab.tasks.cervical.studies import CervicalStudies
from spinelab.train.run_folder import load_trained_backbone
from spinelab.train.stage import Stage

__all__ = ["SliceWindowDataset", "SliceSequenceStage", "slice_stage_name", "slice_stages"]

log = logging.getLogger("spinelab")


def slice_stage_name(seed: int) -> str:
    """The run-folder name of one seed's slice model."""
    return f"slices_s{seed}"


class SliceWindowDataset(SeededDataset, Dataset):
    """Windows of one or more studies (see the module docstring); ``train`` draws random starts and augments."""

    def __init__(self, studies: CervicalStudies, ids: list[str], cfg: Any, run_dir: Any, localization: dict[str, Any],
                 *, train: bool, seed: int = 0) -> None:
        self.studies, self.cfg, self.run_dir, self.loc, self.train = studies, cfg, run_dir, localization, train
        self.seed = seed
        s = cfg.slices
        self.labels = {uid: read_slice_labels(run_dir, uid) for uid in ids}
        self.positions = {uid: study_positions(lab["z_range"], s.slice_step) for uid, lab in self.labels.items()}
        if train:
            self.items = [(uid, -1) for uid in ids for _ in range(s.windows_per_study)]
        else:
            self.items = [(uid, st) for uid in ids
                          for st in window_starts(len(self.positions[uid]), s.window_len, s.window_stride)]
        self.augment = SequenceAugment(affine=0.3) if train and s.augment else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        uid, start = self.items[i]
        s = self.cfg.slices
        pos = self.positions[uid]
        length = s.window_len
        rng = self.rng() if self.train else None
        if start < 0:
            start = int(rng.integers(0, max(0, len(pos) - length) + 1)) if rng is not None else 0
        centres = pos[start:start + length]
        vol = self.studies.volume(uid)
        images = slice_images(vol, centres, self.loc[uid]["box"], self.cfg)
        if self.augment is not None:
            images = self.augment(images, rng=rng)[0]
        lab = self.labels[uid]
        n = len(centres)
        valid = np.zeros(length, np.float32)
        valid[:n] = 1

        def pad(a: np.ndarray) -> np.ndarray:
            out = np.zeros((length, *a.shape[1:]), dtype=np.float32)
            out[:n] = a
            return out

        return {"image": torch.from_numpy(pad(images)), "ratio": torch.from_numpy(pad(lab["ratio"][centres])),
                "fracture": torch.from_numpy(pad(lab["fracture"][centres])), "valid": torch.from_numpy(valid),
                "index": torch.from_numpy(np.pad(centres, (0, length - n), constant_values=-1)),
                "label": torch.from_numpy(self.studies.targets(uid)), "uid": uid}


class SliceSequenceStage(Stage):
    """One seed's slice model (``slices_s<seed>``); section ``slices``."""

    monitor = "val/loss"

    def __init__(self, cfg: Any, run_dir: Any, seed: int | None = None) -> None:
        super().__init__(cfg, run_dir)
        seeds = cfg.slices.seeds
        self.seed = seeds[0] if seed is None else seed
        self.index = seeds.index(self.seed) if self.seed in seeds else 0
        self.name = slice_stage_name(self.seed)
        self.studies = CervicalStudies(cfg)

    @property
    def section(self) -> Any:
        return self.cfg.slices

    @property
    def model_config(self) -> ModelConfig:
        """``slices.model`` with this seed's backbone."""
        mc = self.section.model
        backbone = self.section.backbone_of(self.index)
        return mc if backbone is None else mc.model_copy(update={"backbone": backbone})

    @property
    def train_config(self) -> TrainConfig:
        """``slices.train`` with this stage's seed (each ensemble member starts and draws differently)."""
        return self.section.train.model_copy(update={"seed": self.section.train.seed + self.seed})

    def model_kwargs(self) -> dict[str, Any]:
        s = self.cfg.slices
        return {"in_chans": s.span * len(s.windows)}

    def initialize(self, model: torch.nn.Module, fold: int | None) -> None:
        """With ``frames.enabled`` (and no ImageNet weights given), the CNN starts from the same fold's frame
        pre-training on single slices (stage ``frames``), when this seed's backbone is the frame model's."""
        if not self.cfg.frames.enabled or self.model_config.pretrained_path is not None:
            return
        if load_trained_backbone(model.encoder.backbone, self.run_dir, "frames", "backbone.", fold) is None:
            log.warning("%s: frames.enabled but no frame model fits in %s", self.name, self.run_dir / "frames")

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        from spinelab.tasks.cervical.fracture import read_localization

        loc = read_localization(self.run_dir)
        ids = [u for u in self.studies.labels.index if u in loc]
        train_ids, val_ids = self.studies.split(ids, fold)
        seed = stage_seed(self.train_config.seed, fold)
        train = SliceWindowDataset(self.studies, train_ids, self.cfg, self.run_dir, loc, train=True, seed=seed)
        val = SliceWindowDataset(self.studies, val_ids, self.cfg, self.run_dir, loc, train=False) if val_ids else None
        return train, val

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["image"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        s = self.cfg.slices
        valid = batch["valid"][..., None]
        denom = (valid.sum() * len(VERTEBRAE)).clamp(min=1)
        ratio = F.binary_cross_entropy_with_logits(outputs["ratio"].float(), batch["ratio"], reduction="none")
        ratio = (ratio * valid).sum() / denom
        target = batch["fracture"]
        weight = 1 + (s.pos_weight - 1) * target
        frac = F.binary_cross_entropy_with_logits(outputs["fracture"].float(), target, reduction="none")
        frac = (frac * weight * valid).sum() / denom
        return {"loss": s.ratio_weight * ratio + s.fracture_weight * frac, "ratio_loss": ratio, "fracture_loss": frac}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        prob = torch.sigmoid(outputs["fracture"].float()).cpu().numpy()
        rows = []
        for b, uid in enumerate(batch["uid"]):
            keep = batch["valid"][b].bool().cpu().numpy()
            frame = pd.DataFrame(prob[b][keep], columns=[f"pred_{v}" for v in VERTEBRAE])
            frame.insert(0, "index", batch["index"][b].cpu().numpy()[keep])
            frame.insert(0, "StudyInstanceUID", uid)
            frame[[f"label_{v}" for v in VERTEBRAE]] = batch["label"][b].cpu().numpy()[:len(VERTEBRAE)]
            rows.append(frame)
        return pd.concat(rows, ignore_index=True)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        return evaluate_slices(predictions)


def evaluate_slices(predictions: pd.DataFrame) -> dict[str, float]:
    """Vertebra AUC from each vertebra's highest slice (overlapping windows averaged per slice first)."""
    from sklearn.metrics import roc_auc_score

    pred_cols = [f"pred_{v}" for v in VERTEBRAE]
    lab_cols = [f"label_{v}" for v in VERTEBRAE]
    per_slice = predictions.groupby(["StudyInstanceUID", "index"])[pred_cols + lab_cols].mean()
    per_study = per_slice.groupby(level=0).max()
    y = per_study[lab_cols].to_numpy().ravel()
    p = per_study[pred_cols].to_numpy().ravel()
    out: dict[str, float] = {"max_slice_prob": float(p.mean()) if p.size else 0.0}
    if 0 < y.sum() < y.size:
        out["auc_vertebra"] = float(roc_auc_score(y, p))
    return out


def slice_stages(cfg: Any, run_dir: Any, context: Any = None) -> list[SliceSequenceStage]:
    """The ``slices`` step: one stage per seed."""
    return [SliceSequenceStage(cfg, run_dir, seed) for seed in cfg.slices.seeds]
