"""A trained nnU-Net v2 model folder in place of spinelab's segmentation stage.

``NnunetModel`` runs ``nnunetv2``'s ``nnUNetPredictor`` (its preprocessing, Gaussian sliding windows and mirror
TTA) on a spinelab ``Volume`` and gives class probabilities on the volume's stored grid. The array goes in as
stored: the grid ``spinelab export nnunet`` writes its NIfTI files on and the order SimpleITK (nnU-Net's reader)
gives them back, ``(slice, row, column)`` with the spacing in that order.

* ``NnunetSegmenter``: a vertebra model (labels C1..C7, ``export nnunet --task vertebrae``) with the
  ``Segmenter``'s interface, so ``spinelab segment --model NNUNET_FOLDER`` writes the same outputs (largest
  part per label, per-vertebra statistics, the vertebra check).
* ``NnunetFractureMap``: a fracture model (label ``fracture``, ``--task fractures``): the fracture probability
  on the stored grid, the input of the fracseg route's percentile rule.

This module is the only one that imports ``nnunetv2`` (an optional extra), and only when a model is loaded.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from spinelab import __version__
from spinelab.errors import ConfigError, InputError
from spinelab.infer.batch import weights_sha256
from spinelab.infer.runtime import Runtime
from spinelab.interop.nnunet import read_json
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.seg3d.segment import Segmenter, SegmentResult
from spinelab.tasks.cervical.seg3d.vertebrae import check_vertebrae, keep_largest_components, vertebra_stats

__all__ = ["NnunetModel", "NnunetSegmenter", "NnunetFractureMap", "is_nnunet_model_folder", "NNUNET_MISSING"]

NNUNET_MISSING = "nnU-Net v2 is not installed; install the extra: pip install 'spinelab[nnunet]'"
CHECKPOINT = "checkpoint_final.pth"


def is_nnunet_model_folder(path: str | Path) -> bool:
    """A trained nnU-Net v2 model folder (``nnUNet_results/DatasetX/Trainer__Plans__Config``): it holds
    ``plans.json`` and ``dataset.json``."""
    path = Path(path)
    return (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def _predictor_class() -> Any:
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError:
        raise ConfigError(NNUNET_MISSING) from None
    return nnUNetPredictor


class NnunetModel:
    """A trained nnU-Net v2 model folder, loaded once.

    Args:
        folder: the model folder (``plans.json``, ``dataset.json``, ``fold_N/checkpoint_final.pth``).
        folds: folds to average (default: every ``fold_N`` with a checkpoint, or ``all``).
        runtime: the device (``cpu`` or ``cuda``); precision settings do not apply (nnU-Net runs its own).
        tta: nnU-Net's mirror TTA over the axes its plans allow.
        checkpoint: the checkpoint file of each fold.

    Raises:
        ConfigError: ``nnunetv2`` is not installed.
        InputError: not a model folder, or no fold with the checkpoint.
    """

    def __init__(self, folder: str | Path, *, folds: list[int | str] | None = None, runtime: Runtime | None = None,
                 tta: bool = True, checkpoint: str = CHECKPOINT) -> None:
        self.folder = Path(folder)
        if not is_nnunet_model_folder(self.folder):
            raise InputError(self.folder, "not a trained nnU-Net v2 model folder (no plans.json and dataset.json)")
        self.folds = [str(f) for f in folds] if folds else self._trained_folds(checkpoint)
        paths = [self.folder / f"fold_{f}" / checkpoint for f in self.folds]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise InputError(missing[0], "checkpoint not found (train this fold with nnUNetv2_train first)")
        meta = read_json(self.folder / "dataset.json")
        if not isinstance(meta.get("labels"), dict):
            raise InputError(self.folder / "dataset.json", "has no labels mapping")
        self.labels: dict[str, int] = {str(k): int(v) for k, v in meta["labels"].items()}
        self.runtime = runtime or Runtime()
        self.tta = tta
        import torch

        predictor_class = _predictor_class()
        device = torch.device(self.runtime.device)
        with contextlib.redirect_stdout(sys.stderr):  # nnU-Net prints its notes; stdout carries results
            self.predictor = predictor_class(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                             perform_everything_on_device=device.type == "cuda", device=device,
                                             verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            self.predictor.initialize_from_trained_model_folder(
                str(self.folder), use_folds=tuple(int(f) if f.isdigit() else f for f in self.folds),
                checkpoint_name=checkpoint)
        self.weights = weights_sha256(self.folder, paths)

    def _trained_folds(self, checkpoint: str) -> list[str]:
        folds = sorted((p.parent.name[len("fold_"):] for p in self.folder.glob(f"fold_*/{checkpoint}")),
                       key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))
        if not folds:
            raise InputError(self.folder, f"no fold_*/{checkpoint} (train a fold with nnUNetv2_train first)")
        return folds

    @property
    def info(self) -> dict[str, Any]:
        """The model folder, folds, options and weights' SHA-256 a prediction was made with."""
        return {"nnunet_model": str(self.folder), "folds": {"nnunet": self.folds}, "tta": self.tta,
                "device": self.runtime.device, "spinelab": __version__, "weights_sha256": self.weights}

    def probabilities(self, volume: Volume) -> np.ndarray:
        """Class probabilities ``(K, D, H, W)`` float32 on ``volume``'s stored grid (K = the model's labels)."""
        image = np.asarray(volume.array, dtype=np.float32)[None]
        properties = {"spacing": [float(s) for s in volume.spacing]}
        with contextlib.redirect_stdout(sys.stderr):
            _, probs = self.predictor.predict_single_npy_array(image, properties, None, None, True)
        probs = np.asarray(probs, dtype=np.float32)
        if probs.shape[1:] != volume.shape:
            raise InputError(self.folder, f"nnU-Net returned probabilities of shape {probs.shape[1:]} for a volume "
                                          f"of shape {volume.shape}")
        return probs


class NnunetSegmenter(Segmenter):
    """A C1-C7 nnU-Net v2 model with the ``Segmenter``'s interface (``segment``, ``names``, ``model_info``).

    Raises:
        ConfigError: ``nnunetv2`` is not installed, or the model does not segment C1..C7.
        InputError: see ``NnunetModel``.
    """

    def __init__(self, folder: str | Path, *, folds: list[int | str] | None = None, runtime: Runtime | None = None,
                 tta: bool = True) -> None:
        self.model = NnunetModel(folder, folds=folds, runtime=runtime, tta=tta)
        wanted = {f"C{k}": k for k in range(1, 8)}
        if any(self.model.labels.get(name) != value for name, value in wanted.items()):
            raise ConfigError(f"{folder}: an nnU-Net model with labels {sorted(self.model.labels)}; spinelab segment "
                              "needs one trained on C1..C7 = 1..7 (spinelab export nnunet --task vertebrae)")
        self.run_dir, self.runtime, self.tta = self.model.folder, self.model.runtime, tta
        self.fracture = None  # a vertebra model: `spinelab segment` writes no fracture map beside it

    @property
    def model_info(self) -> dict[str, Any]:
        return self.model.info

    @property
    def names(self) -> dict[int, str]:
        return {v: k for k, v in self.model.labels.items() if v > 0}

    def segment(self, volume: Volume) -> SegmentResult:
        """Segment one CT (HU, any orientation) on its own stored grid.

        Raises:
            StudyRefusedError: not a CT in HU, or a single slice.
        """
        check = self.input_check(volume)
        check.raise_if_refused()
        argmax = self.model.probabilities(volume).argmax(axis=0).astype(np.uint8)
        labels = volume.with_array(argmax, is_label=True)
        labels.meta = {"source": volume.meta.get("source"), "warnings": []}
        labels, duplicates = keep_largest_components(labels)
        stats = vertebra_stats(labels)
        issues = duplicates + check_vertebrae(stats, expected=VERTEBRAE)
        return SegmentResult(labels=labels, vertebrae=stats, issues=issues, input_warnings=check.warnings,
                             facts=check.facts)


class NnunetFractureMap:
    """A fracture nnU-Net v2 model (label ``fracture``): ``probability(volume)`` on the stored grid.

    Raises:
        ConfigError: ``nnunetv2`` is not installed, or the model has no ``fracture`` label.
        InputError: see ``NnunetModel``.
    """

    def __init__(self, folder: str | Path, *, folds: list[int | str] | None = None, runtime: Runtime | None = None,
                 tta: bool = True) -> None:
        self.model = NnunetModel(folder, folds=folds, runtime=runtime, tta=tta)
        if "fracture" not in self.model.labels:
            raise ConfigError(f"{folder}: an nnU-Net model with labels {sorted(self.model.labels)} has no 'fracture' "
                              "label (train one on spinelab export nnunet --task fractures)")

    def probability(self, volume: Volume) -> Volume:
        """The fracture probability (float32 in [0, 1]) on ``volume``'s stored grid."""
        probs = self.model.probabilities(volume)[self.model.labels["fracture"]]
        out = volume.with_array(probs.astype(np.float32), is_label=False)
        out.meta = {"source": volume.meta.get("source"), "warnings": []}
        return out
