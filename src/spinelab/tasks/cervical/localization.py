"""Stage 1: where is each vertebra? A slice-sequence model predicts, per slice, the ratio of each of
C1-C7 (its pixels in the slice over its maximum) and the C1-C7 union box; smoothing and thresholds turn
that into per-vertebra slice ranges and a study crop box (trantuan / 3rd-place recipe)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from spinelab.config.schema import CervicalConfig
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.data.transforms import SequenceAugment, evenly_spaced
from spinelab.infer.tta import flip_outputs
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.slices import stack_images
from spinelab.tasks.cervical.studies import CervicalStudies, canonical_slice_table
from spinelab.train.stage import Stage

log = logging.getLogger("spinelab")

__all__ = ["LocalizerDataset", "LocalizerStage", "localizer_centres", "localizer_inputs", "localize",
           "summarize_localization"]

BOX_COLUMNS = ["nx0", "ny0", "nx1", "ny1"]


class LocalizerDataset(SeededDataset, Dataset):
    """One item = one study: ``seq_len`` evenly spaced 2.5D slices and their per-slice targets.

    Training items jitter the slice positions and augment the whole sequence consistently (random numbers from
    the generator seeded by ``seed``); with ``samples_per_study`` > 1 each study is drawn that many times per
    epoch (small datasets). ``augment=False`` turns both off.
    """

    def __init__(self, studies: CervicalStudies, ids: list[str], cfg: CervicalConfig, *, train: bool,
                 seed: int = 0, augment: bool | None = None) -> None:
        self.studies, self.ids, self.cfg, self.s1, self.train = studies, list(ids), cfg, cfg.stage1, train
        self.seed = seed
        labels = studies.slice_labels
        self.per_study = {uid: g.sort_values("index") for uid, g in labels.groupby("StudyInstanceUID")}
        self.augment = SequenceAugment() if (train if augment is None else augment) else None

    def __len__(self) -> int:
        return len(self.ids) * (self.s1.samples_per_study if self.train else 1)

    def __getitem__(self, i: int) -> dict[str, Any]:
        uid = self.ids[i % len(self.ids)]
        vol = self.studies.volume(uid)
        rng = self.rng() if self.augment is not None else None
        centres = localizer_centres(vol.shape[0], self.cfg, rng=rng)
        images, pos = localizer_inputs(vol, centres, self.cfg)
        table = canonical_slice_table(self.per_study[uid], vol)
        ratio = table[list(VERTEBRAE)].fillna(0).to_numpy(np.float32)[centres]
        boxes = table[BOX_COLUMNS].to_numpy(np.float32)[centres]
        box_mask = np.isfinite(boxes).all(axis=1) & (ratio.max(axis=1) > 0)
        boxes = np.nan_to_num(boxes)
        if self.augment is not None:
            images, boxes, box_mask = self.augment(images, boxes, box_mask, rng=rng)
        return {
            "image": torch.from_numpy(images),
            "pos": torch.from_numpy(pos),
            "ratio": torch.from_numpy(ratio),
            "box": torch.from_numpy(boxes.astype(np.float32)),
            "box_mask": torch.from_numpy(box_mask),
            "index": torch.from_numpy(centres.astype(np.int64)),
            "uid": uid,
        }


def localizer_centres(depth: int, cfg: CervicalConfig, *, offset: int = 0,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Centre slices of one stage-1 sequence: ``min(seq_len, depth)`` evenly spaced array indices, head to feet.

    Args:
        depth: slices in the (canonical) volume.
        cfg: config (stage1: seq_len, infer_offsets).
        offset: inference offset ``k`` of ``infer_offsets``: the grid shifted by ``k / infer_offsets`` steps.
        rng: when given (training), the grid is shifted at random by up to half a step instead.
    """
    s1 = cfg.stage1
    n = min(s1.seq_len, depth)
    if rng is not None:
        return np.sort(evenly_spaced(0, depth - 1, n, jitter=0.5, rng=rng))
    step = (depth - 1) / max(n - 1, 1)
    shift = offset * step / max(1, s1.infer_offsets)
    return np.clip(np.rint(np.linspace(0, depth - 1, n) + shift), 0, depth - 1).astype(np.int64)


def localizer_inputs(volume: Volume, centres: np.ndarray, cfg: CervicalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stage-1 input of one sequence, for training and inference alike.

    Returns:
        ``(T, 3 * n_windows, S, S)`` float32 2.5D images around ``centres`` and their ``(T,)`` positions in
        [0, 1] from head to feet.
    """
    s1 = cfg.stage1
    images = stack_images(volume, centres, windows=s1.windows, size=s1.image_size)
    return images, _positions(volume, centres)


def _positions(volume: Volume, centres: np.ndarray) -> np.ndarray:
    """Slice position in [0, 1] from head (0) to feet (1) of a canonical volume."""
    return (centres / max(volume.shape[0] - 1, 1)).astype(np.float32)


class LocalizerStage(Stage):
    """Stage 1 of the cervical pipeline."""

    name = "stage1"

    def __init__(self, cfg: CervicalConfig, run_dir: Any) -> None:
        super().__init__(cfg, run_dir)
        self.studies = CervicalStudies(cfg)

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": 3 * len(self.cfg.stage1.windows)}

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        train_ids, val_ids = self.studies.split(self.studies.segmented_ids(), fold)
        seed = stage_seed(self.train_config.seed, fold)
        train = LocalizerDataset(self.studies, train_ids, self.cfg, train=True, seed=seed)
        val = LocalizerDataset(self.studies, val_ids, self.cfg, train=False) if val_ids else None
        return train, val

    def collate_fn(self) -> Any:
        return collate_sequences

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["image"], batch["pos"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        valid = batch["valid"]
        ratio = F.binary_cross_entropy_with_logits(outputs["ratio"], batch["ratio"], reduction="none")
        ratio = (ratio.mean(-1) * valid).sum() / valid.sum().clamp(min=1)
        mask = batch["box_mask"] & valid.bool()
        box = (outputs["box"] - batch["box"]).abs().sum(-1)
        box = (box * mask).sum() / (4 * mask.sum().clamp(min=1))
        has = F.binary_cross_entropy_with_logits(outputs["has_box"], batch["box_mask"].float(), reduction="none")
        has = (has * valid).sum() / valid.sum().clamp(min=1)
        s1 = self.cfg.stage1
        total = s1.ratio_weight * ratio + s1.box_weight * box + 0.2 * has
        return {"loss": total, "ratio": ratio, "box": box, "has_box": has}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        prob = torch.sigmoid(outputs["ratio"]).float().cpu().numpy()
        rows = []
        for b, uid in enumerate(batch["uid"]):
            keep = batch["valid"][b].bool().cpu().numpy()
            idx = batch["index"][b].cpu().numpy()[keep]
            frame = pd.DataFrame(prob[b][keep], columns=[f"pred_{v}" for v in VERTEBRAE])
            frame[[f"true_{v}" for v in VERTEBRAE]] = batch["ratio"][b].cpu().numpy()[keep]
            frame.insert(0, "index", idx)
            frame.insert(0, "StudyInstanceUID", uid)
            rows.append(frame)
        return pd.concat(rows, ignore_index=True)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        pred = predictions[[f"pred_{v}" for v in VERTEBRAE]].to_numpy()
        true = predictions[[f"true_{v}" for v in VERTEBRAE]].to_numpy()
        present = true > 0.3
        agree = ((pred > self.cfg.stage1.ratio_threshold) == present).mean()
        return {"ratio_mae": float(np.abs(pred - true).mean()), "presence_acc": float(agree)}


def collate_sequences(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad sequences of different lengths (short studies) and mark valid steps."""
    t = max(int(it["image"].shape[0]) for it in items)
    out: dict[str, Any] = {"uid": [it["uid"] for it in items]}
    for key in ("image", "pos", "ratio", "box", "box_mask", "index"):
        out[key] = torch.stack([_pad(it[key], t) for it in items])
    out["valid"] = torch.stack([_pad(torch.ones(it["image"].shape[0]), t) for it in items])
    return out


def _pad(x: torch.Tensor, t: int) -> torch.Tensor:
    if x.shape[0] == t:
        return x
    pad = torch.zeros((t - x.shape[0], *x.shape[1:]), dtype=x.dtype)
    return torch.cat([x, pad])


# --- inference ------------------------------------------------------------------------------------------
@torch.inference_mode()
def localize(volume: Volume, models: list[torch.nn.Module], cfg: CervicalConfig, *, tta: bool = True,
             runtime: Any = None) -> dict[str, np.ndarray]:
    """Per-slice predictions for a whole study, averaged over folds, offsets and flips.

    Args:
        volume: the CT study in the canonical orientation (``studies.prepare_cervical_volume``).
        models: trained stage-1 models (one per fold).
        cfg: config (stage1 section: seq_len, infer_offsets, windows, image_size).
        tta: also run the left-right flipped images.
        runtime: optional ``spinelab.infer.runtime.Runtime`` (device, precision).

    Returns:
        ``ratio`` ``(D, 7)``, ``box`` ``(D, 4)`` normalised, ``has_box`` ``(D,)``: probabilities per array
        index (positions not sampled are interpolated).
    """
    from spinelab.infer.runtime import Runtime
    from spinelab.io.orientation import is_canonical

    if not is_canonical(volume):
        log.warning("stage 1 got a %s volume, not the canonical IPL: pass it through "
                    "tasks.cervical.studies.prepare_cervical_volume first", volume.orientation)
    runtime = runtime or Runtime()
    s1 = cfg.stage1
    depth = volume.shape[0]
    acc = np.zeros((depth, 12), np.float64)
    count = np.zeros(depth)
    for k in range(max(1, s1.infer_offsets)):
        centres = localizer_centres(depth, cfg, offset=k)
        images_np, pos_np = localizer_inputs(volume, centres, cfg)
        images, pos = torch.from_numpy(images_np)[None], torch.from_numpy(pos_np)[None]
        outs = flip_outputs(models, images, lambda model, x, pos=pos: _slice_outputs(runtime.run(model, x, pos)),
                            tta=tta, unmirror=_unmirror_box)
        mean = np.mean(outs, axis=0)
        np.add.at(acc, centres, mean)
        np.add.at(count, centres, 1)
    seen = count > 0
    values = acc[seen] / count[seen, None]
    full = np.stack([np.interp(np.arange(depth), np.flatnonzero(seen), values[:, j]) for j in range(12)], axis=1)
    return {"ratio": full[:, :7], "box": full[:, 7:11], "has_box": full[:, 11]}


def _slice_outputs(out: dict[str, torch.Tensor]) -> np.ndarray:
    """``(n, 12)`` per slice: seven vertebra ratios, the box ``[x0, y0, x1, y1]`` (fractions), has-box."""
    res = torch.cat([torch.sigmoid(out["ratio"].float()), out["box"].float(),
                     torch.sigmoid(out["has_box"].float())[..., None]], dim=-1)
    return res[0].cpu().numpy()


def _unmirror_box(res: np.ndarray) -> np.ndarray:
    """The outputs of a mirrored input in the unmirrored frame: the box's x edges swap and turn (1 - x)."""
    res = res.copy()
    x0, x1 = res[:, 7].copy(), res[:, 9].copy()
    res[:, 7], res[:, 9] = 1 - x1, 1 - x0
    return res


def summarize_localization(pred: dict[str, np.ndarray], volume: Volume, cfg: CervicalConfig) -> dict[str, Any]:
    """Per-vertebra slice ranges and a square study crop box from per-slice predictions.

    Each vertebra's ratio is smoothed by a centred rolling mean over ``smooth_mm`` millimetres; its range is
    the contiguous run of slices around its peak above ``min(ratio_threshold, relative_threshold * peak)``
    (the seeds' absolute 0.3 for a confident model; relative for a blurred one), and a vertebra whose peak is
    below ``min_peak`` is not found. Vertebrae not found are placed next to their found neighbours (or, when
    none is found, by splitting the study evenly) and listed under ``missing`` so callers can warn.

    Returns:
        ``{"ranges": {"C1": [start, end], ...}, "box": [x0, y0, x1, y1] (pixels), "missing": [...],
        "warnings": [...]}`` with array indices, start <= end.
    """
    s1 = cfg.stage1
    depth, height, width = volume.shape
    window = max(1, int(round(s1.smooth_mm / volume.spacing[0])))
    smooth = pd.DataFrame(pred["ratio"]).rolling(window, center=True, min_periods=1).mean().to_numpy()
    ranges: dict[str, list[int] | None] = {}
    for j, v in enumerate(VERTEBRAE):
        peak = int(np.argmax(smooth[:, j]))
        top = float(smooth[peak, j])
        if top < s1.min_peak:
            ranges[v] = None
            continue
        above = smooth[:, j] >= min(s1.ratio_threshold, s1.relative_threshold * top)
        start, end = peak, peak
        while start > 0 and above[start - 1]:
            start -= 1
        while end < depth - 1 and above[end + 1]:
            end += 1
        ranges[v] = [start, end]
    missing = [v for v, r in ranges.items() if r is None]
    warnings = []
    if missing:
        warnings.append(f"vertebrae not found: {', '.join(missing)}; their slice ranges are estimated")
        _fill_missing(ranges, depth)
    sel = pred["has_box"] > s1.box_threshold
    if not sel.any():
        sel = smooth.max(axis=1) > s1.min_peak
    if sel.any():
        b = pred["box"][sel]
        box = np.array([np.quantile(b[:, 0], 0.02) * width, np.quantile(b[:, 1], 0.02) * height,
                        np.quantile(b[:, 2], 0.98) * width, np.quantile(b[:, 3], 0.98) * height])
    else:
        warnings.append("no C1-C7 box found; using the whole image")
        box = np.array([0.0, 0.0, width, height])
    return {"ranges": ranges, "box": _square_box(box, s1.crop_margin, width, height).tolist(),
            "missing": missing, "warnings": warnings}


def _fill_missing(ranges: dict[str, list[int] | None], depth: int) -> None:
    """Estimate ranges of vertebrae that were not found, keeping anatomical order (index 0 = head)."""
    found = {v: r for v, r in ranges.items() if r is not None}
    order = list(VERTEBRAE)
    if not found:
        # Nothing found: split the middle 80 % of the study evenly, C1 at the cranial end.
        edges = np.linspace(0.1 * (depth - 1), 0.9 * (depth - 1), len(order) + 1)
        for j, v in enumerate(order):
            a, b = edges[j], edges[j + 1]
            ranges[v] = [int(round(a)), max(int(round(a)), int(round(b)))]
        return
    length = max(1, int(np.median([r[1] - r[0] + 1 for r in found.values()])))
    for j, v in enumerate(order):
        if ranges[v] is not None:
            continue
        above = next((ranges[order[i]] for i in range(j - 1, -1, -1) if ranges[order[i]] is not None), None)
        if above is not None:
            start = above[1] + 1
        else:
            below = next(ranges[order[i]] for i in range(j + 1, len(order)) if ranges[order[i]] is not None)
            start = below[0] - length
        start = int(np.clip(start, 0, depth - 1))
        ranges[v] = [start, int(np.clip(start + length - 1, start, depth - 1))]


def _square_box(box: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """Square the box around its centre, add ``margin`` (fraction of its side), clip to the image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1], 8.0) * (1 + 2 * margin)
    side = min(side, max(width, height))
    x0 = float(np.clip(cx - side / 2, 0, max(0.0, width - side)))
    y0 = float(np.clip(cy - side / 2, 0, max(0.0, height - side)))
    return np.array([x0, y0, min(width, x0 + side), min(height, y0 + side)])
