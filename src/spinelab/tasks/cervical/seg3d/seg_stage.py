"""Stage ``seg``: 3D C1-C7 (optionally T1) segmentation on the ``seg`` section's input grid.

Cases are (CT, label map) pairs: the dataset's segmented studies (CT from the volume cache, the mask that
``pipeline.write_masks`` put on its grid in ``derived/masks/``, scheme ``seg.label_scheme``) and the
``seg.external`` NIfTI pairs (each with its own scheme; training only). Every case goes through
``inputs.seg_input`` exactly as inference does, and its labels through ``SegInput.mask_to_grid``.

Training items are the whole fixed grid, or ``seg.patch`` crops of the isotropic grid (``fg_ratio`` of them
centred on a vertebra voxel), augmented with MONAI dictionary transforms (image and mask together). The loss
is MONAI's ``DiceCELoss``. Validation runs on whole held-out volumes with ``Runtime.sliding_window``
(Gaussian blending) and scores Dice and centroid distance (mm) per vertebra on the grid.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from spinelab.config.seg3d import ExternalSegData, Seg3dConfig, Seg3dSegConfig
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.errors import InputError
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.seg3d.inputs import seg_input
from spinelab.tasks.cervical.seg3d.schemes import LabelScheme, class_names, remap_labels
from spinelab.train.stage import Stage

__all__ = ["SegCase", "SegStage", "SegDataset", "dataset_cases", "external_cases", "case_arrays", "masks_dir",
           "dice_per_class", "centroid_errors", "pad_collate", "seg_augment"]

log = logging.getLogger("spinelab")


def masks_dir(cfg: Seg3dConfig) -> Path:
    """Where the dataset's masks on their CT grids live: ``<derived>/masks``."""
    derived = cfg.data.derived_dir or Path(cfg.data.dataset_dir) / "derived"
    return Path(derived) / "masks"


@dataclass(frozen=True)
class SegCase:
    """One (CT, labels) pair: a dataset study (``image`` None: read from the cache) or an external pair."""

    id: str
    label: Path
    scheme: LabelScheme
    image: Path | None = None


def dataset_cases(cfg: Seg3dConfig, uids: list[str]) -> list[SegCase]:
    """The dataset's studies among ``uids`` that have a mask in ``derived/masks`` (the others have none)."""
    folder = masks_dir(cfg)
    return [SegCase(u, folder / f"{u}.nii.gz", cfg.seg.label_scheme) for u in uids
            if (folder / f"{u}.nii.gz").is_file()]


def external_cases(external: list[ExternalSegData]) -> list[SegCase]:
    """The ``seg.external`` pairs, each file checked to exist.

    Raises:
        InputError: a missing file, or a pairs CSV without ``image`` and ``label`` columns.
    """
    out: list[SegCase] = []
    for ext in external:
        if ext.pairs is None:
            pairs = [(Path(ext.image), Path(ext.label))]  # type: ignore[arg-type]
        else:
            if not ext.pairs.is_file():
                raise InputError(ext.pairs, f"seg.external {ext.name!r}: pairs CSV not found")
            with ext.pairs.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            if rows and not {"image", "label"} <= set(rows[0]):
                raise InputError(ext.pairs, "pairs CSV needs the columns image,label")
            base = ext.pairs.parent
            pairs = [(base / r["image"], base / r["label"]) for r in rows]
        for i, (image, label) in enumerate(pairs):
            for path in (image, label):
                if not path.is_file():
                    raise InputError(path, f"seg.external {ext.name!r}: file not found")
            out.append(SegCase(f"{ext.name}/{i}:{image.name}", label, ext.label_scheme, image))
    return out


def _read_ct_and_labels(case: SegCase, cfg: Seg3dConfig) -> tuple[Volume, np.ndarray]:
    """A case's canonical CT (HU) and its labels as model classes on that grid."""
    from spinelab.io.geometry import resample_to
    from spinelab.io.nifti import read_nifti
    from spinelab.tasks.cervical.studies import CervicalStudies, prepare_cervical_volume

    if case.image is None:
        ct = CervicalStudies(cfg).volume(case.id)  # type: ignore[arg-type]
    else:
        ct = prepare_cervical_volume(read_nifti(case.image, is_label=False))
    labels = read_nifti(case.label, is_label=True)
    on_ct = resample_to(labels, ct, order=0)  # exact on the same lattice; by world coordinates otherwise
    classes = remap_labels(on_ct.array, case.scheme, cfg.seg.n_classes)
    if not classes.any():
        raise InputError(case.label, "holds no vertebra of the label scheme on its CT's grid")
    return ct, classes


def case_arrays(case: SegCase, cfg: Seg3dConfig) -> dict[str, Any]:
    """A case on the network's grid: ``image`` ``(C, D, H, W)`` float32, ``mask`` ``(1, D, H, W)`` int64,
    ``spacing`` of the grid in mm."""
    ct, classes = _read_ct_and_labels(case, cfg)
    prepared = seg_input(ct, cfg.seg)
    mask = prepared.mask_to_grid(classes)
    return {"image": prepared.image, "mask": mask[None].astype(np.int64), "spacing": np.asarray(prepared.spacing)}


def seg_augment(sec: Seg3dSegConfig) -> Any:
    """MONAI dictionary transforms on ``image`` and ``mask`` together (flips, affine, intensity, noise,
    coarse dropout of the image)."""
    from monai import transforms as T

    aug = sec.augment
    keys = ["image", "mask"]
    rad = float(np.deg2rad(aug.rotate_deg))
    hole = tuple(max(1, s // 8) for s in sec.roi)
    steps: list[Any] = [T.RandFlipd(keys, prob=aug.flip_prob, spatial_axis=a) for a in aug.flip_axes]
    steps += [
        T.RandAffined(keys, prob=aug.affine_prob, rotate_range=(rad, rad, rad), scale_range=(aug.scale,) * 3,
                      mode=("bilinear", "nearest"), padding_mode="zeros"),
        T.RandScaleIntensityd("image", factors=0.1, prob=aug.intensity_prob),
        T.RandShiftIntensityd("image", offsets=0.1, prob=aug.intensity_prob),
        T.RandGaussianNoised("image", prob=aug.noise_prob, std=0.03),
        T.RandCoarseDropoutd("image", holes=4, spatial_size=hole, fill_value=0.0, prob=aug.dropout_prob),
    ]
    return T.Compose(steps)


def _plain(x: Any) -> torch.Tensor:
    """A MONAI ``MetaTensor`` (or array) as a plain tensor (default collation, no metadata)."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)


class SegDataset(SeededDataset, Dataset):
    """Segmentation cases on the network grid, prepared once and kept in memory (float16 images).

    Args:
        cases: the (CT, labels) pairs.
        cfg: the route config.
        train: draw augmented training items (patches on the isotropic grid); else whole volumes.
        seed: base seed of the augmentation.
    """

    def __init__(self, cases: list[SegCase], cfg: Seg3dConfig, *, train: bool, seed: int = 0) -> None:
        self.cases, self.cfg, self.train, self.seed = cases, cfg, train, int(seed)
        self.sec = cfg.seg
        self._arrays: dict[int, dict[str, Any]] = {}
        self._augment = seg_augment(self.sec) if train else None

    def __len__(self) -> int:
        return len(self.cases) * (self.sec.samples_per_volume if self.train else 1)

    def arrays(self, i: int) -> dict[str, Any]:
        """Case ``i`` on the grid (prepared on first use)."""
        if i not in self._arrays:
            a = case_arrays(self.cases[i], self.cfg)
            self._arrays[i] = {**a, "image": a["image"].astype(np.float16), "mask": a["mask"].astype(np.uint8)}
        return self._arrays[i]

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = index % len(self.cases)
        a = self.arrays(i)
        item: dict[str, Any] = {"image": torch.from_numpy(a["image"].astype(np.float32)),
                                "mask": torch.from_numpy(a["mask"].astype(np.int64))}
        if self.train:
            seed = int(self.rng().integers(2**31 - 1))
            if self.sec.grid == "isotropic":
                item = self._patch(item, seed)
            self._augment.set_random_state(seed=seed)
            item = self._augment(item)
            item = {k: _plain(v) for k, v in item.items()}
            item["mask"] = item["mask"].round().long()
        return {**item, "spacing": torch.as_tensor(a["spacing"], dtype=torch.float32),
                "shape": torch.as_tensor(item["mask"].shape[1:]), "id": self.cases[i].id}

    def _patch(self, item: dict[str, Any], seed: int) -> dict[str, Any]:
        """A ``seg.patch`` crop, padded where the volume is smaller, centred on a vertebra voxel with
        probability ``fg_ratio``."""
        from monai import transforms as T

        patch = self.sec.patch
        pad = T.SpatialPadd(["image", "mask"], spatial_size=patch, mode="constant")
        fg = self.sec.fg_ratio
        crop = T.RandCropByPosNegLabeld(["image", "mask"], label_key="mask", spatial_size=patch, pos=fg,
                                        neg=1.0 - fg, num_samples=1, allow_smaller=False)
        crop.set_random_state(seed=seed)
        out = crop(pad(item))[0]
        return {k: _plain(out[k]) for k in ("image", "mask")}


def pad_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items, padding images and masks at the far end to the largest size (whole isotropic volumes
    differ in size; ``shape`` keeps each one's own)."""
    size = [max(int(it["image"].shape[d]) for it in items) for d in (1, 2, 3)]

    def padded(x: torch.Tensor) -> torch.Tensor:
        gap = [s - int(n) for s, n in zip(size, x.shape[1:], strict=True)]
        return nn.functional.pad(x, (0, gap[2], 0, gap[1], 0, gap[0])) if any(gap) else x

    return {"image": torch.stack([padded(it["image"]) for it in items]),
            "mask": torch.stack([padded(it["mask"]) for it in items]),
            "spacing": torch.stack([it["spacing"] for it in items]),
            "shape": torch.stack([it["shape"] for it in items]), "id": [it["id"] for it in items]}


def dice_per_class(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice of classes ``1..n_classes-1`` (NaN where neither holds the class)."""
    out = np.full(n_classes - 1, np.nan)
    for c in range(1, n_classes):
        p, t = pred == c, truth == c
        total = int(p.sum()) + int(t.sum())
        if total:
            out[c - 1] = 2.0 * int((p & t).sum()) / total
    return out


def centroid_errors(pred: np.ndarray, truth: np.ndarray, spacing: np.ndarray, n_classes: int) -> np.ndarray:
    """Distance in mm between predicted and true centroids of classes ``1..n_classes-1`` (NaN where either
    is empty)."""
    out = np.full(n_classes - 1, np.nan)
    for c in range(1, n_classes):
        p, t = np.argwhere(pred == c), np.argwhere(truth == c)
        if len(p) and len(t):
            out[c - 1] = float(np.linalg.norm((p.mean(0) - t.mean(0)) * spacing))
    return out


class SegStage(Stage):
    """The 3D vertebra segmentation stage (section ``seg``)."""

    name = "seg"
    monitor = "val/dice_error"

    def __init__(self, cfg: Seg3dConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)
        self._loss: nn.Module | None = None

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": self.section.in_chans, "n_classes": self.section.n_classes}

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        from spinelab.tasks.cervical.studies import CervicalStudies

        studies = CervicalStudies(self.cfg)  # type: ignore[arg-type]
        train_ids, val_ids = studies.split(list(studies.labels.index), fold)
        train = dataset_cases(self.cfg, train_ids) + external_cases(self.section.external)
        val = dataset_cases(self.cfg, val_ids)
        if not train:
            raise InputError(masks_dir(self.cfg), "no segmentation to train on: the dataset has no segmented "
                                                  "training study in this fold and seg.external is empty")
        seed = stage_seed(self.train_config.seed, fold)
        return (SegDataset(train, self.cfg, train=True, seed=seed),
                SegDataset(val, self.cfg, train=False) if val else None)

    def collate_fn(self) -> Any:
        return pad_collate

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if model.training:
            return model(batch["image"])
        return sliding_window_logits(model, batch["image"], self.section)

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._loss is None:
            from monai.losses import DiceCELoss

            self._loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                                    lambda_dice=self.section.dice_weight, lambda_ce=self.section.ce_weight)
        return {"loss": self._loss(outputs["mask"].float(), batch["mask"])}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        n = self.section.n_classes
        names = class_names(n)
        pred = outputs["mask"].argmax(1).cpu().numpy()
        truth = batch["mask"][:, 0].cpu().numpy()
        rows = []
        for b, uid in enumerate(batch["id"]):
            d, h, w = (int(s) for s in batch["shape"][b])
            p, t = pred[b, :d, :h, :w], truth[b, :d, :h, :w]
            dice = dice_per_class(p, t, n)
            dist = centroid_errors(p, t, batch["spacing"][b].cpu().numpy(), n)
            rows.append({"StudyInstanceUID": uid, **{f"dice_{v}": x for v, x in zip(names, dice, strict=True)},
                         **{f"centroid_mm_{v}": x for v, x in zip(names, dist, strict=True)}})
        return pd.DataFrame(rows)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        names = class_names(self.section.n_classes)
        per = {f"dice_{v}": float(predictions[f"dice_{v}"].mean()) for v in names}
        cervical = [per[f"dice_C{k}"] for k in range(1, 8)]
        dice = float(np.nanmean(cervical)) if np.isfinite(cervical).any() else 0.0
        dist = predictions[[f"centroid_mm_C{k}" for k in range(1, 8)]].to_numpy(dtype=float)
        out = {"dice_mean": dice, "dice_error": 1.0 - dice, **{k: (0.0 if np.isnan(v) else v) for k, v in per.items()}}
        if np.isfinite(dist).any():
            out["centroid_mm_max"] = float(np.nanmax(dist))
            out["centroid_mm_mean"] = float(np.nanmean(dist))
        return out


def sliding_window_logits(model: nn.Module, image: torch.Tensor, sec: Seg3dSegConfig) -> dict[str, torch.Tensor]:
    """Class logits of whole volumes ``(B, C, D, H, W)``: ``Runtime.sliding_window`` over ``sec.roi`` windows
    with Gaussian blending (one window on the fixed grid)."""
    from spinelab.infer.runtime import Runtime

    runtime = Runtime(device=str(image.device), precision="fp32", channels_last=False)
    return runtime.sliding_window(model, image, sec.roi, sw_batch_size=sec.sw_batch_size, overlap=sec.sw_overlap,
                                  mode="gaussian")
