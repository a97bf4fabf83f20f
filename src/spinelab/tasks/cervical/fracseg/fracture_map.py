"""Fracture probability at inference: ``FractureMapper`` (a run folder's fracture models, loaded once).

One study goes: the canonical CT (``prepare_cervical_volume``) and its vertebra labels -> the crop
(``crop.prepare_crop``, the function training uses) -> MONAI sliding windows with Gaussian weighting
(``Runtime.sliding_window``), each fold on the crop and on its left-right mirror (``infer.tta.flip_outputs``),
fracture softmax averaged -> ``FractureMap``: the map on the crop with the crop's vertebra labels, and
``FractureMap.on(volume)``: the map on any grid of the patient by world position (linear; 0 outside the
crop), e.g. the DICOM series' stored grid for ``fracture_prob.nii.gz``.

The models are the last trained pseudo-labelling round's (``fracture_seg_r<k>``, else ``fracture_seg``) unless
``stage`` says otherwise. Nothing here imports Lightning or the training loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinelab.config.fracseg import MAX_ROUNDS, FractureSegConfig, round_name
from spinelab.errors import ConfigError
from spinelab.infer.runtime import Runtime
from spinelab.infer.tta import flip_outputs
from spinelab.io.geometry import resample_to
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.fracseg.crop import CropGrid, prepare_crop
from spinelab.tasks.cervical.studies import prepare_cervical_volume
from spinelab.train.run_folder import fold_dir, load_stage_models, read_run_config, select_folds, trained_folds

__all__ = ["FractureMap", "FractureMapper", "crop_probability", "last_round", "has_fracture_stage", "FRACTURE_FILE"]

#: What ``spinelab segment`` writes beside ``vertebrae.nii.gz`` for a run with a fracture stage.
FRACTURE_FILE = "fracture_prob.nii.gz"


def crop_probability(models: Sequence[torch.nn.Module], image: np.ndarray, sec: FractureSegConfig,
                     runtime: Runtime, *, tta: bool) -> np.ndarray:
    """Fracture probability ``(D, H, W)`` float32 of a crop image ``(C, D, H, W)``, averaged over the models
    and (with ``tta``) their left-right mirrors."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    total: list[torch.Tensor] = []

    def forward(model: torch.nn.Module, inp: tuple[torch.Tensor, bool]) -> None:
        volume, mirrored = inp
        logits = runtime.sliding_window(model, volume, sec.patch, sw_batch_size=sec.sw_batch_size,
                                        overlap=sec.sw_overlap, mode="gaussian")["mask"]
        prob = torch.softmax(logits[0].float(), dim=0)[1]
        prob = prob.flip(-1) if mirrored else prob
        if total:  # a running sum: one map in memory however many folds
            total[0] += prob
        else:
            total.append(prob)

    flip_outputs(models, (x, False), forward, tta=tta, mirror=lambda inp: (inp[0].flip(-1), True))
    return (total[0] / (len(models) * (2 if tta else 1))).cpu().numpy().astype(np.float32)


@dataclass
class FractureMap:
    """One study's fracture probability on its crop.

    Args:
        grid: the crop (shape, affine).
        probability: ``(D, H, W)`` float32 in [0, 1] on the crop.
        vertebrae: ``(D, H, W)`` the vertebra labels on the crop (1..7 = C1..C7).
    """

    grid: CropGrid
    probability: np.ndarray
    vertebrae: np.ndarray

    def volume(self) -> Volume:
        """The map on the crop as a ``Volume`` (for a NIfTI file on the crop's grid)."""
        return self.grid.volume(self.probability, is_label=False)

    def on(self, reference: Volume) -> Volume:
        """The map on ``reference``'s grid (e.g. the stored DICOM grid) by world position: linear, 0 outside
        the crop; float32."""
        out = resample_to(self.volume(), reference, order=1, fill=0.0)
        out.array = np.clip(out.array, 0.0, 1.0).astype(np.float32)
        out.meta = {"source": reference.meta.get("source"), "warnings": []}
        return out


def last_round(run_dir: str | Path) -> str | None:
    """The last pseudo-labelling round with trained weights in a run folder, or ``None``."""
    for k in range(MAX_ROUNDS, 0, -1):
        if trained_folds(run_dir, round_name(k)):
            return round_name(k)
    return None


def has_fracture_stage(run_dir: str | Path) -> bool:
    """Whether a run folder holds trained fracture segmentation weights."""
    return last_round(run_dir) is not None


class FractureMapper:
    """A run folder's fracture segmentation models, loaded once; ``map(volume, vertebrae)`` per study.

    Args:
        run_dir: a ``cervical/fracseg`` run with a trained fracture stage.
        folds: folds to average (default every trained fold; the full-data model when only it exists).
        runtime: device / precision / compile settings.
        tta: average each fold with its left-right mirrored crop.
        stage: the round to use (default the last trained one).

    Raises:
        ConfigError: the run has no fracture stage section or no trained round.
        InputError: weights that are missing or do not fit the config.
    """

    def __init__(self, run_dir: str | Path, *, folds: list[int | None] | None = None, runtime: Runtime | None = None,
                 tta: bool = True, stage: str | None = None) -> None:
        from spinelab.tasks.cervical.fracseg.fracture_stage import FractureSegStage

        self.run_dir = Path(run_dir)
        self.cfg = read_run_config(self.run_dir)
        if getattr(self.cfg, "fracture_seg", None) is None:
            raise ConfigError(f"{self.run_dir}: a run of route {getattr(self.cfg, 'route', None) or 'slices'} has no "
                              "fracture_seg stage; fracture maps need a cervical/fracseg run")
        self.stage = stage or last_round(self.run_dir)
        if self.stage is None:
            raise ConfigError(f"{self.run_dir}: no trained fracture_seg round; run `spinelab train` first")
        k = 1 if self.stage == "fracture_seg" else int(self.stage.removeprefix("fracture_seg_r"))
        self.runtime = runtime or Runtime(channels_last=False)
        self.tta = tta
        self.folds = select_folds(self.run_dir, self.stage, folds)
        self.models = load_stage_models(FractureSegStage(self.cfg, self.run_dir, round=k), self.folds)

    @property
    def model_info(self) -> dict[str, Any]:
        """The round and folds the maps are made with."""
        from spinelab.infer.batch import weights_sha256

        paths = [fold_dir(self.run_dir, self.stage, f) / "model.pt" for f in self.folds]  # type: ignore[arg-type]
        return {"stage": self.stage, "folds": self.folds, "tta": self.tta, "weights_sha256":
                weights_sha256(self.run_dir, paths)}

    def map_canonical(self, canonical: Volume, vertebrae: np.ndarray) -> FractureMap:
        """The map of a canonical CT whose vertebra labels ``vertebrae`` lie on its grid."""
        crop = prepare_crop(canonical, vertebrae, self.cfg.grid)
        prob = crop_probability(self.models, crop.image, self.cfg.fracture_seg, self.runtime, tta=self.tta)
        return FractureMap(grid=crop.grid, probability=prob, vertebrae=crop.vertebrae)

    def map(self, volume: Volume, vertebrae: Volume) -> FractureMap:
        """The map of one CT (HU, any orientation) with its vertebra label map (any grid of the same patient,
        e.g. ``Segmenter.segment(volume).labels``).

        Raises:
            InputError: the vertebra labels hold no C1-C7 voxel on the CT.
        """
        canonical = prepare_cervical_volume(volume)
        labels = np.asarray(resample_to(vertebrae, canonical, order=0).array)
        return self.map_canonical(canonical, labels)
