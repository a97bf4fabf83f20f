"""Stage ``fracture_seg`` and its pseudo-labelling rounds ``fracture_seg_r2`` ...: fracture segmentation on the
vertebra crop (``crop.prepare_crop``, the function inference uses).

Cases: round 1 trains on the box pseudo-masks that cover every vertebra labelled fractured
(``pseudo_masks.usable_studies``); round ``k > 1`` on ``write_round_labels``'s labels (round ``k - 1``'s
out-of-fold probability above ``threshold``, on the vertebrae labelled fractured). With
``fracture_seg.use_negatives`` studies labelled without a fracture join with an empty target. Validation is the
same in every round: whole held-out crops of the boxed studies (and negatives) against their box pseudo-masks,
so the rounds' Dice compare.

Training items are ``fracture_seg.patch`` windows (MONAI ``RandCropByPosNegLabeld``: ``fg_ratio`` of them centred
on a fracture voxel), a 3D fake fracture through an intact vertebra with probability ``fake_fracture.prob``
(``data.fake_fracture3d``; its voxels join the target), then seg3d's MONAI augmentations (image and mask
together). The loss is MONAI's ``DiceCELoss``, on each deep-supervision head too (weights halving per level).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from spinelab.config.fracseg import FracsegConfig, FractureSegConfig, round_name
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.errors import ConfigError, InputError
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.tasks.cervical.fracseg.crop import N_CERVICAL, prepare_crop
from spinelab.tasks.cervical.fracseg.pseudo_masks import (
    fracture_masks_dir,
    fractured_vertebrae,
    read_mask_index,
    study_vertebrae,
    usable_studies,
    vertebra_mask_path,
)
from spinelab.train.stage import Stage

__all__ = ["FracCase", "FractureSegStage", "FractureDataset", "round_cases", "case_arrays", "round_metrics",
           "fracture_dice", "write_round_labels", "write_round_scores", "labels_dir", "oof_maps_dir"]

log = logging.getLogger("spinelab")
ROUND_SCHEMA_VERSION = 1


def labels_dir(run_dir: Path, k: int) -> Path:
    """Where round ``k``'s training labels live (``k > 1``): ``RUN/fracture_seg_r<k>/labels``."""
    return Path(run_dir) / round_name(k) / "labels"


def oof_maps_dir(run_dir: Path, k: int) -> Path:
    """Round ``k``'s out-of-fold probability maps on the crop: ``RUN/<round k>/oof_maps/<UID>.nii.gz``."""
    return Path(run_dir) / round_name(k) / "oof_maps"


@dataclass(frozen=True)
class FracCase:
    """One study: its target on the crop (``None``: empty, a study labelled without fracture) and the vertebrae
    labelled fractured (the fake fracture cuts only the others)."""

    id: str
    target: Path | None
    fractured: frozenset[int] = field(default_factory=frozenset)


def _labels(cfg: FracsegConfig) -> pd.DataFrame:
    from spinelab.tasks.cervical.studies import CervicalStudies

    return CervicalStudies(cfg).labels  # type: ignore[arg-type]


def _negatives(cfg: FracsegConfig, labels: pd.DataFrame, uids: list[str]) -> list[FracCase]:
    if not cfg.fracture_seg.use_negatives:
        return []
    return [FracCase(u, None) for u in uids if float(labels.loc[u, "patient_overall"]) < 0.5
            and vertebra_mask_path(cfg, u) is not None]


def round_cases(cfg: FracsegConfig, run_dir: Path, k: int, uids: list[str], *, train: bool) -> list[FracCase]:
    """The cases among ``uids``: round ``k``'s labels for training (validation: always the box pseudo-masks),
    and the negatives."""
    labels = _labels(cfg)
    boxes = fracture_masks_dir(cfg)
    folder, usable = (boxes, set(usable_studies(boxes))) if (k == 1 or not train) else \
        (labels_dir(run_dir, k), set(usable_studies(labels_dir(run_dir, k))))
    pos = [FracCase(u, folder / f"{u}.nii.gz", frozenset(fractured_vertebrae(labels.loc[u]))) for u in uids
           if u in usable]
    return pos + _negatives(cfg, labels, uids)


def case_arrays(case: FracCase, cfg: FracsegConfig) -> dict[str, Any]:
    """A case on its crop: ``image`` ``(C, D, H, W)`` float32, ``mask`` ``(1, D, H, W)`` 0/1, ``vert``
    ``(1, D, H, W)`` vertebra labels, ``spacing`` of the crop in mm.

    Raises:
        InputError: the study has no vertebra mask, or its target cannot be read.
    """
    from spinelab.io.geometry import resample_to
    from spinelab.io.nifti import read_nifti
    from spinelab.tasks.cervical.studies import CervicalStudies

    path = vertebra_mask_path(cfg, case.id)
    if path is None:
        raise InputError(case.id, "no vertebra mask for the fracture crop")
    ct = CervicalStudies(cfg).volume(case.id)  # type: ignore[arg-type]
    crop = prepare_crop(ct, study_vertebrae(path, ct), cfg.grid)
    if case.target is None:
        target = np.zeros(crop.grid.shape, dtype=np.uint8)
    else:  # exact when written on this crop; by world position when the grid settings changed since
        target = np.asarray(resample_to(read_nifti(case.target, is_label=True), crop.grid.reference()).array)
    return {"image": crop.image, "mask": (target > 0).astype(np.uint8)[None], "vert": crop.vertebrae[None],
            "spacing": np.asarray(crop.grid.spacing)}


class FractureDataset(SeededDataset, Dataset):
    """Fracture cases on their crops, prepared once and kept in memory (float16 images).

    Args:
        cases: the studies.
        cfg: the route config.
        train: draw augmented patches; else whole crops.
        seed: base seed of the augmentation.
    """

    def __init__(self, cases: list[FracCase], cfg: FracsegConfig, *, train: bool, seed: int = 0) -> None:
        from spinelab.tasks.cervical.seg3d.seg_stage import seg_augment

        self.cases, self.cfg, self.train, self.seed = cases, cfg, train, int(seed)
        self.sec: FractureSegConfig = cfg.fracture_seg
        self._arrays: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._augment = seg_augment(self.sec) if train else None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.cases) * (self.sec.samples_per_volume if self.train else 1)

    def arrays(self, i: int) -> dict[str, Any]:
        """Case ``i`` on its crop: the ``cache_studies`` most recently used are kept (a crop at the seed's grid
        holds tens of millions of voxels), the others prepared again when drawn."""
        if i in self._arrays:
            self._arrays.move_to_end(i)
            return self._arrays[i]
        a = case_arrays(self.cases[i], self.cfg)
        self._arrays[i] = {**a, "image": a["image"].astype(np.float16)}
        while len(self._arrays) > self.sec.cache_studies:
            self._arrays.popitem(last=False)
        return self._arrays[i]

    def __getitem__(self, index: int) -> dict[str, Any]:
        from spinelab.tasks.cervical.seg3d.seg_stage import _plain

        i = index % len(self.cases)
        a = self.arrays(i)
        item: dict[str, Any] = {"image": torch.from_numpy(a["image"].astype(np.float32)),
                                "mask": torch.from_numpy(a["mask"].astype(np.int64))}
        if self.train:
            seed = int(self.rng().integers(2**31 - 1))
            item = self._patch({**item, "vert": torch.from_numpy(a["vert"].astype(np.int64))}, seed)
            self._fake_fracture(item, self.cases[i], a["spacing"], np.random.default_rng(seed))
            item.pop("vert")
            self._augment.set_random_state(seed=seed)
            item = {k: _plain(v) for k, v in self._augment(item).items()}
            item["mask"] = item["mask"].round().long()
        return {**item, "spacing": torch.as_tensor(a["spacing"], dtype=torch.float32),
                "shape": torch.as_tensor(item["mask"].shape[1:]), "id": self.cases[i].id}

    def _patch(self, item: dict[str, Any], seed: int) -> dict[str, Any]:
        """A ``patch`` window, padded where the crop is smaller, on a fracture voxel with probability
        ``fg_ratio`` (a study without one: anywhere)."""
        from monai import transforms as T

        from spinelab.tasks.cervical.seg3d.seg_stage import _plain

        keys = ["image", "mask", "vert"]
        patch = self.sec.patch
        pad = T.SpatialPadd(keys, spatial_size=patch, mode="constant")
        padded = pad(item)
        if not bool((padded["mask"] > 0).any()):
            crop: Any = T.RandSpatialCropd(keys, roi_size=patch, random_size=False)
        else:
            fg = self.sec.fg_ratio
            crop = T.RandCropByPosNegLabeld(keys, label_key="mask", spatial_size=patch, pos=fg, neg=1.0 - fg,
                                            num_samples=1, allow_smaller=False)
        crop.set_random_state(seed=seed)
        out = crop(padded)
        out = out[0] if isinstance(out, list) else out
        return {k: _plain(out[k]) for k in keys}

    def _fake_fracture(self, item: dict[str, Any], case: FracCase, spacing: np.ndarray,
                       rng: np.random.Generator) -> None:
        """With probability ``fake_fracture.prob``, a lucent slab through an intact vertebra, added to the mask."""
        from spinelab.data.fake_fracture3d import paint_slab

        ff = self.sec.fake_fracture
        if ff.prob <= 0 or rng.random() >= ff.prob:
            return
        vert = item["vert"][0].numpy()
        intact = [v for v in range(1, N_CERVICAL + 1) if v not in case.fractured and (vert == v).any()]
        if not intact:
            return
        region = vert == intact[int(rng.integers(len(intact)))]
        image = item["image"].numpy().copy()
        painted = paint_slab(image, self.cfg.grid.windows, region, spacing, rng, thickness_mm=ff.thickness_mm,
                             radius_mm=ff.radius_mm, bone_hu=ff.bone_hu, fill_hu=ff.fill_hu)
        if painted.any():
            item["image"] = torch.from_numpy(image)
            item["mask"] = item["mask"] | torch.from_numpy(painted[None].astype(np.int64))


def fracture_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (NaN when both are empty)."""
    total = int(pred.sum()) + int(truth.sum())
    return 2.0 * int((pred & truth).sum()) / total if total else float("nan")


class FractureSegStage(Stage):
    """The fracture segmentation stage of round ``round`` (section ``fracture_seg`` in every round)."""

    monitor = "val/dice_error"

    def __init__(self, cfg: FracsegConfig, run_dir: Path, *, round: int = 1) -> None:
        super().__init__(cfg, run_dir)
        if round < 1:
            raise ConfigError(f"pseudo-labelling rounds count from 1, got {round}")
        self.round = int(round)
        self.name = round_name(self.round)
        self._loss: nn.Module | None = None

    @property
    def section(self) -> FractureSegConfig:
        return self.cfg.fracture_seg

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": self.cfg.grid.in_chans, "n_classes": self.section.n_classes}

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        from spinelab.tasks.cervical.studies import CervicalStudies

        if self.round > self.cfg.rounds:
            raise ConfigError(f"stage {self.name}: the recipe has rounds: {self.cfg.rounds}; set rounds: {self.round}")
        studies = CervicalStudies(self.cfg)  # type: ignore[arg-type]
        train_ids, val_ids = studies.split(list(studies.labels.index), fold)
        train = round_cases(self.cfg, self.run_dir, self.round, train_ids, train=True)
        val = round_cases(self.cfg, self.run_dir, self.round, val_ids, train=False)
        if not [c for c in train if c.target is not None]:
            where = fracture_masks_dir(self.cfg) if self.round == 1 else labels_dir(self.run_dir, self.round)
            raise InputError(where, f"no fracture target to train {self.name} on in this fold (no boxed study "
                                    "whose fractured vertebrae all got voxels)")
        seed = stage_seed(self.train_config.seed, fold)
        return (FractureDataset(train, self.cfg, train=True, seed=seed),
                FractureDataset(val, self.cfg, train=False) if val else None)

    def collate_fn(self) -> Any:
        from spinelab.tasks.cervical.seg3d.seg_stage import pad_collate

        return pad_collate

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        if model.training:
            return model(batch["image"])
        from spinelab.infer.runtime import Runtime

        runtime = Runtime(device=str(batch["image"].device), precision="fp32", channels_last=False)
        sec = self.section
        return runtime.sliding_window(model, batch["image"], sec.patch, sw_batch_size=sec.sw_batch_size,
                                      overlap=sec.sw_overlap, mode="gaussian")

    def loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._loss is None:
            from monai.losses import DiceCELoss

            self._loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False,
                                    lambda_dice=self.section.dice_weight, lambda_ce=self.section.ce_weight)
        target = batch["mask"]
        heads = [outputs["mask"]]
        if "deep" in outputs:  # (B, levels, C, D, H, W), already at the input size
            heads += list(outputs["deep"].unbind(1))
        weights = [0.5 ** i for i in range(len(heads))]
        total = sum(w * self._loss(h.float(), target) for w, h in zip(weights, heads, strict=True))
        return {"loss": total / sum(weights)}

    def predictions(self, outputs: dict[str, Any], batch: dict[str, Any]) -> pd.DataFrame:
        prob = torch.softmax(outputs["mask"].float(), dim=1)[:, 1].cpu().numpy()
        truth = batch["mask"][:, 0].cpu().numpy() > 0
        rows = []
        for b, uid in enumerate(batch["id"]):
            d, h, w = (int(s) for s in batch["shape"][b])
            p, t = prob[b, :d, :h, :w] > self.cfg.threshold, truth[b, :d, :h, :w]
            rows.append({"StudyInstanceUID": uid, "dice": fracture_dice(p, t), "true_voxels": int(t.sum()),
                         "pred_voxels": int(p.sum()), "max_prob": float(prob[b, :d, :h, :w].max()),
                         "voxels": int(d * h * w)})
        return pd.DataFrame(rows)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        return round_metrics(predictions)


def round_metrics(oof: pd.DataFrame) -> dict[str, float]:
    """Held-out fracture Dice on the boxed studies (mean over studies with target voxels) and the share of
    voxels predicted fracture in the negatives."""
    boxed = oof[oof["true_voxels"] > 0]
    neg = oof[oof["true_voxels"] == 0]
    dice = float(boxed["dice"].fillna(0.0).mean()) if len(boxed) else 0.0
    out = {"dice": dice, "dice_error": 1.0 - dice, "boxed_studies": float(len(boxed))}
    if len(neg):
        out["negative_fp_share"] = float(neg["pred_voxels"].sum() / max(int(neg["voxels"].sum()), 1))
    return out


def write_round_scores(run_dir: Path, stage: str) -> dict[str, Any]:
    """Concatenate a round's held-out rows (``<stage>/fold_*/oof.csv``) into ``<stage>/oof.csv`` and write
    ``<stage>/cv_scores.json``: the boxed studies' fracture Dice, the negatives' false-positive share, per fold."""
    root = Path(run_dir) / stage
    frames = [pd.read_csv(p) for p in sorted(root.glob("fold_*/oof.csv"))]
    frames = [f for f in frames if len(f)]
    if not frames:
        return {}
    oof = pd.concat(frames, ignore_index=True)
    atomic_write_csv(root / "oof.csv", oof)
    scores: dict[str, Any] = {"schema_version": ROUND_SCHEMA_VERSION, "studies": len(oof), **round_metrics(oof),
                              "folds": {p.parent.name: json.loads(p.read_text())
                                        for p in sorted(root.glob("fold_*/scores.json"))}}
    atomic_write_json(root / "cv_scores.json", scores)
    return scores


def write_round_labels(cfg: FracsegConfig, run_dir: Path, k: int, *, progress: bool = True) -> dict[str, Any]:
    """Round ``k``'s training labels (``k >= 2``) from round ``k - 1``.

    Every study labelled fractured that has a vertebra mask gets round ``k - 1``'s out-of-fold probability on
    its crop (the model of the fold that held it out; ``oof_maps_dir``). Its label: voxels above ``threshold`` on
    the vertebrae labelled fractured, each carrying its vertebra; a study where a labelled vertebra gets no voxel
    is dropped. A study whose fold was not trained in round ``k - 1`` keeps its box pseudo-mask when that is
    usable. Studies already done with the same weights and settings are kept (a killed step resumes).

    Raises:
        InputError: round ``k - 1`` has no cross-validated fold.
    """
    from spinelab.infer.batch import progress_bar, weights_sha256
    from spinelab.io.nifti import read_nifti, write_nifti
    from spinelab.tasks.cervical.fracseg.fracture_map import crop_probability
    from spinelab.tasks.cervical.studies import CervicalStudies
    from spinelab.train.run_folder import fold_dir, load_stage_models, trained_folds

    prev = FractureSegStage(cfg, run_dir, round=k - 1)
    folds = [f for f in trained_folds(run_dir, prev.name) if f is not None]
    if not folds:
        raise InputError(Path(run_dir) / prev.name, f"round {k} needs round {k - 1}'s out-of-fold predictions: "
                                                    "train it with cross-validated folds (--fold all or 0,1,...)")
    studies = CervicalStudies(cfg)  # type: ignore[arg-type]
    labels = studies.labels
    weights = weights_sha256(run_dir, [fold_dir(run_dir, prev.name, f) / "model.pt" for f in folds])
    settings = {"schema_version": ROUND_SCHEMA_VERSION, "from": prev.name, "threshold": cfg.threshold,
                "grid": cfg.grid.model_dump(mode="json"), "weights_sha256": weights}
    out, maps = labels_dir(run_dir, k), oof_maps_dir(run_dir, k - 1)
    index = read_mask_index(out)
    done: dict[str, Any] = index.get("studies", {}) if index.get("settings") == settings else {}
    boxes = fracture_masks_dir(cfg)
    boxed = set(usable_studies(boxes))
    fractured_ids = [u for u in labels.index if fractured_vertebrae(labels.loc[u])]
    todo = [u for u in fractured_ids if u not in done]
    out.mkdir(parents=True, exist_ok=True)
    maps.mkdir(parents=True, exist_ok=True)
    models: dict[int, nn.Module] = {}
    runtime = None
    with progress_bar() as bar:
        task = bar.add_task(f"labels for {round_name(k)}", total=len(todo), visible=progress and bool(todo))
        for uid in todo:
            fold, fractured = studies.folds.get(uid), fractured_vertebrae(labels.loc[uid])
            path = vertebra_mask_path(cfg, uid)
            rec: dict[str, Any] = {"fractured": sorted(fractured)}
            if path is None:
                rec["status"] = "no_vertebra_mask"
            elif fold not in folds:
                if uid in boxed:  # the box pseudo-mask, moved onto this crop as it is
                    box = read_nifti(boxes / f"{uid}.nii.gz", is_label=True)
                    write_nifti(box, out / f"{uid}.nii.gz")
                    rec.update(status="ok", source="boxes")
                else:
                    rec["status"] = "no_oof_model"
            else:
                if fold not in models:
                    from spinelab.infer.runtime import Runtime

                    models[fold] = load_stage_models(prev, [fold])[0]
                    runtime = runtime or Runtime(device="cpu" if cfg.trainer.accelerator == "cpu" else "auto",
                                                 channels_last=False)
                ct = studies.volume(uid)
                crop = prepare_crop(ct, study_vertebrae(path, ct), cfg.grid)
                prob = crop_probability([models[fold]], crop.image, cfg.fracture_seg, runtime, tta=False)
                write_nifti(crop.grid.volume(prob.astype(np.float32), is_label=False), maps / f"{uid}.nii.gz")
                lab = np.where(prob > cfg.threshold, crop.vertebrae, 0).astype(np.uint8)
                lab[~np.isin(lab, sorted(fractured))] = 0
                covered = sorted(int(v) for v in np.unique(lab) if v)
                rec.update(source="oof", fold=int(fold), covered=covered, voxels=int(np.count_nonzero(lab)))
                if fractured <= set(covered):
                    write_nifti(crop.grid.volume(lab, is_label=True), out / f"{uid}.nii.gz")
                    rec["status"] = "ok"
                else:
                    (out / f"{uid}.nii.gz").unlink(missing_ok=True)
                    rec["status"] = "dropped"
            done[uid] = rec
            bar.advance(task)
            atomic_write_json(out / "index.json", {"settings": settings, "studies": done})  # resumable per study
    result = {"settings": settings, "studies": done}
    atomic_write_json(out / "index.json", result)
    return result
