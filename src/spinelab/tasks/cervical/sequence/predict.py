"""Prediction of the ``cervical/sequence`` route (``SequencePredictor``; no Lightning or training-loop import).

Per study: the input rules, stage 1 (the slice route's localiser: ranges, box), the z-range, the route slices'
2.5D images, then for every seed and fold the slice CNN once over those slices; its features go (a) through the
slice model's GRU and heads in sliding windows (overlaps averaged: the per-slice fracture curves) and (b), with
those curves' logits appended when ``study.slice_curves``, as ``study.max_steps`` steps into that seed's study head
of the same fold (the probabilities). Seeds, folds and,
with TTA, left-right mirrored images are averaged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinelab import __version__
from spinelab.infer.batch import weights_sha256
from spinelab.infer.checks import InputCheck, check_cervical_input, check_cervical_localization
from spinelab.infer.result import StudyResult
from spinelab.infer.runtime import Runtime
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.tasks.cervical.localization import LocalizerStage, localize, summarize_localization
from spinelab.tasks.cervical.predict import CONVENTIONS, localized_result
from spinelab.tasks.cervical.sequence.inputs import (
    fit_steps,
    head_steps,
    slice_images,
    study_embeddings,
    study_positions,
    windowed_outputs,
)
from spinelab.tasks.cervical.sequence.labels import z_range
from spinelab.tasks.cervical.sequence.slice_stage import SliceSequenceStage
from spinelab.tasks.cervical.sequence.study_stage import StudyHeadStage
from spinelab.tasks.cervical.studies import prepare_cervical_volume
from spinelab.tasks.cervical.study_predictor import CervicalStudyPredictor
from spinelab.train.run_folder import (
    fold_dir,
    load_stage_models,
    read_prior,
    read_run_config,
    select_folds,
    trained_folds,
)

__all__ = ["SequencePredictor"]

log = logging.getLogger("spinelab")


class SequencePredictor(CervicalStudyPredictor):
    """Loads a sequence run's stage-1, slice and study models once; predicts studies.

    Args:
        run_dir: a run folder of route ``cervical/sequence``.
        folds: folds to ensemble (default every fold whose study head was trained).
        runtime: device / precision / compile settings.
        tta: average with left-right mirrored slice images (stage 1 too when ``stage1.infer_flip``).
        strict: refuse a study on any input warning.
    """

    def __init__(self, run_dir: str | Path, *, folds: list[int | None] | None = None, runtime: Runtime | None = None,
                 tta: bool = True, strict: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = read_run_config(self.run_dir)
        self.runtime = runtime or Runtime()
        self.tta, self.strict = tta, strict
        s1 = LocalizerStage(self.cfg, self.run_dir)
        self.folds: dict[str, list[int | None]] = {s1.name: select_folds(self.run_dir, s1.name, folds)}
        self.stage1 = load_stage_models(s1, self.folds[s1.name])
        self.members: list[tuple[torch.nn.Module, torch.nn.Module]] = []  # (slice model, study head) pairs
        paths = [fold_dir(self.run_dir, s1.name, f) / "model.pt" for f in self.folds[s1.name]]
        for seed in self.cfg.slices.seeds:
            sl, st = SliceSequenceStage(self.cfg, self.run_dir, seed), StudyHeadStage(self.cfg, self.run_dir, seed)
            if not trained_folds(self.run_dir, st.name):
                continue
            chosen = [f for f in select_folds(self.run_dir, st.name, folds)
                      if (fold_dir(self.run_dir, sl.name, f) / "model.pt").is_file()]
            if not chosen:
                continue
            self.folds[sl.name] = self.folds[st.name] = chosen
            for a, b in zip(load_stage_models(sl, chosen), load_stage_models(st, chosen), strict=True):
                self.members.append((a, b))  # moved and converted by the runtime on first use
            paths += [fold_dir(self.run_dir, n, f) / "model.pt" for n in (sl.name, st.name) for f in chosen]
        if not self.members:
            from spinelab.errors import InputError

            raise InputError(self.run_dir, "no trained study head with its slice model; train stages slices and study")
        self.weights = weights_sha256(self.run_dir, paths)
        self.prior = read_prior(self.run_dir, dict.fromkeys(CERVICAL_TARGETS, 0.5))

    @property
    def model_info(self) -> dict[str, Any]:
        """The run, route, seeds, folds, options and weights' SHA-256 a result was made with."""
        return {"run_dir": str(self.run_dir), "route": "sequence", "experiment": self.cfg.experiment,
                "seeds": list(self.cfg.slices.seeds), "folds": self.folds, "tta": self.tta,
                "precision": self.runtime.precision, "strict": self.strict, "spinelab": __version__,
                "weights_sha256": self.weights}

    def locate(self, volume: Volume) -> dict[str, Any]:
        """Stage 1: vertebra slice ranges and the crop box (the slice route's)."""
        pred = localize(volume, self.stage1, self.cfg, tta=self.tta and self.cfg.stage1.infer_flip,
                        runtime=self.runtime)
        return summarize_localization(pred, volume, self.cfg)

    def classify(self, volume: Volume, summary: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """The 8 probabilities and the per-slice curves (``slice_curves`` of the result)."""
        s = self.cfg.slices
        z0, z1 = z_range(summary, volume.shape[0], volume.spacing[0], self.cfg.labels.z_margin_mm)
        positions = study_positions((z0, z1), s.slice_step)
        images = slice_images(volume, positions, summary["box"], self.cfg)
        views = [images, np.ascontiguousarray(images[..., ::-1])] if self.tta else [images]
        probs, fracture, ratio = [], [], []
        for slice_model, head in self.members:
            for view in views:
                feats = study_embeddings(slice_model, view, runtime=self.runtime)
                curves = windowed_outputs(slice_model, feats, s.window_len, s.window_stride)
                fracture.append(curves["fracture"])
                ratio.append(curves["ratio"])
                steps = head_steps(feats, curves if self.cfg.study.slice_curves else None)
                emb, mask = fit_steps(steps, self.cfg.study.max_steps)
                out = self.runtime.run(head, torch.from_numpy(emb)[None], torch.from_numpy(mask)[None])
                logits = torch.cat([out["vertebra"], out["overall"][:, None]], 1)
                probs.append(torch.sigmoid(logits)[0].cpu().numpy())
        frac, rat = np.mean(fracture, axis=0), np.mean(ratio, axis=0)
        curves = {"indices": positions.tolist(), "z_range": [z0, z1],
                  "fracture": {v: np.round(frac[:, j], 4).tolist() for j, v in enumerate(VERTEBRAE)},
                  "ratio": {v: np.round(rat[:, j], 4).tolist() for j, v in enumerate(VERTEBRAE)}}
        return np.clip(np.mean(probs, axis=0), 1e-4, 1 - 1e-4), curves

    def predict_volume(self, volume: Volume, study_id: str | None = None) -> StudyResult:
        """Probabilities for C1-C7 and the patient, the vertebra ranges, the crop box and the per-slice curves.

        Raises:
            StudyRefusedError: the study fails an input rule (any warning too with ``strict``).
        """
        check = check_cervical_input(volume)
        check.raise_if_refused(self.strict)
        volume = prepare_cervical_volume(volume)
        summary = self.locate(volume)
        after = InputCheck(warnings=summary["warnings"] + check_cervical_localization(summary, volume),
                           facts=check.facts)
        after.raise_if_refused(self.strict)
        probs, curves = self.classify(volume, summary)
        conventions = {**CONVENTIONS, "slice_curves": "per-slice probabilities of the slice models (seeds, folds "
                                                      "and flips averaged) at the canonical slice indices "
                                                      "`indices` (the route's slices of the z-range)"}
        return localized_result(volume, summary, probs, study_id=study_id, check=check, after=after,
                                model=self.model_info, conventions=conventions, slice_curves=curves)
