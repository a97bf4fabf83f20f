"""Optional stage ``frames`` of the sequence route: the slice model's CNN pre-trained on single slice images.

Stage ``slices`` learns from windows of consecutive slices whose fracture targets are mostly pseudo-labels
(stage-1 ratio x study label), and only a few percent of the slices show a cleft. As in the slice route's frame
pre-training (``tasks.cervical.frames``), every item here is one 2.5D slice image exactly as stage ``slices``
builds it (``inputs.slice_images``), drawn balanced: with probability ``positive_share`` a slice that a fracture
box marks, ``fake_share`` a slice of an intact study with a painted cleft, otherwise a slice of an intact study.
Each seed's slice model then starts its CNN from this one (``SliceSequenceStage.initialize``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spinelab.config.schema import ModelConfig
from spinelab.data.fake_fracture import paint_cleft
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.data.transforms import SequenceAugment
from spinelab.errors import InputError
from spinelab.tasks.cervical.frames import FrameStage, draw_frame
from spinelab.tasks.cervical.sequence.inputs import slice_images, study_positions
from spinelab.tasks.cervical.sequence.labels import read_slice_labels
from spinelab.tasks.cervical.studies import CervicalStudies, canonical_fracture_slices
from spinelab.train.run_folder import load_trained_backbone

__all__ = ["SliceFrameDataset", "SliceFrameStage"]


class SliceFrameDataset(SeededDataset, Dataset):
    """One item = one slice image of a study's z-range (every ``slices.slice_step``-th slice) and whether it
    shows a fracture.

    Training items are drawn at random, ``frames.frames_per_epoch`` per epoch, by the ``frames`` shares:
    positives are the slices that a fracture box marks, negatives the slices of intact studies (every label 0).
    Validation items are every route slice of the held-out studies: target 1 on a box, 0 in an intact study or
    off the boxes of a boxed one, -1 (unknown) in a fractured study without boxes; each is attributed to the
    vertebra of its highest stage-1 ratio, so that vertebrae can be scored by their highest slice.
    """

    def __init__(self, studies: CervicalStudies, ids: list[str], cfg: Any, run_dir: Any,
                 localization: dict[str, Any], *, train: bool, seed: int = 0) -> None:
        self.studies, self.cfg, self.loc, self.train, self.seed = studies, cfg, localization, train, seed
        self.positive: list[tuple[str, int]] = []
        self.intact: list[tuple[str, int]] = []
        self.items: list[tuple[str, int, float, int, float]] = []  # uid, slice, target, vertebra, its label
        for uid in ids:
            labels = read_slice_labels(run_dir, uid)
            positions = study_positions(labels["z_range"], cfg.slices.slice_step)
            targets = studies.targets(uid)
            stored = studies.fracture_slices.get(uid)
            # only a study with boxes needs its volume here (the boxes' slices on its canonical grid)
            boxes = canonical_fracture_slices(stored, studies.volume(uid)) if stored else None
            boxed = set().union(*boxes.values()) if boxes else set()
            intact = not targets.any()
            per_slice = np.array([1.0 if z in boxed else 0.0 if intact or boxed else -1.0 for z in positions])
            self.positive += [(uid, int(z)) for z, t in zip(positions, per_slice, strict=True) if t > 0.5]
            if intact:
                self.intact += [(uid, int(z)) for z in positions]
            vertebra = np.asarray(labels["ratio"], np.float32)[positions].argmax(axis=1)
            self.items += [(uid, int(z), float(t), int(v), float(targets[v]))
                           for z, t, v in zip(positions, per_slice, vertebra, strict=True)]
        self.augment = SequenceAugment(affine=0.3) if train and cfg.slices.augment else None

    def __len__(self) -> int:
        return self.cfg.frames.frames_per_epoch if self.train else len(self.items)

    def _image(self, uid: str, z: int) -> np.ndarray:
        return slice_images(self.studies.volume(uid), np.array([z]), self.loc[uid]["box"], self.cfg)[0]

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not self.train:
            uid, z, target, vertebra, label = self.items[k]
            return {"image": torch.from_numpy(self._image(uid, z)), "target": torch.tensor(target), "uid": uid,
                    "vertebra": vertebra, "step": z, "fractured": torch.tensor(label)}
        rng = self.rng()
        kind, (uid, z) = draw_frame(rng, self.cfg.frames, self.positive, self.intact)
        image, target = self._image(uid, z), float(kind == "positive")
        if kind == "fake":
            target = float(len(paint_cleft(image[None], self.cfg.slices.windows, rng, max_steps=1)) > 0)
        if self.augment is not None:
            image = self.augment(image[None], rng=rng)[0][0]
        return {"image": torch.from_numpy(np.ascontiguousarray(image)), "target": torch.tensor(target)}


class SliceFrameStage(FrameStage):
    """Frame pre-training of the sequence route's slice CNN (``frames`` section; run folder ``frames/``).

    Loss, predictions and held-out metrics are the slice route's frame stage's (slice AUC, and vertebra AUC from
    each vertebra's highest slice). The CNN starts from the same fold's stage-1 backbone when it fits.
    """

    @property
    def model_config(self) -> ModelConfig:
        """The ``frames.model`` section, with the first seed's slice backbone when unset."""
        mc = self.cfg.frames.model
        backbone = self.cfg.slices.backbone_of(0)
        return mc if mc.backbone or backbone is None else mc.model_copy(update={"backbone": backbone})

    def model_kwargs(self) -> dict[str, Any]:
        s = self.cfg.slices
        return {"in_chans": s.span * len(s.windows)}

    def initialize(self, model: torch.nn.Module, fold: int | None) -> None:
        if self.model_config.pretrained_path is None:
            load_trained_backbone(model.backbone, self.run_dir, "stage1", "encoder.backbone.", fold)

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        from spinelab.tasks.cervical.fracture import read_localization

        loc = read_localization(self.run_dir)
        ids = [uid for uid in self.studies.labels.index if uid in loc]
        train_ids, val_ids = self.studies.split(ids, fold)
        train = SliceFrameDataset(self.studies, train_ids, self.cfg, self.run_dir, loc, train=True,
                                  seed=stage_seed(self.train_config.seed, fold))
        if not train.intact:
            raise InputError(self.run_dir / "slice_labels", "no intact study to train the frames on")
        val = (SliceFrameDataset(self.studies, val_ids, self.cfg, self.run_dir, loc, train=False)
               if val_ids else None)
        return train, val
