"""Demo-like inputs for the report tests, built in seconds: tiny synthetic datasets, prediction folders whose
study JSONs put the vertebrae / points where the generator's truth says they are (so the pictures look like
a working model's), and a run folder with training logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from spinelab.io.atomic import atomic_write_json
from spinelab.registry import CERVICAL_TARGETS, LUMBAR_CONDITIONS, LUMBAR_GRADES, LUMBAR_LEVELS, VERTEBRAE


def cervical_result(volume: Any, study: str, centres_lps: dict[str, list[float]],
                    probs: dict[str, float]) -> dict[str, Any]:
    """A predictor-shaped result on the canonical grid of ``volume`` with the vertebrae at ``centres_lps``."""
    from spinelab.io.orientation import to_canonical

    canon = to_canonical(volume)
    vox = {v: canon.world_to_voxel(np.asarray(c)) for v, c in centres_lps.items()}
    depth = canon.shape[0]
    d = np.array([vox[v][0] for v in VERTEBRAE])
    half = np.maximum(np.abs(np.diff(d)).mean() / 2, 1.0)
    ranges = {}
    for v, centre in zip(VERTEBRAE, d, strict=True):
        a, b = int(np.clip(round(centre - half), 0, depth - 1)), int(np.clip(round(centre + half), 0, depth - 1))
        ids = canon.slice_ids
        ranges[v] = {"start_index": a, "end_index": b, "slice_numbers": [ids[a], ids[b]] if ids else None}
    xs, ys = [vox[v][2] for v in VERTEBRAE], [vox[v][1] for v in VERTEBRAE]
    margin = 12.0 / canon.spacing[2]
    box = [max(min(xs) - margin, 0), max(min(ys) - margin, 0), min(max(xs) + margin, canon.shape[2]),
           min(max(ys) + margin, canon.shape[1])]
    return {"study": study, "probabilities": {t: float(probs[t]) for t in CERVICAL_TARGETS},
            "vertebra_ranges": ranges, "crop_box": [round(float(v), 1) for v in box], "missing_vertebrae": [],
            "warnings": [], "status": "ok"}


@pytest.fixture(scope="session")
def cervical_predictions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(dataset, predictions folder)``: 3 synthetic test studies (one with a warning, one refused) and an
    ``evaluation.json`` against their labels, written by the same functions ``predict cervical`` uses."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset
    from spinelab.io.dicom import read_series
    from spinelab.tasks.cervical.predict import evaluate_cervical_predictions

    root = tmp_path_factory.mktemp("report_cervical")
    data = generate_cervical_dataset(root / "data", studies=1, test_studies=3, size=64, seed=3, workers=1,
                                     seg_fraction=0.0, slices=(28, 36), progress=False)
    truth = json.loads((data / "synthetic_truth.json").read_text())["studies"]
    labels = pd.read_csv(data / "test_labels.csv", dtype={"StudyInstanceUID": str}).set_index("StudyInstanceUID")
    out = root / "pred"
    rng = np.random.default_rng(0)
    wide = []
    for k, folder in enumerate(sorted((data / "test_images").iterdir())):
        sid = folder.name
        # probabilities that lean towards the labels, so the metric and AUCs are those of a model that works
        probs = {t: float(np.clip(0.15 + 0.6 * labels.loc[sid, t] + rng.normal(0, 0.1), 0.01, 0.99))
                 for t in CERVICAL_TARGETS}
        centres = {v: truth[sid]["vertebrae"][v]["center_lps"] for v in VERTEBRAE}
        result = cervical_result(read_series(folder), sid, centres, probs)
        if k == 1:
            result["status"], result["warnings"] = "warning", ["z-extent 96 mm is short for C1-C7 (about 120 mm)"]
        if k == 2:
            result.update(status="refused", warnings=["refused, prior used: modality MR is not CT"],
                          reasons=["modality MR is not CT"])
        atomic_write_json(out / "studies" / f"{sid}.json", result)
        wide.append({"StudyInstanceUID": sid, **result["probabilities"]})
    evaluate_cervical_predictions(pd.DataFrame(wide), data / "test_labels.csv", out)
    return data, out


@pytest.fixture(scope="session")
def lumbar_predictions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(dataset, predictions folder)``: 2 synthetic lumbar test studies with points where the truth is, and
    an ``evaluation.json`` against their labels."""
    from spinelab.data.synthetic.lumbar import generate_lumbar_dataset
    from spinelab.tasks.lumbar.predict import evaluate_lumbar_predictions, probs_of
    from spinelab.tasks.lumbar.studies import load_study, read_descriptions

    root = tmp_path_factory.mktemp("report_lumbar")
    data = generate_lumbar_dataset(root / "data", studies=1, test_studies=2, size=64, seed=11, workers=1,
                                   progress=False)
    descriptions = read_descriptions(data, "test")
    out = root / "pred"
    rng = np.random.default_rng(1)
    results = []
    for folder in sorted((data / "test_images").iterdir()):
        study = load_study(folder, descriptions=descriptions)
        truth = json.loads((data / "synthetic_truth" / f"{folder.name}.json").read_text())["points"]
        results.append(lumbar_result(study, truth, rng))
        atomic_write_json(out / "studies" / f"{folder.name}.json", results[-1])
    evaluate_lumbar_predictions(probs_of(results), data / "test_labels.csv", out)
    return data, out


def lumbar_result(study: Any, truth: list[dict[str, Any]], rng: np.random.Generator) -> dict[str, Any]:
    """A predictor-shaped lumbar result: each labelled point on its series, random grades."""
    kind = {"spinal_canal_stenosis": "sag_t2", "left_neural_foraminal_narrowing": "sag_t1",
            "right_neural_foraminal_narrowing": "sag_t1", "left_subarticular_stenosis": "axial",
            "right_subarticular_stenosis": "axial"}
    points: dict[str, dict[str, Any]] = {c: {} for c in LUMBAR_CONDITIONS}
    axial_slices: dict[str, Any] = {}
    for p in truth:
        vols, ids = study.series.get(kind[p["condition"]]) or [], study.series_ids.get(kind[p["condition"]]) or []
        for vol, sid in zip(vols, ids, strict=True):
            d, y, x = vol.world_to_voxel(np.asarray(p["world"]))
            if -0.5 <= d < vol.shape[0] - 0.5:
                rec = {"series_id": sid, "slice_index": int(round(d)), "x": float(x), "y": float(y)}
                points[p["condition"]][p["level"]] = rec
                if kind[p["condition"]] == "axial":
                    axial_slices[p["level"]] = {"series_id": sid, "slice_index": rec["slice_index"]}
                break
    grades = {}
    for c in LUMBAR_CONDITIONS:
        for lv in LUMBAR_LEVELS:
            g = rng.dirichlet([3, 1.5, 1])
            grades[f"{c}_{lv}"] = dict(zip(LUMBAR_GRADES, g.round(4).tolist(), strict=True))
    return {"study": study.study_id, "grades": grades, "points": points, "axial_level_slices": axial_slices,
            "warnings": [], "status": "ok"}


def write_training_log(fold_dir: Path, rows: list[dict[str, float]], *, best: int | None = None) -> None:
    """A fold folder as ``spinelab train`` leaves it: ``logs/version_0/metrics.csv`` (Lightning's CSV layout:
    one row per logged step), ``scores.json`` and, when ``best`` is given, a ``checkpoint_best.ckpt``."""
    import torch

    (fold_dir / "logs" / "version_0").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(fold_dir / "logs" / "version_0" / "metrics.csv", index=False)
    atomic_write_json(fold_dir / "scores.json", {"epochs": int(max(r["epoch"] for r in rows)) + 1})
    if best is not None:
        torch.save({"epoch": best, "global_step": 10, "state_dict": {"w": torch.zeros(2)}},
                   fold_dir / "checkpoint_best.ckpt")


@pytest.fixture(scope="session")
def cervical_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with stage-1 and stage-2 logs of two folds and the stage-2 CV baseline."""
    run = tmp_path_factory.mktemp("runs") / "cervical_tiny"
    for fold, offset in (("fold_0", 0.0), ("fold_1", 0.05)):
        s1 = [{"epoch": e, "step": 4 * e + 3, "train/loss_epoch": 1.2 - 0.2 * e + offset,
               "train/ratio_epoch": 0.5 - 0.05 * e} for e in range(4)]
        s1 += [{"epoch": e, "step": 4 * e + 3, "val/loss": 1.3 - 0.15 * e + offset} for e in range(4)]
        write_training_log(run / "stage1" / fold, s1, best=3)
        s2 = [{"epoch": e, "step": 4 * e + 3, "train/loss_epoch": 0.9 - 0.1 * e + offset,
               "train/study_loss_epoch": 0.7 - 0.08 * e} for e in range(5)]
        s2 += [{"epoch": e, "step": 4 * e + 3, "val/loss": 0.8 - 0.05 * e + 0.03 * max(e - 2, 0) ** 2,
                "val/study_loss": 0.6 - 0.04 * e, "val/competition_score": 0.55 - 0.03 * e + offset,
                "val/auc_vertebra": 0.6 + 0.05 * e} for e in range(5)]
        write_training_log(run / "stage2" / fold, s2, best=2)
    atomic_write_json(run / "cv_scores.json", {"competition_score": 0.44, "prevalence_constant_score": 0.51})
    return run


@pytest.fixture(scope="session")
def cervical_report(cervical_predictions: tuple[Path, Path], cervical_run: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``index.html`` of ``report cervical`` over the predictions, with the run's training curves."""
    from spinelab.report.cervical import write_cervical_report

    data, pred = cervical_predictions
    return write_cervical_report(predictions=pred, input=data, out=tmp_path_factory.mktemp("c_report"),
                                 model=cervical_run, progress=False)


@pytest.fixture(scope="session")
def lumbar_report(lumbar_predictions: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``index.html`` of ``report lumbar`` over the predictions."""
    from spinelab.report.lumbar import write_lumbar_report

    data, pred = lumbar_predictions
    return write_lumbar_report(predictions=pred, input=data, out=tmp_path_factory.mktemp("l_report"),
                               progress=False)
