"""Cervical inference: ``CervicalPredictor`` (the slice route's predictor: load once, predict many), the
task's submission and metric (``OUTPUT``, for ``infer.batch.predict_dataset``) and the one-study function
``predict_cervical``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spinelab import __version__
from spinelab.errors import InputError
from spinelab.infer.batch import weights_sha256
from spinelab.infer.checks import InputCheck, check_cervical_input, check_cervical_localization
from spinelab.infer.result import SCHEMA_VERSION, StudyResult
from spinelab.infer.runtime import Runtime, run_inference_options
from spinelab.infer.tta import flip_outputs
from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.io.volume import Volume
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.tasks.cervical.fracture import FractureStage, fracture_inputs
from spinelab.tasks.cervical.localization import LocalizerStage, localize, summarize_localization
from spinelab.tasks.cervical.studies import prepare_cervical_volume
from spinelab.tasks.cervical.study_predictor import CervicalStudyPredictor
from spinelab.tasks.route import TaskOutput
from spinelab.train.run_folder import (
    fold_weight_files,
    load_stage_models,
    read_prior,
    read_run_config,
    select_folds,
)

__all__ = ["CervicalPredictor", "predict_cervical", "evaluate_cervical_predictions", "OUTPUT"]

log = logging.getLogger("spinelab")

#: What the boxes and indices of a study JSON mean (written into every result as ``conventions``).
CONVENTIONS = {
    "grid": "the canonical grid the models see (io.orientation.to_canonical: slices head to feet, rows toward "
            "posterior, columns toward the patient's left), not necessarily the order the files are stored in",
    "crop_box": "[x0, y0, x1, y1] in pixels of the canonical axial image: x along columns, y along rows, "
                "x0/y0 inclusive, x1/y1 exclusive (pixel i spans [i, i + 1))",
    "vertebra_ranges": "start_index/end_index: inclusive slice indices on the canonical grid (0 = most cranial); "
                       "slice_numbers: those slices' file names without suffix, as strings",
}


class CervicalPredictor(CervicalStudyPredictor):
    """Loads a run folder's stage-1 and stage-2 models once; predicts studies.

    Args:
        run_dir: folder written by ``spinelab train cervical``.
        folds: folds to ensemble (default every trained fold; the full-data model when only it exists).
        runtime: device / precision / compile settings.
        tta: average stage 2 with left-right flipped inputs (stage 1 too when ``stage1.infer_flip``).
        strict: refuse a study on any input warning (``infer.checks``), not only on a refusal rule.
    """

    def __init__(self, run_dir: str | Path, *, folds: list[int] | None = None, runtime: Runtime | None = None,
                 tta: bool = True, strict: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = read_run_config(self.run_dir)
        self.runtime = runtime or Runtime()
        self.tta, self.strict = tta, strict
        s1, s2 = LocalizerStage(self.cfg, self.run_dir), FractureStage(self.cfg, self.run_dir)
        self.folds = {stage.name: select_folds(self.run_dir, stage.name, folds) for stage in (s1, s2)}
        self.stage1 = load_stage_models(s1, self.folds["stage1"])
        self.stage2 = load_stage_models(s2, self.folds["stage2"])
        self.weights = weights_sha256(self.run_dir, fold_weight_files(self.run_dir, self.folds))
        self.prior = read_prior(self.run_dir, dict.fromkeys(CERVICAL_TARGETS, 0.5))

    @property
    def model_info(self) -> dict[str, Any]:
        """The run, folds, options and weights' SHA-256 a result was made with."""
        return {"run_dir": str(self.run_dir), "experiment": self.cfg.experiment, "folds": self.folds,
                "tta": self.tta, "precision": self.runtime.precision, "strict": self.strict,
                "spinelab": __version__, "weights_sha256": self.weights}

    def locate(self, volume: Volume) -> dict[str, Any]:
        """Stage 1: vertebra slice ranges and the crop box (``summarize_localization``'s dict)."""
        pred = localize(volume, self.stage1, self.cfg, tta=self.tta and self.cfg.stage1.infer_flip,
                        runtime=self.runtime)
        return summarize_localization(pred, volume, self.cfg)

    def classify(self, volume: Volume, summary: dict[str, Any]) -> np.ndarray:
        """Stage 2: probabilities ``(8,)`` in ``CERVICAL_TARGETS`` order, averaged over folds and flips."""
        images, found, _ = fracture_inputs(volume, summary, self.cfg)
        x, mask = torch.from_numpy(images)[None], torch.from_numpy(found)[None]

        def forward(model: torch.nn.Module, inp: torch.Tensor) -> np.ndarray:
            o = self.runtime.run(model, inp, mask=mask)
            return torch.sigmoid(torch.cat([o["vertebra"], o["overall"][:, None]], 1))[0].cpu().numpy()

        outs = flip_outputs(self.stage2, x, forward, tta=self.tta)  # a mirror changes no fracture label
        return np.clip(np.mean(outs, axis=0), 1e-4, 1 - 1e-4)

    def predict_volume(self, volume: Volume, study_id: str | None = None) -> StudyResult:
        """Probabilities for C1-C7 and the patient, plus vertebra slice ranges and the crop box.

        The input rules run first and the plausibility of stage 1's result after it (``infer.checks``).

        Raises:
            StudyRefusedError: the study fails an input rule (any warning too with ``strict``).
        """
        check = check_cervical_input(volume)  # on the series as stored: its slice axis is what was scanned
        check.raise_if_refused(self.strict)
        volume = prepare_cervical_volume(volume)  # the orientation the models were trained in
        summary = self.locate(volume)
        after = InputCheck(warnings=summary["warnings"] + check_cervical_localization(summary, volume),
                           facts=check.facts)
        after.raise_if_refused(self.strict)
        probs = self.classify(volume, summary)
        return localized_result(volume, summary, probs, study_id=study_id, check=check, after=after,
                                model=self.model_info)


def localized_result(volume: Volume, summary: dict[str, Any], probs: np.ndarray, *, study_id: str | None,
                     check: InputCheck, after: InputCheck, model: dict[str, Any],
                     conventions: dict[str, str] | None = None, **extra: Any) -> StudyResult:
    """The ``StudyResult`` of a route that localises with stage 1 (slices, sequence): the probabilities, stage 1's
    vertebra ranges (canonical indices and the series' slice numbers) and crop box, and the warnings of the input
    rules (``check``) and of the localisation (``after``), each logged once; ``extra`` adds route fields."""
    warnings = check.warnings + after.warnings
    for w in warnings:
        log.warning("%s: %s", study_id or "study", w)
    ids = volume.slice_ids
    ranges = {v: {"start_index": r[0], "end_index": r[1],
                  "slice_numbers": [ids[r[0]], ids[r[1]]] if ids else None}
              for v, r in summary["ranges"].items()}
    return StudyResult(
        schema_version=SCHEMA_VERSION,
        study=study_id,
        status="warning" if warnings else "ok",
        probabilities={t: float(p) for t, p in zip(CERVICAL_TARGETS, probs, strict=True)},
        vertebra_ranges=ranges,
        crop_box=[round(v, 1) for v in summary["box"]],
        missing_vertebrae=summary["missing"],
        warnings=warnings,
        input=check.facts,
        conventions=CONVENTIONS if conventions is None else conventions,
        model=model,
        **extra,
    )


def predict_cervical(study_dir: str | Path, model_dir: str | Path, *, device: str | None = None,
                     precision: str | None = None, compile: bool | None = None, tta: bool | None = None,
                     folds: list[int] | None = None, series: str | None = None,
                     strict: bool = False) -> StudyResult:
    """Predict one cervical CT study (a DICOM folder or file, or a NIfTI file) with a trained run folder (same
    options as the CLI).

    Raises:
        StudyRefusedError: the study fails an input rule (any warning too with ``strict``).
    """
    runtime, tta = run_inference_options(model_dir, device=device, precision=precision, compile=compile, tta=tta)
    predictor = CervicalPredictor(model_dir, folds=folds, runtime=runtime, tta=tta, strict=strict)
    return predictor.predict_study(study_dir, series=series)


def _frames(results: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Kaggle submission (``row_id, fractured``) and the wide table (one row per study)."""
    from spinelab.metrics import cervical_submission_frame

    wide = pd.DataFrame([{"StudyInstanceUID": r["study"], **r["probabilities"]} for r in results])
    return cervical_submission_frame(wide.set_index("StudyInstanceUID")), wide


def _evaluate(results: list[dict[str, Any]], label_path: Path, out: Path) -> Path:
    return evaluate_cervical_predictions(_frames(results)[1], label_path, out)


def _warn_listed_but_absent(input: Path, split: str, studies: list[tuple[str, Path]]) -> None:
    """The real test.csv lists studies that are not in test_images/: say so and carry on."""
    present = {s for s, _ in studies}
    listing = input / "test.csv"
    if split != "test" or not listing.is_file():
        return
    listed = set(pd.read_csv(listing)["StudyInstanceUID"].astype(str))
    absent = sorted(listed - present)
    if absent:
        log.warning("%s lists %d studies with no folder in test_images/ (skipped): %s", listing, len(absent),
                    ", ".join(absent[:5]))


def evaluate_cervical_predictions(wide: pd.DataFrame, label_path: Path, out: Path) -> Path:
    """Competition metric, AUCs and a calibration table for the predicted studies that have labels."""
    from sklearn.metrics import roc_auc_score

    from spinelab.data.cervical_layout import read_cervical_labels
    from spinelab.metrics import cervical_prevalence_constant, cervical_score, cervical_submission_frame
    from spinelab.report.calibration import calibration_table

    truth = read_cervical_labels(label_path)
    truth = truth[truth.StudyInstanceUID.isin(wide.StudyInstanceUID.astype(str))]
    probs = wide.set_index("StudyInstanceUID").loc[truth.StudyInstanceUID, list(CERVICAL_TARGETS)]
    result: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "labels": str(label_path), "studies": len(truth)}
    if len(truth):
        result["competition_score"] = float(cervical_score(truth, cervical_submission_frame(probs)))
        result["prevalence_constant_score"] = float(cervical_score(truth, cervical_prevalence_constant(truth)))
        aucs = {}
        for t in CERVICAL_TARGETS:
            y = truth[t].to_numpy()
            if 0 < y.sum() < len(y):
                aucs[t] = float(roc_auc_score(y, probs[t].to_numpy()))
        y_v, p_v = truth[list(VERTEBRAE)].to_numpy().ravel(), probs[list(VERTEBRAE)].to_numpy().ravel()
        if 0 < y_v.sum() < len(y_v):
            aucs["vertebra_level"] = float(roc_auc_score(y_v, p_v))
        result["auc"] = aucs
        calib = calibration_table(y_v, p_v)
        atomic_write_csv(out / "calibration.csv", calib)
        result["calibration"] = calib.to_dict(orient="records")
    return atomic_write_json(out / "evaluation.json", result)


def read_oof(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's stage-2 out-of-fold probabilities (``oof.csv``, indexed by study) and their labels.

    Raises:
        InputError: the run has no ``oof.csv`` (it was trained without held-out folds, or stage 2 did not run).
    """
    path = Path(run_dir) / "oof.csv"
    if not path.is_file():
        raise InputError(path, "no out-of-fold predictions: train stage 2 with held-out folds (--fold all or 0,1,..)")
    oof = pd.read_csv(path, dtype={"StudyInstanceUID": str})
    missing = [c for c in ("StudyInstanceUID", *CERVICAL_TARGETS, *(f"true_{t}" for t in CERVICAL_TARGETS))
               if c not in oof.columns]
    if missing:
        raise InputError(path, f"missing columns {missing}")
    labels = oof[["StudyInstanceUID", *(f"true_{t}" for t in CERVICAL_TARGETS)]]
    labels.columns = ["StudyInstanceUID", *CERVICAL_TARGETS]
    return oof.set_index("StudyInstanceUID")[list(CERVICAL_TARGETS)], labels.astype({t: int for t in CERVICAL_TARGETS})


def score_wide(labels: pd.DataFrame, wide: pd.DataFrame) -> float:
    """The competition metric of per-study probabilities ``wide`` (indexed by study) on those studies' labels."""
    from spinelab.metrics import cervical_score, cervical_submission_frame

    truth = labels[labels.StudyInstanceUID.isin(wide.index)]
    return float(cervical_score(truth, cervical_submission_frame(wide.loc[truth.StudyInstanceUID])))


#: What the cervical task gives the prediction path: series folders as studies, the Kaggle submission, the metric.
OUTPUT = TaskOutput(nested=False, frames=_frames, evaluate=_evaluate, check_input=_warn_listed_but_absent,
                    oof=read_oof, score_wide=score_wide)
