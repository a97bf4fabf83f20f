"""Stage 2: is each vertebra fractured? Per vertebra, ``n_slices`` evenly spaced slices inside its
predicted range, cropped to the study box, grouped into 2.5D triplets; CNN -> BiGRU -> attention pooling
per vertebra and a patient-level head over the seven embeddings (trantuan / 2nd-place recipe).

The loss is the competition's weighted BCE, normalised per study, plus a per-step BCE whose targets come from
the fracture boxes (3rd place's slice-level labels) and, in training, from clefts painted into intact
vertebrae (7th place's fake fractures). A few hundred labelled positives are too few for a CNN to learn what
a fracture looks like from study labels alone; these two terms say where it is."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spinelab.config.schema import CervicalConfig
from spinelab.data.fake_fracture import paint_cleft, paint_intact
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.data.transforms import SequenceAugment, evenly_spaced
from spinelab.errors import InputError
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, CERVICAL_WEIGHTS, VERTEBRAE
from spinelab.tasks.cervical.slices import stack_images
from spinelab.tasks.cervical.studies import CervicalStudies, canonical_fracture_slices, step_targets
from spinelab.train.run_folder import load_trained_backbone
from spinelab.train.stage import Stage

log = logging.getLogger("spinelab")

__all__ = ["FractureDataset", "FractureInputs", "FractureStage", "fracture_inputs", "step_images", "step_slices",
           "known_step_bce", "competition_bce", "fake_fracture_ignore", "read_localization"]


class FractureInputs(NamedTuple):
    """Stage-2 input of one study."""

    #: ``(7, steps, 3 * n_windows, S, S)`` float32 images, steps = ``n_slices // 3``.
    images: np.ndarray
    #: ``(7,)`` bool, the vertebrae stage 1 found.
    found: np.ndarray
    #: ``(7, steps, 3)`` array indices of the slices behind each step.
    slices: np.ndarray


def step_slices(volume: Volume, summary: dict[str, Any], cfg: CervicalConfig, *,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Array indices of the slices behind each stage-2 step: ``(7, steps, 3)``, steps = ``n_slices // 3``.

    Per vertebra, ``n_slices`` evenly spaced slices inside its stage-1 range, head to feet, in triplets.

    Args:
        volume: the CT study in the canonical orientation (``studies.prepare_cervical_volume``).
        summary: stage-1 output of ``summarize_localization`` (ranges).
        cfg: config (stage2: n_slices, range_jitter).
        rng: when given, range ends are jittered (training-time augmentation).
    """
    s2 = cfg.stage2
    depth = volume.shape[0]
    steps = s2.n_slices // 3
    centres = []
    for v in VERTEBRAE:
        start, end = summary["ranges"][v]
        if rng is not None and s2.range_jitter:
            length = end - start + 1
            start += int(round(rng.uniform(-s2.range_jitter, s2.range_jitter) * length))
            end += int(round(rng.uniform(-s2.range_jitter, s2.range_jitter) * length))
            start, end = int(np.clip(start, 0, depth - 1)), int(np.clip(end, 0, depth - 1))
            start, end = min(start, end), max(start, end)
        pos = evenly_spaced(start, end, s2.n_slices)
        centres.append(pos[:steps * 3])
    return np.stack(centres).reshape(len(VERTEBRAE), steps, 3)


def step_images(volume: Volume, slices: np.ndarray, summary: dict[str, Any], cfg: CervicalConfig) -> np.ndarray:
    """Stage-2 step images for ``slices`` ``(..., 3)``: ``(..., 3 * n_windows, S, S)`` float32 in [0, 1],
    cropped to the study box; channels slice-major, window-minor."""
    s2 = cfg.stage2
    images = stack_images(volume, slices.reshape(-1), windows=s2.windows, size=s2.image_size,
                          box=summary["box"], span=1)
    return images.reshape(*slices.shape[:-1], -1, s2.image_size, s2.image_size).astype(np.float32)


def fracture_inputs(volume: Volume, summary: dict[str, Any], cfg: CervicalConfig, *,
                    rng: np.random.Generator | None = None) -> FractureInputs:
    """Stage-2 input of one study: per vertebra, ``n_slices`` evenly spaced slices grouped into triplets.

    Args:
        volume: the CT study.
        summary: stage-1 output of ``summarize_localization`` (ranges, box, missing).
        cfg: config (stage2: n_slices, image_size, windows, range_jitter).
        rng: when given, range ends are jittered (training-time augmentation).
    """
    slices = step_slices(volume, summary, cfg, rng=rng)
    found = np.array([v not in summary.get("missing", []) for v in VERTEBRAE], dtype=bool)
    return FractureInputs(step_images(volume, slices, summary, cfg), found, slices)


def known_step_bce(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE over the steps whose target is known (``target >= 0``; -1 = unknown) and ``keep`` is True."""
    known = target >= 0 if keep is None else (target >= 0) & keep
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float().clamp(min=0), reduction="none")
    return (bce * known).sum() / known.sum().clamp(min=1)


def read_localization(run_dir: Any) -> dict[str, dict[str, Any]]:
    """Stage-1 summaries of the training studies written by the pipeline (``localization.json``)."""
    import json
    from pathlib import Path

    path = Path(run_dir) / "localization.json"
    if not path.is_file():
        raise InputError(path, "stage-1 localisation of the training studies not found; train stage1 first")
    return json.loads(path.read_text())


class FractureDataset(SeededDataset, Dataset):
    """One item = one study: seven vertebra sequences and the eight study labels.

    Training items jitter the ranges, paint fake fractures and augment, with random numbers from the generator
    seeded by ``seed``; ``augment=False`` turns all three off (the item is then ``fracture_inputs``' input).
    """

    def __init__(self, studies: CervicalStudies, ids: list[str], cfg: CervicalConfig,
                 localization: dict[str, dict[str, Any]], *, train: bool, seed: int = 0,
                 augment: bool | None = None) -> None:
        self.studies, self.ids, self.cfg, self.loc, self.train = studies, list(ids), cfg, localization, train
        self.seed = seed
        on = train if augment is None else augment
        self.augment = SequenceAugment(affine=0.3) if on else None
        self.fake_prob = cfg.stage2.fake_fracture_prob if on else 0.0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        uid = self.ids[i]
        vol = self.studies.volume(uid)
        rng = self.rng() if self.augment is not None else None
        images, found, slices = fracture_inputs(vol, self.loc[uid], self.cfg, rng=rng)
        target = self.studies.targets(uid)
        steps = step_targets(slices, target, canonical_fracture_slices(self.studies.fracture_slices.get(uid), vol))
        fake = np.zeros(len(VERTEBRAE), dtype=bool)
        if rng is not None and self.fake_prob > 0:
            windows = self.cfg.stage2.windows
            for i, painted in paint_intact(images, (target[:len(VERTEBRAE)] < 0.5) & found, self.fake_prob, rng,
                                           lambda x: paint_cleft(x, windows, rng)).items():
                steps[i, painted] = 1.0
                fake[i] = True
        if self.augment is not None:
            v, t = images.shape[:2]
            flat, _, _ = self.augment(images.reshape(v * t, *images.shape[2:]), rng=rng)
            images = flat.reshape(images.shape)
        return {"image": torch.from_numpy(images), "mask": torch.from_numpy(found),
                "target": torch.from_numpy(target), "step_target": torch.from_numpy(steps),
                "fake": torch.from_numpy(fake), "uid": uid}


_W_NEG = torch.tensor([CERVICAL_WEIGHTS[t][0] for t in CERVICAL_TARGETS])
_W_POS = torch.tensor([CERVICAL_WEIGHTS[t][1] for t in CERVICAL_TARGETS])


def competition_bce(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """The RSNA 2022 metric as a loss: weighted BCE over (C1..C7, overall), normalised per study.

    Args:
        logits, target: ``(B, 8)`` in registry order.
        ignore: optional ``(B, 8)`` bool, entries left out (their weight is 0; the normalisation follows).
    """
    w = target * _W_POS.to(logits) + (1 - target) * _W_NEG.to(logits)
    if ignore is not None:
        w = w * (~ignore)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return ((w * loss).sum(-1) / w.sum(-1).clamp(min=1e-6)).mean()


def fake_fracture_ignore(fake: torch.Tensor) -> torch.Tensor:
    """``(B, 8)`` entries the study-level loss skips: vertebrae with a painted fracture (the image shows a
    fracture, the label says intact). ``patient_overall`` keeps its real label because the patient head
    does not see painted vertebrae (``FractureStage.forward`` masks them out of its pooling)."""
    return torch.cat([fake.bool(), torch.zeros_like(fake[:, :1], dtype=torch.bool)], dim=1)


class FractureStage(Stage):
    """Stage 2 of the cervical pipeline."""

    name = "stage2"
    # The per-step term is auxiliary: the best checkpoint is the one with the best competition loss.
    monitor = "val/study_loss"

    def __init__(self, cfg: CervicalConfig, run_dir: Any) -> None:
        super().__init__(cfg, run_dir)
        self.studies = CervicalStudies(cfg)

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": 3 * len(self.cfg.stage2.windows), "overall": self.cfg.stage2.overall}

    def initialize(self, model: torch.nn.Module, fold: int | None) -> None:
        """Start the outputs at the training folds' rates (``stage2.init_prior``) and the CNN from the same
        fold's frame pre-training (``frames.enabled``), else from its stage-1 backbone
        (``stage2.init_from_stage1``) unless ImageNet weights were given (``model.pretrained_path``)."""
        if self.cfg.stage2.init_prior:
            train_ids, _ = self.studies.split(list(self.studies.labels.index), fold)
            model.set_prior(self.studies.labels.loc[train_ids, list(CERVICAL_TARGETS)].mean().tolist())
        backbone = model.encoder.backbone
        if self.cfg.frames.enabled:
            if load_trained_backbone(backbone, self.run_dir, "frames", "backbone.", fold) is not None:
                return
            log.warning("frames.enabled but no frame model fits stage 2 in %s", self.run_dir / "frames")
        s2 = self.cfg.stage2
        if (s2.init_from_stage1 and s2.model.pretrained_path is None
                and load_trained_backbone(backbone, self.run_dir, "stage1", "encoder.backbone.", fold) is None):
            log.info("stage 2 starts from random weights: no stage-1 CNN that fits in %s", self.run_dir / "stage1")

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        loc = read_localization(self.run_dir)
        ids = [uid for uid in self.studies.labels.index if uid in loc]
        train_ids, val_ids = self.studies.split(ids, fold)
        train = FractureDataset(self.studies, train_ids, self.cfg, loc, train=True,
                                seed=stage_seed(self.train_config.seed, fold))
        val = FractureDataset(self.studies, val_ids, self.cfg, loc, train=False) if val_ids else None
        return train, val

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        mask = batch["mask"]
        if "fake" in batch:
            # Painted vertebrae stay out of the patient-level pooling, so patient_overall keeps its real label
            # without ignoring it for most negative studies (which would push the patient head upwards).
            mask = mask & ~batch["fake"].bool()
        return model(batch["image"], mask=mask)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = torch.cat([outputs["vertebra"], outputs["overall"][:, None]], dim=1).float()
        ignore = fake_fracture_ignore(batch["fake"]) if "fake" in batch else None
        study = competition_bce(logits, batch["target"].float(), ignore)
        weight = self.cfg.stage2.step_loss_weight
        if not weight or "step_target" not in batch:
            return {"loss": study, "study_loss": study}
        target = batch["step_target"].float()
        step = known_step_bce(outputs["step"], target, batch["mask"][:, :, None].bool())
        return {"loss": study + weight * step, "study_loss": study, "step_loss": step}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        return study_prediction_rows(outputs, batch)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        return evaluate_cervical(predictions)


def study_prediction_rows(outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
    """One row per study of a batch: the C1-C7 and patient_overall probabilities and their ``true_`` labels (what
    ``evaluate_cervical`` reads), from ``vertebra`` and ``overall`` logits."""
    probs = torch.sigmoid(torch.cat([outputs["vertebra"], outputs["overall"][:, None]], 1).float())
    frame = pd.DataFrame(probs.cpu().numpy(), columns=list(CERVICAL_TARGETS))
    frame[[f"true_{t}" for t in CERVICAL_TARGETS]] = batch["target"].cpu().numpy()
    frame.insert(0, "StudyInstanceUID", list(batch["uid"]))
    return frame


def evaluate_cervical(predictions: pd.DataFrame) -> dict[str, float]:
    """Competition metric and AUCs from rows with predicted and ``true_`` columns."""
    from sklearn.metrics import roc_auc_score

    from spinelab.metrics import cervical_score, cervical_submission_frame

    truth = predictions[["StudyInstanceUID"] + [f"true_{t}" for t in CERVICAL_TARGETS]].copy()
    truth.columns = ["StudyInstanceUID", *CERVICAL_TARGETS]
    probs = predictions.set_index("StudyInstanceUID")[list(CERVICAL_TARGETS)]
    out = {"competition_score": float(cervical_score(truth, cervical_submission_frame(probs)))}
    y_v = truth[list(VERTEBRAE)].to_numpy().ravel()
    p_v = probs[list(VERTEBRAE)].to_numpy().ravel()
    if 0 < y_v.sum() < y_v.size:
        out["auc_vertebra"] = float(roc_auc_score(y_v, p_v))
    y_o = truth["patient_overall"].to_numpy()
    if 0 < y_o.sum() < y_o.size:
        out["auc_overall"] = float(roc_auc_score(y_o, probs["patient_overall"].to_numpy()))
    return out
