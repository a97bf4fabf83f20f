"""Stage 1: where are the levels? Three heatmap models on 2.5D stacks, decoded to pixel and world points.

* ``stage1_sag_t2``: the 5 spinal-canal level points on the mid-sagittal T2 stack.
* ``stage1_sag_t1``: the 5 foraminal points of one side on a T1 stack centred where that side's foramina
  lie (learned as a mean offset in mm from the middle slice, ``geometry.json``); run once per side.
* ``stage1_axial``: left and right subarticular points on the axial slices nearest each level, found by
  projecting the predicted sagittal level points into the axial series (hengck23's method).

Loss: spatial-softmax cross-entropy against a Gaussian target; decoding: argmax refined by a local
expectation. Left-right flips (axial) swap the left and right channels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spinelab.config.schema import LumbarConfig, ModelConfig, TrainConfig
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.errors import InputError
from spinelab.io.volume import Volume
from spinelab.registry import LUMBAR_LEVELS
from spinelab.tasks.lumbar.images import image_to_voxel, slice_stack, voxel_to_image
from spinelab.tasks.lumbar.studies import LumbarStudies, LumbarStudy
from spinelab.train.stage import Stage

__all__ = [
    "PointSample",
    "PointDataset",
    "point_inputs",
    "PointStage",
    "SagT2PointStage",
    "SagT1PointStage",
    "AxialPointStage",
    "heatmap_loss",
    "decode_heatmaps",
    "side_offsets",
    "read_geometry",
    "axial_slice_for",
]

SIDES = ("left", "right")


class PointSample(dict):
    """One stage-1 input: ``study``, ``kind``, ``series`` (index), ``centre`` slice, ``points`` ``(K, 3)``
    world (NaN unknown), ``levels`` ``(K,)`` level index of each point."""


class PointDataset(SeededDataset, Dataset):
    """Images and target pixels of a list of ``PointSample``.

    Training items move the centre slice by up to ``slice_jitter``, scale the intensity and (when ``flip_pairs``
    is set) mirror left-right with the paired channels swapped, with random numbers from the generator seeded
    by ``seed``; ``augment=False`` turns this off (the image is then ``point_inputs``' input).
    """

    def __init__(self, studies: LumbarStudies, samples: list[PointSample], cfg: LumbarConfig, *, train: bool,
                 flip_pairs: list[tuple[int, int]] | None = None, seed: int = 0,
                 augment: bool | None = None) -> None:
        self.studies, self.samples, self.cfg, self.s1, self.train = studies, samples, cfg, cfg.stage1, train
        self.flip_pairs, self.seed = flip_pairs, seed
        self.augment = train if augment is None else augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        study = self.studies.study(s["study"])
        vol = study.series[s["kind"]][s["series"]]
        rng = self.rng() if self.augment else None
        centre = int(s["centre"])
        if rng is not None and self.s1.slice_jitter:
            centre = int(np.clip(centre + rng.integers(-self.s1.slice_jitter, self.s1.slice_jitter + 1), 0,
                                 vol.shape[0] - 1))
        image = point_inputs(study, vol, [centre], self.cfg)[0]
        xy, valid = target_pixels(vol, s["points"], self.s1.image_size)
        if rng is not None:
            image = image * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
            if self.flip_pairs and rng.random() < 0.5:
                image, xy, valid = flip_lr(image, xy, valid, self.flip_pairs, self.s1.image_size)
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "xy": torch.from_numpy(xy.astype(np.float32)), "valid": torch.from_numpy(valid),
                "mm_per_px": torch.from_numpy(mm_per_pixel(vol, self.s1.image_size)),
                "levels": torch.as_tensor(s["levels"], dtype=torch.int64), "study": s["study"], "index": i}


def point_inputs(study: LumbarStudy, volume: Volume, centres: Sequence[int], cfg: LumbarConfig) -> np.ndarray:
    """Stage-1 input, for training and inference alike: one ``in_slices`` 2.5D stack per centre slice of
    ``volume`` (one of ``study``'s series, scaled by its series window): ``(N, in_slices, S, S)`` float32."""
    s1 = cfg.stage1
    window = study.window(volume)
    return np.stack([slice_stack(volume, int(c), span=s1.in_slices, size=s1.image_size, window=window)
                     for c in centres])


def mm_per_pixel(volume: Volume, size: int) -> np.ndarray:
    """Millimetres per resized image pixel along x (columns) and y (rows): ``(2,)``."""
    sh, sw = volume.spacing[1:]
    return np.array([sw * volume.shape[2] / size, sh * volume.shape[1] / size], dtype=np.float32)


def target_pixels(volume: Volume, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """World points ``(K, 3)`` -> image pixels ``(K, 2)`` and validity ``(K,)`` (known and inside)."""
    vox = volume.world_to_voxel(np.nan_to_num(points))
    xy = voxel_to_image(vox[:, 1:], volume, size)
    valid = np.isfinite(points).all(axis=1) & (xy >= 0).all(axis=1) & (xy <= size - 1).all(axis=1)
    return np.where(valid[:, None], xy, 0.0), valid


def flip_lr(image: np.ndarray, xy: np.ndarray, valid: np.ndarray, pairs: list[tuple[int, int]], size: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror columns; swap the channels of each (left, right) pair so labels follow the anatomy."""
    image = image[..., ::-1]
    xy = xy.copy()
    xy[:, 0] = np.where(valid, size - 1 - xy[:, 0], 0.0)
    order = np.arange(len(xy))
    for a, b in pairs:
        order[a], order[b] = b, a
    return image, xy[order], valid[order]


def heatmap_loss(logits: torch.Tensor, xy: torch.Tensor, valid: torch.Tensor, *, stride: int,
                 sigma: float) -> torch.Tensor:
    """Spatial-softmax cross-entropy against Gaussian targets.

    Args:
        logits: ``(B, K, h, w)`` heatmap logits.
        xy: ``(B, K, 2)`` target pixels in input-image coordinates.
        valid: ``(B, K)`` which targets exist.
        stride: input pixels per heatmap cell.
        sigma: Gaussian sigma in heatmap cells.
    """
    b, k, h, w = logits.shape
    ys = (torch.arange(h, device=logits.device, dtype=torch.float32) + 0.5) * stride - 0.5
    xs = (torch.arange(w, device=logits.device, dtype=torch.float32) + 0.5) * stride - 0.5
    dy = (ys.view(1, 1, h, 1) - xy[..., 1].view(b, k, 1, 1)) / (sigma * stride)
    dx = (xs.view(1, 1, 1, w) - xy[..., 0].view(b, k, 1, 1)) / (sigma * stride)
    target = torch.exp(-0.5 * (dx**2 + dy**2)).flatten(2)
    target = target / target.sum(-1, keepdim=True).clamp(min=1e-8)
    ce = -(target * F.log_softmax(logits.float().flatten(2), dim=-1)).sum(-1)
    mask = valid.float()
    return (ce * mask).sum() / mask.sum().clamp(min=1)


def decode_heatmaps(prob: np.ndarray, stride: int, *, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Probability maps ``(N, K, h, w)`` -> pixel ``(N, K, 2)`` (x, y) in input coordinates and peak mass.

    The argmax is refined by the probability-weighted mean of its ``(2 radius + 1)^2`` neighbourhood.
    """
    n, k, h, w = prob.shape
    flat = prob.reshape(n, k, -1)
    arg = flat.argmax(-1)
    py, px = np.divmod(arg, w)
    out = np.zeros((n, k, 2))
    mass = np.zeros((n, k))
    for i in range(n):
        for j in range(k):
            y0, y1 = max(0, py[i, j] - radius), min(h, py[i, j] + radius + 1)
            x0, x1 = max(0, px[i, j] - radius), min(w, px[i, j] + radius + 1)
            patch = prob[i, j, y0:y1, x0:x1]
            total = max(float(patch.sum()), 1e-12)
            gy, gx = np.mgrid[y0:y1, x0:x1]
            out[i, j] = [(patch * gx).sum() / total, (patch * gy).sum() / total]
            mass[i, j] = total
    return (out + 0.5) * stride - 0.5, mass


class PointStage(Stage):
    """A stage-1 heatmap model; subclasses say which series, points and samples."""

    kind = "sag_t2"
    point_names: tuple[str, ...] = LUMBAR_LEVELS
    flip_pairs: list[tuple[int, int]] | None = None

    def __init__(self, cfg: LumbarConfig, run_dir: Any, studies: LumbarStudies | None = None) -> None:
        super().__init__(cfg, run_dir)
        self.studies = studies or LumbarStudies(cfg)

    @property
    def model_config(self) -> ModelConfig:
        return self.cfg.stage1.model

    @property
    def train_config(self) -> TrainConfig:
        return self.cfg.stage1.train

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": self.cfg.stage1.in_slices, "n_points": len(self.point_names),
                "stride": self.cfg.stage1.heatmap_stride}

    def samples(self, ids: list[str], *, train: bool) -> list[PointSample]:
        raise NotImplementedError

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        ids = [s for s in self.studies.labels.index if self.studies.world_points(s)]
        train_ids, val_ids = self.studies.split(ids, fold)
        train = PointDataset(self.studies, self.samples(train_ids, train=True), self.cfg, train=True,
                             flip_pairs=self.flip_pairs, seed=stage_seed(self.train_config.seed, fold))
        val_samples = self.samples(val_ids, train=False)
        val = PointDataset(self.studies, val_samples, self.cfg, train=False) if val_samples else None
        return train, val

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["image"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        s1 = self.cfg.stage1
        loss = heatmap_loss(outputs["heatmap"], batch["xy"], batch["valid"], stride=s1.heatmap_stride,
                            sigma=s1.sigma)
        return {"loss": loss}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        prob = torch.softmax(outputs["heatmap"].float().flatten(2), -1).view_as(outputs["heatmap"])
        xy, _ = decode_heatmaps(prob.cpu().numpy(), self.cfg.stage1.heatmap_stride)
        true, valid = batch["xy"].cpu().numpy(), batch["valid"].cpu().numpy()
        scale, levels = batch["mm_per_px"].cpu().numpy(), batch["levels"].cpu().numpy()
        rows = []
        for b, study in enumerate(batch["study"]):
            for j, name in enumerate(self.point_names):
                if not valid[b, j]:
                    continue
                err = float(np.linalg.norm((xy[b, j] - true[b, j]) * scale[b]))
                rows.append({"study_id": study, "point": name, "level": LUMBAR_LEVELS[int(levels[b, j])],
                             "pred_x": xy[b, j, 0], "pred_y": xy[b, j, 1], "true_x": true[b, j, 0],
                             "true_y": true[b, j, 1], "error_mm": err})
        return pd.DataFrame(rows)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        if predictions.empty:
            return {}
        out = {"error_mm": float(predictions.error_mm.mean()),
               "within_5mm": float((predictions.error_mm < 5).mean())}
        for level, g in predictions.groupby("level"):
            out[f"error_mm_{level}"] = float(g.error_mm.mean())
        return out


class SagT2PointStage(PointStage):
    """Spinal-canal level points on the mid-sagittal T2/STIR stack."""

    name = "stage1_sag_t2"
    kind = "sag_t2"

    def samples(self, ids: list[str], *, train: bool) -> list[PointSample]:
        out = []
        for sid in ids:
            vol = self.studies.study(sid).first("sag_t2")
            pts = self.studies.level_points(sid, "spinal_canal_stenosis")
            if vol is not None and np.isfinite(pts).any():
                out.append(PointSample(study=sid, kind="sag_t2", series=0, centre=vol.shape[0] // 2,
                                       points=pts, levels=np.arange(5)))
        return out


class SagT1PointStage(PointStage):
    """Foraminal points of one side on a sagittal T1 stack centred on that side's foramina."""

    name = "stage1_sag_t1"
    kind = "sag_t1"

    def samples(self, ids: list[str], *, train: bool) -> list[PointSample]:
        if train:
            self.offsets = side_offsets(self.studies, ids)
        offsets = getattr(self, "offsets", None) or read_geometry(self.run_dir)["t1_offsets_mm"]
        out = []
        for sid in ids:
            vol = self.studies.study(sid).first("sag_t1")
            if vol is None:
                continue
            for side in SIDES:
                pts = self.studies.level_points(sid, f"{side}_neural_foraminal_narrowing")
                if not np.isfinite(pts).any():
                    continue
                if train:  # the slice the reader chose (jittered by the dataset)
                    d = np.nanmean(vol.world_to_voxel(pts)[:, 0])
                    centre = int(np.clip(np.rint(d), 0, vol.shape[0] - 1))
                else:
                    centre = side_centre(vol, offsets[side])
                out.append(PointSample(study=sid, kind="sag_t1", series=0, centre=centre, points=pts,
                                       levels=np.arange(5)))
        return out


class AxialPointStage(PointStage):
    """Left and right subarticular points on the axial slice nearest each level."""

    name = "stage1_axial"
    kind = "axial"
    point_names = ("left", "right")
    flip_pairs = [(0, 1)]

    def samples(self, ids: list[str], *, train: bool) -> list[PointSample]:
        out = []
        for sid in ids:
            study = self.studies.study(sid)
            left = self.studies.level_points(sid, "left_subarticular_stenosis")
            right = self.studies.level_points(sid, "right_subarticular_stenosis")
            for li in range(len(LUMBAR_LEVELS)):
                pts = np.stack([left[li], right[li]])
                if not np.isfinite(pts).any():
                    continue
                found = axial_slice_for(study, np.nanmean(pts, axis=0))
                if found is not None:
                    out.append(PointSample(study=sid, kind="axial", series=found[0], centre=found[1],
                                           points=pts, levels=np.array([li, li])))
        cap = self.cfg.stage1.max_axial_samples
        if cap is not None and len(out) > cap:
            keep = np.random.default_rng(0).choice(len(out), cap, replace=False)
            out = [out[i] for i in sorted(keep)]
        return out


def axial_slice_for(study: LumbarStudy, world: np.ndarray, *, margin: float = 1.0) -> tuple[int, int] | None:
    """``(series index, slice index)`` of the axial slice nearest a world point, or ``None`` when no axial
    series covers it (within ``margin`` slices). Split axial blocks: the series holding it most centrally."""
    best, best_gap = None, np.inf
    if not np.all(np.isfinite(world)):
        return None
    for i, vol in enumerate(study.series.get("axial") or []):
        d = float(vol.world_to_voxel(world)[0])
        depth = vol.shape[0]
        if -margin - 0.5 <= d <= depth - 0.5 + margin:
            gap = abs(d - (depth - 1) / 2) / depth
            if gap < best_gap:
                best, best_gap = (i, int(np.clip(np.rint(d), 0, depth - 1))), gap
    return best


def side_offsets(studies: LumbarStudies, ids: list[str]) -> dict[str, float]:
    """Mean offset in mm (along the oriented slice axis, right -> left) of each side's foraminal points from
    the middle sagittal T1 slice, over ``ids``."""
    found: dict[str, list[float]] = {s: [] for s in SIDES}
    for sid in ids:
        vol = studies.study(sid).first("sag_t1")
        if vol is None:
            continue
        for side in SIDES:
            pts = studies.level_points(sid, f"{side}_neural_foraminal_narrowing")
            if np.isfinite(pts).any():
                d = np.nanmean(vol.world_to_voxel(pts)[:, 0])
                found[side].append(float((d - (vol.shape[0] - 1) / 2) * vol.spacing[0]))
    default = {"left": 20.0, "right": -20.0}
    return {s: float(np.mean(v)) if v else default[s] for s, v in found.items()}


def side_centre(volume: Volume, offset_mm: float) -> int:
    """Slice index ``offset_mm`` from the middle of an oriented sagittal series."""
    d = (volume.shape[0] - 1) / 2 + offset_mm / volume.spacing[0]
    return int(np.clip(np.rint(d), 0, volume.shape[0] - 1))


def read_geometry(run_dir: str | Path) -> dict[str, Any]:
    """``geometry.json`` of a run folder (the learned T1 side offsets)."""
    path = Path(run_dir) / "geometry.json"
    if not path.is_file():
        raise InputError(path, "geometry.json not found; train the lumbar stage 1 first")
    return json.loads(path.read_text())


def image_points_to_world(volume: Volume, centre: int, xy: np.ndarray, size: int) -> np.ndarray:
    """Decoded image pixels ``(K, 2)`` on the stack centred at ``centre`` -> world ``(K, 3)``."""
    hw = image_to_voxel(xy, volume, size)
    vox = np.concatenate([np.full((len(hw), 1), float(centre)), hw], axis=1)
    return volume.voxel_to_world(vox)
