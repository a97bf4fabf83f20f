"""The ``cervical/fracseg`` route's predictor: vertebrae, fracture probability, then the 8 probabilities.

One study goes: the cervical input rules (``infer.checks``) -> the run's vertebra segmentation (``Segmenter``,
seg3d's ``seg`` stage trained in this run) -> the fracture map on the vertebra crop (``FractureMapper``, the last
pseudo-labelling round, flip TTA) -> the percentile rule (``percentile_rule.json``; the seed's numbers when the
run has none) -> the post-processing classifier (stage ``overall``, when trained: its targets replace the rule's)
-> a ``StudyResult`` with the slice route's keys (``vertebra_ranges``, ``missing_vertebrae``) and this route's
(``fracture_peaks``: each vertebra's highest fracture probability, ``suspicious_vertebra``, and, when an output
folder is set, ``fracture_map`` and ``fracture_vertebrae``: the map and the crop's vertebra labels written as
NIfTI on the crop; the cervical report overlays them, ``report.fracture_overlay``). The submission,
``predictions.csv`` and the evaluation are the cervical task's (``tasks.cervical.predict.OUTPUT``). Nothing here
imports Lightning or the training loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinelab import __version__
from spinelab.errors import ConfigError
from spinelab.infer.checks import InputCheck, check_cervical_input
from spinelab.infer.result import SCHEMA_VERSION, StudyResult
from spinelab.infer.runtime import Runtime
from spinelab.infer.tta import flip_outputs
from spinelab.io.geometry import resample_to
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.tasks.cervical.studies import prepare_cervical_volume
from spinelab.tasks.cervical.study_predictor import CervicalStudyPredictor
from spinelab.train.run_folder import read_prior, read_run_config, select_folds, trained_folds

__all__ = ["FracsegPredictor", "CONVENTIONS", "MAP_FOLDER"]

log = logging.getLogger("spinelab")
#: Where ``set_output_dir`` puts the studies' fracture maps, inside the prediction folder.
MAP_FOLDER = "fracture_maps"
CONVENTIONS = {
    "grid": "vertebra_ranges index the canonical grid (io.orientation.to_canonical: slices head to feet); "
            "slice_numbers are those slices' file names without suffix",
    "fracture_map": "NIfTI of the fracture probability (float32, 0..1) on the vertebra crop, with the crop's affine "
                    "(world LPS mm): it overlays any grid of the patient by world position",
    "fracture_peaks": "per vertebra, the highest fracture probability of a voxel labelled that vertebra",
}


class FracsegPredictor(CervicalStudyPredictor):
    """A ``cervical/fracseg`` run folder's models, loaded once; ``predict_study`` per study.

    Args:
        run_dir: the run folder (a ``seg`` section and stage, a trained fracture round).
        folds: folds of the fracture round and the classifier to average (default every trained fold).
        runtime: device / precision / compile settings.
        tta: flip TTA in the segmentation, the fracture map and the classifier.
        strict: refuse a study on any input warning, not only on a refusal rule.

    Raises:
        ConfigError: the run has no vertebra segmentation stage or no trained fracture round.
    """

    def __init__(self, run_dir: str | Path, *, folds: list[int] | None = None, runtime: Runtime | None = None,
                 tta: bool = True, strict: bool = False) -> None:
        from spinelab.tasks.cervical.fracseg.fracture_map import FractureMapper
        from spinelab.tasks.cervical.fracseg.percentile import RULE_FILE, PercentileRule
        from spinelab.tasks.cervical.seg3d.segment import Segmenter

        self.run_dir = Path(run_dir)
        self.cfg = read_run_config(self.run_dir)
        if getattr(self.cfg, "seg", None) is None:
            raise ConfigError(f"{self.run_dir}: the run has no seg section; a fracseg run segments its own vertebrae "
                              "(add the seg section of a seg3d recipe and train stage seg)")
        self.runtime = runtime or Runtime(channels_last=False)
        self.tta, self.strict = tta, strict
        self.segmenter = Segmenter(self.run_dir, runtime=self.runtime, tta=tta)
        self.mapper = FractureMapper(self.run_dir, folds=folds, runtime=self.runtime, tta=tta)
        fitted = (self.run_dir / RULE_FILE).is_file()
        self.rule = PercentileRule.load(self.run_dir) if fitted else PercentileRule(info={"fitted": False})
        self.classifier, self.classifier_folds = self._classifier(folds)
        self.prior = read_prior(self.run_dir, dict.fromkeys(CERVICAL_TARGETS, 0.5))
        self.map_dir: Path | None = None
        self._info = {
            "run_dir": str(self.run_dir), "experiment": self.cfg.experiment, "route": "cervical/fracseg",
            "folds": {"seg": self.segmenter.folds, **{self.mapper.stage: self.mapper.folds},
                      **({"overall": self.classifier_folds} if self.classifier else {})},
            "tta": tta, "precision": self.runtime.precision, "strict": strict, "spinelab": __version__,
            "weights_sha256": {"seg": self.segmenter.weights,
                               self.mapper.stage: self.mapper.model_info["weights_sha256"],
                               **({"overall": self._classifier_sha()} if self.classifier else {})},
            "percentile_rule": "fitted" if self.rule.info.get("fitted", True) else "the seed's hand-tuned numbers",
        }

    def _classifier(self, folds: list[int] | None) -> tuple[list[torch.nn.Module], list[int | None]]:
        from spinelab.tasks.cervical.fracseg.overall_stage import STAGE, OverallStage
        from spinelab.train.run_folder import load_stage_models

        if not self.cfg.overall.enabled or not trained_folds(self.run_dir, STAGE):
            return [], []
        chosen = select_folds(self.run_dir, STAGE, folds)
        return load_stage_models(OverallStage(self.cfg, self.run_dir), chosen), chosen

    def _classifier_sha(self) -> str:
        from spinelab.infer.batch import weights_sha256
        from spinelab.tasks.cervical.fracseg.overall_stage import STAGE
        from spinelab.train.run_folder import fold_dir

        return weights_sha256(self.run_dir, [fold_dir(self.run_dir, STAGE, f) / "model.pt"
                                             for f in self.classifier_folds])

    @property
    def model_info(self) -> dict[str, Any]:
        """The run, folds, options and weights' SHA-256 a result was made with."""
        return self._info

    def set_output_dir(self, out: str | Path) -> None:
        """Write each study's fracture map into ``out/fracture_maps/`` (the prediction path calls this)."""
        self.map_dir = Path(out) / MAP_FOLDER

    def classify(self, prob: np.ndarray, vertebrae: np.ndarray) -> dict[str, float]:
        """The classifier's probabilities (``patient_overall``, and C1..C7 with a vertebra head), averaged over
        folds and left-right mirrors; ``{}`` without a trained classifier."""
        from spinelab.tasks.cervical.fracseg.overall_stage import overall_input

        if not self.classifier:
            return {}
        x = torch.from_numpy(overall_input(prob, vertebrae, self.cfg.overall.size))[None]

        def forward(model: torch.nn.Module, inp: torch.Tensor) -> dict[str, np.ndarray]:
            out = self.runtime.run(model, inp)
            return {k: torch.sigmoid(v.float())[0].cpu().numpy() for k, v in out.items()}

        outs = flip_outputs(self.classifier, x, forward, tta=self.tta)  # a mirror changes no fracture label
        result = {"patient_overall": float(np.mean([o["overall"] for o in outs]))}
        if "vertebra" in outs[0]:
            mean = np.mean([o["vertebra"] for o in outs], axis=0)
            result.update({v: float(mean[i]) for i, v in enumerate(VERTEBRAE)})
        return result

    def predict_volume(self, volume: Volume, study_id: str | None = None) -> StudyResult:
        """The 8 probabilities of one CT (HU, any orientation), with the vertebrae and the fracture peaks.

        Raises:
            StudyRefusedError: the study fails an input rule (any warning too with ``strict``).
        """
        check = check_cervical_input(volume)
        check.raise_if_refused(self.strict)
        seg = self.segmenter.segment(volume)
        canonical = prepare_cervical_volume(volume)
        labels = np.asarray(resample_to(seg.labels, canonical, order=0).array)
        fmap = self.mapper.map_canonical(canonical, labels)
        probs = self.rule.predict(fmap.probability, fmap.vertebrae)
        probs.update(self.classify(fmap.probability, fmap.vertebrae))
        probs = {t: float(np.clip(probs[t], 1e-4, 1 - 1e-4)) for t in CERVICAL_TARGETS}
        after = InputCheck(warnings=[str(i) for i in seg.issues], facts=check.facts)
        after.raise_if_refused(self.strict)
        warnings = check.warnings + after.warnings
        for w in warnings:
            log.warning("%s: %s", study_id or "study", w)
        ranges, ids = {}, canonical.slice_ids
        for k, v in enumerate(VERTEBRAE, start=1):
            present = np.flatnonzero((labels == k).any(axis=(1, 2)))
            if len(present):
                a, b = int(present[0]), int(present[-1])
                ranges[v] = {"start_index": a, "end_index": b, "slice_numbers": [ids[a], ids[b]] if ids else None}
        peaks = {v: round(float(fmap.probability[fmap.vertebrae == k].max()), 4)
                 for k, v in enumerate(VERTEBRAE, start=1) if (fmap.vertebrae == k).any()}
        own: dict[str, Any] = {}
        if self.map_dir is not None and study_id is not None:
            from spinelab.io.nifti import write_nifti

            path = write_nifti(fmap.volume(), self.map_dir / f"{study_id}.nii.gz")
            verts = write_nifti(fmap.grid.volume(fmap.vertebrae.astype(np.uint8), is_label=True),
                                self.map_dir / f"{study_id}.vertebrae.nii.gz")
            own.update(fracture_map=str(Path(path).resolve()), fracture_vertebrae=str(Path(verts).resolve()))
        return StudyResult(
            schema_version=SCHEMA_VERSION, study=study_id, status="warning" if warnings else "ok",
            probabilities=probs, vertebra_ranges=ranges, missing_vertebrae=[v for v in VERTEBRAE if v not in ranges],
            fracture_peaks=peaks, suspicious_vertebra=max(peaks, key=lambda v: (probs[v], peaks[v])) if peaks else None,
            warnings=warnings, input=check.facts, conventions=CONVENTIONS, model=self.model_info, **own)
