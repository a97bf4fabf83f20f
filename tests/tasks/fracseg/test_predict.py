"""The fracseg route end to end on the tiny synthetic dataset: train (every stage, 2 folds) through the CLI, the
fitted rule and the route's CV files, predict + score through the shared path, the report's fracture overlay, an
ensemble fit with another run, and no training import when the predictor is loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.registry import CERVICAL_TARGETS

REPO = Path(__file__).resolve().parents[3]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 + 2 synthetic studies at 64 px: every fold of 2 holds a boxed fractured study."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    return generate_cervical_dataset(tmp_path_factory.mktemp("fracseg_data") / "data", studies=8, test_studies=2,
                                     size=64, seed=3, workers=1, seg_fraction=0.6, slices=(28, 36), progress=False)


@pytest.fixture(scope="module")
def fracseg_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``spinelab train cervical -c fracseg_tiny`` on 2 folds, one round, a few steps per stage, on a 4 mm crop
    grid (an untrained vertebra model's crop spans the whole synthetic body: sliding windows cost the most)."""
    run = tmp_path_factory.mktemp("fracseg") / "run"
    result = invoke("train", "cervical", "-c", "fracseg_tiny", "-o", run, "--fold", "all",
                    f"data.dataset_dir={dataset}", "data.folds=2", "trainer.accelerator=cpu",
                    "rounds=1", "fracture_seg.train.epochs=1", "seg.train.epochs=1", "overall.train.epochs=1",
                    "percentile.refine=5", "grid.spacing_mm=[4.0,4.0,4.0]", "fracture_seg.sw_overlap=0.0")
    assert result.exit_code == 0, result.output
    return run


def test_training_fits_the_rule_and_writes_the_route_scores(fracseg_run: Path) -> None:
    rule = json.loads((fracseg_run / "percentile_rule.json").read_text())
    assert set(rule["parameters"]) == set(CERVICAL_TARGETS)
    assert rule["studies"] == 8 and rule["seed"] == 0 and rule["stage"] == "fracture_seg"
    # the rule's rows of the CV score come from rules fitted on the other fold (data.folds=2)
    assert rule["cross_fitted_folds"] == 2 and 0 < rule["cross_fitted_score"] < 10
    index = json.loads((fracseg_run / "fracture_seg" / "oof_vertebrae" / "index.json").read_text())["studies"]
    assert {r["vertebrae"] for r in index.values()} == {"mask", "segmented"}  # studies without a mask segmented
    oof = pd.read_csv(fracseg_run / "oof.csv")
    assert len(oof) == 8 and {*CERVICAL_TARGETS, *(f"true_{t}" for t in CERVICAL_TARGETS)} <= set(oof.columns)
    clf = pd.read_csv(fracseg_run / "overall" / "oof.csv", dtype={"StudyInstanceUID": str}).set_index(
        "StudyInstanceUID")
    merged = oof.set_index(oof.StudyInstanceUID.astype(str))
    assert (merged.loc[clf.index, "patient_overall"] - clf["patient_overall"]).abs().max() < 1e-9
    scores = json.loads((fracseg_run / "cv_scores.json").read_text())
    assert scores["studies"] == 8 and scores["classifier_studies"] == 8
    assert scores["percentile_rule"]["competition_score"] > 0 and "prevalence_constant_score" in scores


def test_predict_score_and_report(fracseg_run: Path, dataset: Path, tmp_path: Path) -> None:
    pred, images = tmp_path / "pred", dataset / "test_images"
    result = invoke("predict", "cervical", "--model", fracseg_run, "-i", images, "-o", pred, "--labels",
                    dataset / "test_labels.csv")
    assert result.exit_code == 0, result.output
    submission = pd.read_csv(pred / "submission.csv")
    assert len(submission) == 16 and submission.fractured.between(0, 1).all()
    assert "competition_score" in json.loads((pred / "evaluation.json").read_text())
    study = json.loads(next((pred / "studies").glob("*.json")).read_text())
    assert study["model"]["percentile_rule"] == "fitted" and "overall" in study["model"]["folds"]
    assert Path(study["fracture_map"]).is_file() and Path(study["fracture_vertebrae"]).is_file()
    assert set(study["fracture_peaks"]) <= set(study["vertebra_ranges"])
    scored = invoke("score", "cervical", dataset / "test_labels.csv", pred / "submission.csv")
    assert scored.exit_code == 0, scored.output
    report = invoke("report", "cervical", "-p", pred, "-i", images, "-o", tmp_path / "report")
    assert report.exit_code == 0, report.output
    html = (tmp_path / "report" / "index.html").read_text()
    assert html.count("_fracture.png") == 2 * 2  # each study's overlay: link and image
    overlays = sorted((tmp_path / "report" / "studies").glob("*_fracture.png"))
    assert len(overlays) == 2 and all(p.stat().st_size > 10_000 for p in overlays)


def test_ensemble_weights_fit_on_the_route_oof(fracseg_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "copy"
    shutil.copytree(fracseg_run, other, ignore=shutil.ignore_patterns("cache", "derived"))
    result = invoke("ensemble", "fit", "--model", fracseg_run, "--model", other, "-o",
                    tmp_path / "weights.json")
    assert result.exit_code == 0, result.output
    weights = json.loads((tmp_path / "weights.json").read_text())
    assert weights["studies"] == 8 and [m["route"] for m in weights["members"]] == ["cervical/fracseg"] * 2


def test_loading_the_predictor_imports_no_training_code(fracseg_run: Path) -> None:
    code = ("import sys\nfrom spinelab.infer.ensemble import load_predictor\n"
            f"load_predictor('cervical', {str(fracseg_run)!r})\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', "
            "'spinelab.train.run', 'spinelab.train.module', 'spinelab.tasks.cervical.fracseg.pipeline', "
            "'spinelab.tasks.cervical.fracseg.oof_maps', 'spinelab.tasks.cervical.fracseg.post')) "
            "and m != 'spinelab.train.run_folder'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip().splitlines()[-1] == "[]"
