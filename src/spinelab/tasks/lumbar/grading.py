"""Stage 2: grade every (condition, level). Crops around the level points in a sagittal series (T1 for the
foramina, T2/STIR otherwise) and in the axial slice nearest the point, one CNN for every crop, condition and
level embeddings, and sagittal + axial fusion (``models.lumbar.RoiGrader``).

Training crops sit on the labelled points (jittered by ``point_jitter_mm``); inference crops on the stage-1
points. The loss is the competition's: cross-entropy weighted 1/2/4 by the true grade plus the
any-severe-spinal term. The left-right flip swaps the left and right items (and their labels), mirrors the
axial crops and reverses the sagittal slice order.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spinelab.config.schema import LumbarConfig, ModelConfig, TrainConfig
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.registry import LUMBAR_CONDITIONS, LUMBAR_GRADES, LUMBAR_LEVELS, lumbar_columns
from spinelab.tasks.lumbar.images import crop_at_world
from spinelab.tasks.lumbar.points import axial_slice_for
from spinelab.tasks.lumbar.studies import LumbarStudies, LumbarStudy
from spinelab.train.stage import Stage

__all__ = ["complete_anchors", "grading_inputs", "flip_items", "GradingDataset", "GradingStage",
           "lumbar_loss", "evaluate_lumbar_rows", "ITEM_CONDITION", "ITEM_LEVEL"]

N_LEVELS = len(LUMBAR_LEVELS)
ITEM_CONDITION = np.repeat(np.arange(len(LUMBAR_CONDITIONS)), N_LEVELS)
ITEM_LEVEL = np.tile(np.arange(N_LEVELS), len(LUMBAR_CONDITIONS))
_MIRROR = {"left": "right", "right": "left"}
_SWAP = [LUMBAR_CONDITIONS.index(_MIRROR[c.split("_", 1)[0]] + "_" + c.split("_", 1)[1])
         if c.split("_", 1)[0] in _MIRROR else i for i, c in enumerate(LUMBAR_CONDITIONS)]
#: item permutation of a left-right flip
FLIP_ORDER = np.array([_SWAP[c] * N_LEVELS + lv for c, lv in zip(ITEM_CONDITION, ITEM_LEVEL, strict=True)])
_SPINAL = LUMBAR_CONDITIONS.index("spinal_canal_stenosis")
SPINAL_ITEMS = np.flatnonzero(ITEM_CONDITION == _SPINAL)


def complete_anchors(anchors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fill missing points from the others at the same level: spinal from subarticular then foraminal
    means; foraminal and subarticular from spinal. Values ``(5, 3)`` world, NaN where still unknown."""
    nan = np.full((N_LEVELS, 3), np.nan)
    out = {c: np.array(anchors.get(c, nan), dtype=np.float64) for c in LUMBAR_CONDITIONS}
    spinal = out["spinal_canal_stenosis"]
    for group in ("subarticular_stenosis", "neural_foraminal_narrowing"):
        pair = np.stack([out[f"left_{group}"], out[f"right_{group}"]])
        with warnings.catch_warnings():  # all-NaN levels stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(pair, axis=0)
        holes = ~np.isfinite(spinal).all(axis=1)
        spinal[holes] = mean[holes]
    for c in LUMBAR_CONDITIONS:
        holes = ~np.isfinite(out[c]).all(axis=1)
        out[c][holes] = spinal[holes]
    return out


def grading_inputs(study: LumbarStudy, anchors: dict[str, np.ndarray], cfg: LumbarConfig
                   ) -> dict[str, np.ndarray]:
    """Stage-2 input of one study for the 25 items in ``lumbar_columns()`` order.

    Args:
        study: oriented volumes.
        anchors: ``{condition: (5, 3)}`` world points (completed with ``complete_anchors``).
        cfg: config (stage2: crop_size, crop_mm, in_slices).

    Returns:
        ``sag`` and ``axial`` ``(25, in_slices, S, S)`` float32, ``mask`` ``(25, 2)`` bool (view present),
        ``condition`` and ``level`` ``(25,)`` int64.
    """
    s2 = cfg.stage2
    n = len(ITEM_CONDITION)
    sag = np.zeros((n, s2.in_slices, s2.crop_size, s2.crop_size), np.float32)
    axial = np.zeros_like(sag)
    mask = np.zeros((n, 2), bool)
    kw = {"span": s2.in_slices, "size": s2.crop_size, "crop_mm": s2.crop_mm}
    for i, (ci, li) in enumerate(zip(ITEM_CONDITION, ITEM_LEVEL, strict=True)):
        cond = LUMBAR_CONDITIONS[ci]
        point = anchors[cond][li]
        vol = study.first("sag_t1" if "foraminal" in cond else "sag_t2")
        if vol is not None:
            sag[i], mask[i, 0] = crop_at_world(vol, point, window=study.window(vol), **kw)
        found = axial_slice_for(study, point)
        if found is not None:
            ax = study.series["axial"][found[0]]
            axial[i], mask[i, 1] = crop_at_world(ax, point, window=study.window(ax), **kw)
    return {"sag": sag, "axial": axial, "mask": mask, "condition": ITEM_CONDITION.copy(),
            "level": ITEM_LEVEL.copy()}


def flip_items(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The left-right mirror of ``grading_inputs``: left/right items swapped, axial crops mirrored,
    sagittal slice order reversed (condition and level ids stay with their slots)."""
    out = dict(inputs)
    out["sag"] = inputs["sag"][FLIP_ORDER][:, ::-1].copy()
    out["axial"] = inputs["axial"][FLIP_ORDER][..., ::-1].copy()
    out["mask"] = inputs["mask"][FLIP_ORDER]
    for key in ("target",):
        if key in inputs:
            out[key] = inputs[key][FLIP_ORDER]
    return out


class GradingDataset(SeededDataset, Dataset):
    """One item = one study: the 25 crops pairs, masks, embeddings ids and grades (-1 unlabelled).

    Training items jitter the points, flip and scale the intensity, with random numbers from the generator
    seeded by ``seed``; ``augment=False`` turns this off (the item is then ``grading_inputs``' input).
    """

    def __init__(self, studies: LumbarStudies, ids: list[str], cfg: LumbarConfig, *, train: bool,
                 seed: int = 0, augment: bool | None = None) -> None:
        self.studies, self.ids, self.cfg, self.train = studies, list(ids), cfg, train
        self.seed = seed
        self.augment = train if augment is None else augment

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sid = self.ids[i]
        study = self.studies.study(sid)
        rng = self.rng() if self.augment else None
        anchors = {c: self.studies.level_points(sid, c) for c in LUMBAR_CONDITIONS}
        if rng is not None and self.cfg.stage2.point_jitter_mm:
            sd = self.cfg.stage2.point_jitter_mm
            anchors = {c: p + rng.normal(0, sd, p.shape) for c, p in anchors.items()}
        inputs = grading_inputs(study, complete_anchors(anchors), self.cfg)
        inputs["target"] = self.studies.grades(sid)
        if rng is not None:
            if rng.random() < 0.5:
                inputs = flip_items(inputs)
            for key in ("sag", "axial"):
                inputs[key] = inputs[key] * np.float32(rng.uniform(0.85, 1.15))
        item = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        item["study"] = sid
        return item


def lumbar_loss(logits: torch.Tensor, target: torch.Tensor, *, any_severe_weight: float = 1.0
                ) -> dict[str, torch.Tensor]:
    """The RSNA 2024 metric as a loss.

    Args:
        logits: ``(B, 25, 3)`` in ``lumbar_columns()`` order.
        target: ``(B, 25)`` grades 0/1/2, -1 unlabelled.
        any_severe_weight: weight of the any-severe-spinal term.
    """
    logits = logits.float()
    labelled = target >= 0
    t = target.clamp(min=0)
    w = torch.where(labelled, 2.0 ** t.float(), torch.zeros_like(t, dtype=torch.float32))
    ce = F.cross_entropy(logits.flatten(0, 1), t.flatten(), reduction="none").view_as(w)
    grade = (w * ce).sum() / w.sum().clamp(min=1e-6)
    idx = torch.as_tensor(SPINAL_ITEMS, device=logits.device)
    sp_w, sp_t = w[:, idx], t[:, idx]
    sp_lab = labelled[:, idx]
    p_severe = torch.softmax(logits[:, idx], -1)[..., 2].masked_fill(~sp_lab, 0.0)
    p_any = p_severe.max(dim=1).values.clamp(1e-6, 1 - 1e-6)
    y_any = ((sp_t == 2) & sp_lab).any(dim=1).float()
    w_any = sp_w.max(dim=1).values
    bce = F.binary_cross_entropy(p_any, y_any, reduction="none")
    any_severe = (w_any * bce).sum() / w_any.sum().clamp(min=1e-6)
    return {"loss": grade + any_severe_weight * any_severe, "grade": grade, "any_severe": any_severe}


class GradingStage(Stage):
    """Stage 2 of the lumbar pipeline."""

    name = "stage2"

    def __init__(self, cfg: LumbarConfig, run_dir: Any, studies: LumbarStudies | None = None) -> None:
        super().__init__(cfg, run_dir)
        self.studies = studies or LumbarStudies(cfg)

    @property
    def model_config(self) -> ModelConfig:
        return self.cfg.stage2.model

    @property
    def train_config(self) -> TrainConfig:
        return self.cfg.stage2.train

    def model_kwargs(self) -> dict[str, Any]:
        from spinelab.registry import LUMBAR_GROUPS, condition_group

        groups = [list(LUMBAR_GROUPS).index(condition_group(c)) for c in LUMBAR_CONDITIONS]
        return {"in_chans": self.cfg.stage2.in_slices,
                "condition_groups": groups if self.cfg.stage2.group_heads else None}

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        train_ids, val_ids = self.studies.split(list(self.studies.labels.index), fold)
        train = GradingDataset(self.studies, train_ids, self.cfg, train=True,
                               seed=stage_seed(self.train_config.seed, fold))
        val = GradingDataset(self.studies, val_ids, self.cfg, train=False) if val_ids else None
        return train, val

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["sag"], batch["axial"], batch["mask"], batch["condition"], batch["level"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return lumbar_loss(outputs["logits"], batch["target"],
                           any_severe_weight=self.cfg.stage2.any_severe_weight)

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        probs = torch.softmax(outputs["logits"].float(), -1).cpu().numpy()
        target = batch["target"].cpu().numpy()
        cols = lumbar_columns()
        rows = [{"study_id": sid, "column": cols[j],
                 **dict(zip(LUMBAR_GRADES, probs[b, j].tolist(), strict=True)),
                 "grade": int(target[b, j])}
                for b, sid in enumerate(batch["study"]) for j in range(len(cols))]
        return pd.DataFrame(rows)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        return evaluate_lumbar_rows(predictions)


def evaluate_lumbar_rows(rows: pd.DataFrame) -> dict[str, float]:
    """``lumbar_score`` (and its parts) of rows ``study_id, column, normal_mild, moderate, severe, grade``."""
    from spinelab.metrics import lumbar_score_details

    if rows.empty or not (rows.grade >= 0).any():
        return {}
    row_id = rows.study_id.astype(str) + "_" + rows.column
    onehot = np.full((len(rows), 3), np.nan)
    lab = rows.grade.to_numpy() >= 0
    onehot[lab] = np.eye(3)[rows.grade.to_numpy()[lab]]
    solution = pd.DataFrame(onehot, columns=list(LUMBAR_GRADES))
    solution.insert(0, "row_id", row_id.to_numpy())
    submission = rows[list(LUMBAR_GRADES)].copy()
    submission.insert(0, "row_id", row_id.to_numpy())
    details = lumbar_score_details(solution, submission.reset_index(drop=True))
    return {("lumbar_score" if k == "score" else f"loss_{k}"): v for k, v in details.items()
            if np.isfinite(v)}
