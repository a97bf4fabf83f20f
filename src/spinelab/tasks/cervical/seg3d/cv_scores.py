"""Cross-validation scores of the seg3d route's classifiers: type 1, type 2 and their ensemble on the
out-of-fold predictions (``cv_scores.json``, ``oof.csv`` with the ensemble), scored like the slice route's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spinelab.io.atomic import atomic_write_csv, atomic_write_json
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE

__all__ = ["classifier_oof", "write_seg3d_cv_scores"]

CV_SCHEMA_VERSION = 1


def _read(run_dir: Path, stage: str) -> pd.DataFrame | None:
    frames = [pd.read_csv(p, dtype={"StudyInstanceUID": str}) for p in sorted((run_dir / stage).glob("fold_*/oof.csv"))]
    return pd.concat(frames, ignore_index=True) if frames else None


def classifier_oof(run_dir: str | Path, labels: pd.DataFrame, prior: dict[str, float], weight: float
                   ) -> dict[str, pd.DataFrame]:
    """Out-of-fold probabilities per type and of their ensemble, one row per study with ``true_`` columns.

    Args:
        labels: ``train.csv`` indexed by StudyInstanceUID.
        prior: training prevalence (a vertebra type 1 has no crops of takes it).
        weight: type 2's share of the ensemble (``patient.ensemble_weight``).
    """
    from spinelab.tasks.cervical.seg3d.predict import ensemble_types, type1_overall

    run_dir = Path(run_dir)
    wide: dict[str, pd.DataFrame] = {}
    t1 = _read(run_dir, "vertebra")
    if t1 is not None:
        table = t1.pivot_table(index="StudyInstanceUID", columns="vertebra", values="probability")
        table = table.reindex(columns=list(VERTEBRAE)).fillna({v: prior[v] for v in VERTEBRAE})
        table["patient_overall"] = [type1_overall(row) for row in table[list(VERTEBRAE)].to_numpy()]
        wide["type1"] = table
    t2 = _read(run_dir, "patient")
    if t2 is not None:
        wide["type2"] = t2.set_index("StudyInstanceUID")[list(CERVICAL_TARGETS)]
    if not wide:
        return {}
    ids = sorted(set.intersection(*(set(w.index) for w in wide.values())))
    parts = {k: w.loc[ids, list(CERVICAL_TARGETS)].to_numpy() for k, w in wide.items()}
    wide["ensemble"] = pd.DataFrame(
        [ensemble_types(parts["type1"][i] if "type1" in parts else None,
                        parts["type2"][i] if "type2" in parts else None, weight) for i in range(len(ids))],
        index=pd.Index(ids, name="StudyInstanceUID"), columns=list(CERVICAL_TARGETS))
    out = {}
    for k, w in wide.items():
        frame = w.loc[ids, list(CERVICAL_TARGETS)].reset_index()
        truth = labels.loc[ids, list(CERVICAL_TARGETS)].to_numpy(dtype=np.float64)
        frame[[f"true_{t}" for t in CERVICAL_TARGETS]] = truth
        out[k] = frame
    return out


def write_seg3d_cv_scores(cfg: Any, run_dir: str | Path) -> dict[str, Any]:
    """``cv_scores.json`` (competition metric and AUCs of type 1, type 2 and the ensemble, the prevalence
    constant) and ``oof.csv`` (the ensemble); nothing when neither classifier has out-of-fold predictions."""
    from spinelab.metrics import cervical_prevalence_constant, cervical_score
    from spinelab.tasks.cervical.fracture import evaluate_cervical
    from spinelab.tasks.cervical.studies import CervicalStudies

    run_dir = Path(run_dir)
    labels = CervicalStudies(cfg).labels
    prior_path = run_dir / "prior.json"
    prior = json.loads(prior_path.read_text()) if prior_path.is_file() else labels[list(CERVICAL_TARGETS)].mean()
    oof = classifier_oof(run_dir, labels, dict(prior), cfg.patient.ensemble_weight)
    if not oof:
        return {}
    ens = oof["ensemble"]
    atomic_write_csv(run_dir / "oof.csv", ens)
    truth = ens[["StudyInstanceUID", *(f"true_{t}" for t in CERVICAL_TARGETS)]]
    truth.columns = ["StudyInstanceUID", *CERVICAL_TARGETS]
    constant = float(cervical_score(truth, cervical_prevalence_constant(truth)))
    scores: dict[str, Any] = {"schema_version": CV_SCHEMA_VERSION, "studies": len(ens), **evaluate_cervical(ens),
                              "prevalence_constant_score": constant}
    scores["relative_improvement"] = 1 - scores["competition_score"] / constant
    scores["types"] = {k: evaluate_cervical(v) for k, v in oof.items() if k != "ensemble"}
    atomic_write_json(run_dir / "cv_scores.json", scores)
    return scores
