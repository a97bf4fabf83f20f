"""Stage ``overall``: the 7th place's post-processing classifier, and the route's cross-validated scores.

Input (``overall_input``, the one function training and inference share): two channels on the crop, the fracture
probability and the vertebra labels divided by 7, resized to ``overall.size`` (trilinear for the probability,
nearest for the labels). Training reads the last round's out-of-fold maps (``oof_maps.oof_pairs``: a study is
held out by the fracture model too, so the classifier learns on maps like the ones it will see). Augmentation
(``overall_augment``, the seed's): rotation and scaling, a random shift, left-right flips (a mirror changes no
label). Loss: BCE on ``patient_overall`` plus, with ``overall.vertebrae``,
``vertebra_weight`` times the mean BCE of C1..C7.

The route's out-of-fold probabilities (``RUN/oof.csv``, what ``spinelab ensemble fit`` reads) are the classifier's
held-out predictions where it predicts a target and the percentile rule's elsewhere (``combine``);
``RUN/cv_scores.json`` scores them, the rule alone and the prevalence constant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from spinelab.config.fracseg import FracsegConfig
from spinelab.config.fracseg_post import OverallConfig
from spinelab.data.seeding import SeededDataset, stage_seed
from spinelab.errors import InputError
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.train.stage import Stage

__all__ = ["OverallStage", "OverallDataset", "overall_input", "overall_augment", "combine", "write_route_scores",
           "STAGE", "CV_SCHEMA_VERSION"]

STAGE = "overall"
CV_SCHEMA_VERSION = 1


def overall_input(prob: np.ndarray, vertebrae: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """The classifier's input ``(2, *size)`` float32 from a probability map and its vertebra labels (same grid)."""
    if prob.shape != vertebrae.shape:
        raise ValueError(f"probability map {prob.shape} and vertebra labels {vertebrae.shape} differ in shape")
    p = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[None, None]
    v = torch.from_numpy(np.ascontiguousarray(np.where(vertebrae <= 7, vertebrae, 0), dtype=np.float32))[None, None]
    p = nn.functional.interpolate(p, size=size, mode="trilinear", align_corners=False)
    v = nn.functional.interpolate(v, size=size, mode="nearest")
    return torch.cat([p.clamp(0, 1), v / 7.0], 1)[0].numpy()


def overall_augment(sec: OverallConfig) -> Any | None:
    """MONAI dictionary transforms on ``prob`` and ``vert`` (each ``(1, *size)``) together: with probability
    ``affine_prob`` a rotation (``±rotate_deg`` about each axis) and scaling (``1 ± scale``), bilinear for the map
    and nearest for the labels; a shift of up to ``shift_frac`` of the size (pad, then crop ``size`` at random);
    a left-right flip with ``flip_prob``. None when nothing is drawn."""
    from monai import transforms as T

    keys = ["prob", "vert"]
    steps: list[Any] = []
    if sec.affine_prob > 0 and (sec.rotate_deg > 0 or sec.scale > 0):
        rad = float(np.deg2rad(sec.rotate_deg))
        steps.append(T.RandAffined(keys, prob=sec.affine_prob, rotate_range=(rad, rad, rad),
                                   scale_range=(sec.scale,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros"))
    pad = [int(round(s * sec.shift_frac)) for s in sec.size]
    if any(pad):
        steps += [T.BorderPadd(keys, spatial_border=[p for p in pad for _ in (0, 1)], mode="constant"),
                  T.RandSpatialCropd(keys, roi_size=sec.size, random_size=False)]
    if sec.flip_prob > 0:
        steps.append(T.RandFlipd(keys, prob=sec.flip_prob, spatial_axis=2))
    return T.Compose(steps) if steps else None


class OverallDataset(SeededDataset, Dataset):
    """Studies' out-of-fold maps as classifier inputs (prepared on first use, kept in memory as float16).

    Args:
        pairs: study id -> (probability map, vertebra labels) NIfTI paths.
        labels: train.csv rows indexed by study.
        size: the input grid.
        augment: ``overall_augment``'s transforms for training items (None: the inputs as they are).
        seed: base seed of the augmentation.
    """

    def __init__(self, pairs: dict[str, tuple[Path, Path]], labels: pd.DataFrame, size: tuple[int, int, int], *,
                 augment: Any | None = None, seed: int = 0) -> None:
        self.ids = list(pairs)
        self.pairs, self.size, self.augment, self.seed = pairs, size, augment, int(seed)
        self.targets = np.array(labels.loc[self.ids, list(CERVICAL_TARGETS)].to_numpy(np.float32))  # writable
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> np.ndarray:
        if i not in self._cache:
            from spinelab.io.nifti import read_nifti

            m, v = self.pairs[self.ids[i]]
            self._cache[i] = overall_input(np.asarray(read_nifti(m).array),
                                           np.asarray(read_nifti(v, is_label=True).array), self.size).astype(np.float16)
        return self._cache[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.from_numpy(self.image(i).astype(np.float32))
        if self.augment is not None:
            from spinelab.tasks.cervical.seg3d.seg_stage import _plain

            self.augment.set_random_state(seed=int(self.rng().integers(2**31 - 1)))
            out = self.augment({"prob": x[:1], "vert": x[1:]})
            x = torch.cat([_plain(out["prob"]), _plain(out["vert"])]).float().contiguous()
        return {"image": x, "target": torch.from_numpy(self.targets[i]), "id": self.ids[i]}


class OverallStage(Stage):
    """The post-processing classifier (section ``overall``)."""

    name = STAGE

    def __init__(self, cfg: FracsegConfig, run_dir: Path) -> None:
        super().__init__(cfg, run_dir)

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": 2, "vertebrae": self.section.vertebrae}

    def datasets(self, fold: int | None) -> tuple[Dataset, Dataset | None]:
        from spinelab.tasks.cervical.fracseg.oof_maps import oof_pairs
        from spinelab.tasks.cervical.studies import CervicalStudies

        studies = CervicalStudies(self.cfg)  # type: ignore[arg-type]
        pairs = {u: p for u, p in oof_pairs(self.run_dir, self.cfg.rounds).items() if u in studies.labels.index}
        if not pairs:
            raise InputError(self.run_dir, "stage overall has no out-of-fold fracture map to train on (run the "
                                           "step percentile first: --stage all or --stage overall)")
        train_ids, val_ids = studies.split(list(pairs), fold)
        sec, seed = self.section, stage_seed(self.train_config.seed, fold)
        train = OverallDataset({u: pairs[u] for u in train_ids}, studies.labels, sec.size,
                               augment=overall_augment(sec), seed=seed)
        val = OverallDataset({u: pairs[u] for u in val_ids}, studies.labels, sec.size) if val_ids else None
        return train, val

    def collate_fn(self) -> Any:
        def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
            return {"image": torch.stack([it["image"] for it in items]),
                    "target": torch.stack([it["target"] for it in items]), "id": [it["id"] for it in items]}

        return collate

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return model(batch["image"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        bce = nn.functional.binary_cross_entropy_with_logits
        target = batch["target"].float()
        terms = {"overall": bce(outputs["overall"].float(), target[:, 7])}
        total = terms["overall"]
        if "vertebra" in outputs:
            terms["vertebra"] = bce(outputs["vertebra"].float(), target[:, :7])
            total = total + self.section.vertebra_weight * terms["vertebra"]
        return {"loss": total, **terms}

    def predictions(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> pd.DataFrame:
        rows = {"StudyInstanceUID": list(batch["id"]),
                "patient_overall": torch.sigmoid(outputs["overall"].float()).cpu().numpy()}
        if "vertebra" in outputs:
            probs = torch.sigmoid(outputs["vertebra"].float()).cpu().numpy()
            rows.update({v: probs[:, i] for i, v in enumerate(VERTEBRAE)})
        target = batch["target"].cpu().numpy()
        rows.update({f"true_{t}": target[:, i].astype(int) for i, t in enumerate(CERVICAL_TARGETS)})
        return pd.DataFrame(rows)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        p = np.clip(predictions["patient_overall"].to_numpy(np.float64), 1e-4, 1 - 1e-4)
        y = predictions["true_patient_overall"].to_numpy(np.float64)
        return {"overall_logloss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())}


def combine(rule: pd.DataFrame, classifier: pd.DataFrame | None) -> pd.DataFrame:
    """Per study, the classifier's probability where it gives one (a column it has, a study it predicted),
    the rule's elsewhere; both indexed by study with target columns."""
    out = rule[list(CERVICAL_TARGETS)].copy()
    if classifier is None or not len(classifier):
        return out
    shared = out.index.intersection(classifier.index)
    for t in CERVICAL_TARGETS:
        if t in classifier.columns:
            out.loc[shared, t] = classifier.loc[shared, t].to_numpy()
    return out


def write_route_scores(cfg: FracsegConfig, run_dir: Path) -> dict[str, Any]:
    """``RUN/oof.csv`` (the route's out-of-fold probabilities: ``combine`` of ``percentile/oof.csv`` and
    ``overall/fold_*/oof.csv``) and ``RUN/cv_scores.json`` (the route, the rule alone, the prevalence constant)."""
    from spinelab.io.atomic import atomic_write_csv, atomic_write_json
    from spinelab.metrics import cervical_prevalence_constant, cervical_score
    from spinelab.tasks.cervical.fracseg.oof_maps import PERCENTILE_DIR
    from spinelab.tasks.cervical.fracture import evaluate_cervical

    run_dir = Path(run_dir)
    rule_path = run_dir / PERCENTILE_DIR / "oof.csv"
    if not rule_path.is_file():
        return {}
    rule = pd.read_csv(rule_path, dtype={"StudyInstanceUID": str}).set_index("StudyInstanceUID")
    frames = [pd.read_csv(p, dtype={"StudyInstanceUID": str}) for p in sorted((run_dir / STAGE).glob("fold_*/oof.csv"))]
    frames = [f for f in frames if len(f)]
    clf = pd.concat(frames).set_index("StudyInstanceUID") if frames and cfg.overall.enabled else None
    if clf is not None:
        atomic_write_csv(run_dir / STAGE / "oof.csv", clf.reset_index())
    wide = combine(rule, clf)
    truth_cols = [f"true_{t}" for t in CERVICAL_TARGETS]
    oof = pd.concat([wide, rule[truth_cols]], axis=1).reset_index()
    atomic_write_csv(run_dir / "oof.csv", oof)
    truth = oof[["StudyInstanceUID", *truth_cols]].copy()
    truth.columns = ["StudyInstanceUID", *CERVICAL_TARGETS]
    constant = float(cervical_score(truth, cervical_prevalence_constant(truth)))
    scores: dict[str, Any] = {"schema_version": CV_SCHEMA_VERSION, "studies": len(oof), **evaluate_cervical(oof),
                              "percentile_rule": evaluate_cervical(rule.reset_index()),
                              "classifier_studies": 0 if clf is None else len(clf),
                              "prevalence_constant_score": constant}
    scores["relative_improvement"] = 1 - scores["competition_score"] / constant
    scores["folds"] = {p.parent.name: json.loads(p.read_text())
                       for p in sorted((run_dir / STAGE).glob("fold_*/scores.json"))}
    atomic_write_json(run_dir / "cv_scores.json", scores)
    return scores
