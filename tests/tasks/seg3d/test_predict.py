"""The seg3d route's predictor through the shared prediction path: ``spinelab predict cervical --model RUN`` on a
seg3d run, the study results, the submission, the score, the report's mask, and the ensemble rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.infer.result import StudyResult
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.tasks.cervical.seg3d.predict import ensemble_types, mask_sections, type1_overall
from spinelab.train.run_folder import read_run_config


def test_type1_overall_is_the_chance_that_any_vertebra_is_fractured() -> None:
    assert type1_overall(np.zeros(7)) == 0.0
    assert type1_overall(np.array([0.5, 0.5, 0, 0, 0, 0, 0])) == pytest.approx(0.75)


def test_ensemble_weights_the_types_and_clamps() -> None:
    t1, t2 = np.full(8, 0.2), np.full(8, 0.6)
    assert ensemble_types(t1, t2, 0.5) == pytest.approx(np.full(8, 0.4))
    assert ensemble_types(t1, t2, 1.0) == pytest.approx(t2)
    assert ensemble_types(None, np.zeros(8), 0.5).min() == 1e-4  # one type alone, clamped
    assert ensemble_types(np.ones(8), None, 0.5).max() == 1 - 1e-4
    with pytest.raises(ValueError):
        ensemble_types(None, None, 0.5)


def test_mask_sections_round_trip_and_the_report_draws_them() -> None:
    from spinelab.report.cervical import draw_cervical_study
    from tests.tasks.seg3d.test_crops import _study

    vol, labels = _study()
    box = [18.0, 9.0, 34.0, 27.0]
    sections = mask_sections(labels, box)
    rle = np.asarray(sections["sagittal"]["rle"]).reshape(-1, 2)
    plane = np.repeat(rle[:, 0], rle[:, 1]).reshape(sections["sagittal"]["shape"])
    assert sections["sagittal"]["column"] == 26 and (plane == labels[:, :, 26]).all()
    result = {"study": "s", "probabilities": {"patient_overall": 0.3}, "crop_box": box, "mask_sections": sections}
    fig = draw_cervical_study(vol, result)
    drawn = [im.get_gid() for ax in fig.axes for im in ax.get_images()]
    assert drawn.count("vertebra-mask") == 2
    wrong = {**result, "mask_sections": {"sagittal": {**sections["sagittal"], "shape": [3, 3]}}}
    fig = draw_cervical_study(vol, wrong)  # not this volume's plane: nothing drawn rather than misplaced
    assert "vertebra-mask" not in [im.get_gid() for ax in fig.axes for im in ax.get_images()]


def test_training_wrote_out_of_fold_crops_and_scores_for_both_types(tiny_seg3d_run: Path) -> None:
    run = tiny_seg3d_run
    for stage in ("seg", "vertebra", "patient"):
        assert (run / stage / "fold_0" / "model.pt").is_file()
    index = json.loads((run / "crops" / "index.json").read_text())
    folds = pd.read_csv(run / "folds.csv", dtype={"StudyInstanceUID": str}).set_index("StudyInstanceUID")["fold"]
    masked = {p.name.removesuffix(".nii.gz") for p in (run / "derived" / "masks").glob("*.nii.gz")}
    assert index["masks"] == "oof" and set(index["studies"]) == set(folds.index)
    for uid, entry in index["studies"].items():
        # the study seg trained on... unless fold 0 held it out; only fold 0 is trained, so that is its model
        expected = "seg fold 0" if uid in masked and folds[uid] == 0 else "seg ensemble"
        assert entry["source"] == expected, uid
        assert (run / "crops" / f"{uid}.npy").is_file()
    scores = json.loads((run / "cv_scores.json").read_text())
    assert set(scores["types"]) == {"type1", "type2"} and "competition_score" in scores
    oof = pd.read_csv(run / "oof.csv")
    assert set(oof.StudyInstanceUID.astype(str)) == set(folds[folds == 0].index)


def test_predict_score_and_report_a_seg3d_run_through_the_cli(tiny_seg3d_run: Path, tiny_cervical_dataset: Path,
                                                              tmp_path: Path) -> None:
    out, images, labels = tmp_path / "pred", tiny_cervical_dataset / "train_images", tiny_cervical_dataset / "train.csv"
    runner = CliRunner()
    res = runner.invoke(app, ["predict", "cervical", "--model", str(tiny_seg3d_run), "-i", str(images), "-o", str(out),
                              "--no-tta", "--labels", str(labels)])
    assert res.exit_code == 0, res.output
    submission = pd.read_csv(out / "submission.csv")
    studies = sorted(p.name for p in images.iterdir())
    assert len(submission) == 8 * len(studies) and submission.fractured.between(1e-4, 1 - 1e-4).all()
    weight = read_run_config(tiny_seg3d_run).patient.ensemble_weight
    for sid in studies:
        result = json.loads((out / "studies" / f"{sid}.json").read_text())
        StudyResult.model_validate(result)
        assert result["status"] in ("ok", "warning") and result["model"]["route"] == "seg3d"
        assert set(result["vertebra_ranges"]) | set(result["missing_vertebrae"]) == set(VERTEBRAE)
        assert {"sagittal", "coronal"} <= set(result["mask_sections"])
        types = result["type_probabilities"]
        both = ensemble_types(np.array([types["type1"][t] for t in CERVICAL_TARGETS]),
                              np.array([types["type2"][t] for t in CERVICAL_TARGETS]), weight)
        assert [result["probabilities"][t] for t in CERVICAL_TARGETS] == pytest.approx(both)
        # a missing vertebra is named among the warnings (the vertebra check)
        for v in result["missing_vertebrae"]:
            assert any(w.startswith(f"{v} missing") for w in result["warnings"]), (v, result["warnings"])
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["studies"] == len(studies) and "competition_score" in evaluation
    scored = runner.invoke(app, ["score", "cervical", str(labels), str(out / "submission.csv")])
    assert scored.exit_code == 0 and float(scored.output.strip()) == pytest.approx(
        evaluation["competition_score"], abs=1e-5)
    report = runner.invoke(app, ["report", "cervical", "-p", str(out), "-i", str(images),
                                 "-o", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert len(list((tmp_path / "report" / "studies").glob("*.png"))) == len(studies)


def test_building_the_predictor_imports_neither_lightning_nor_the_training_modules(tiny_seg3d_run: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    code = ("import sys\nfrom spinelab.tasks.catalog import run_route\nfrom spinelab.tasks.route import resolve\n"
            f"resolve(run_route({str(tiny_seg3d_run)!r}).predictor)({str(tiny_seg3d_run)!r}, tta=False)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', "
            "'spinelab.train.run', 'spinelab.train.module', 'spinelab.tasks.cervical.seg3d.pipeline', "
            "'spinelab.tasks.cervical.seg3d.masks', 'spinelab.tasks.cervical.seg3d.cv_scores')) "
            "and m != 'spinelab.train.run_folder'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo,
                         env={"PYTHONPATH": f"{repo / 'src'}:{repo}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_nothing_segmented_still_gives_probabilities_with_the_prior_in_type1(tiny_seg3d_run: Path) -> None:
    from spinelab.tasks.cervical.seg3d.crops import VertebraCrops
    from spinelab.tasks.cervical.seg3d.predict import Seg3dPredictor

    predictor = Seg3dPredictor(tiny_seg3d_run, tta=False)
    c = predictor.cfg.crops
    none = VertebraCrops(np.zeros((7, c.n_slices, c.span + 1, c.image_size, c.image_size), np.float32),
                         np.zeros(7, bool), np.full((7, c.n_slices), -1), np.zeros((7, 4)))
    types = predictor.classify(none)
    prior = [predictor.prior[v] for v in VERTEBRAE]
    assert types["type1"][:7] == pytest.approx(prior) and np.isfinite(types["type2"]).all()


def test_a_run_without_classifiers_is_refused_in_one_line(tiny_seg3d_run: Path, tmp_path: Path) -> None:
    import shutil

    from spinelab.errors import InputError
    from spinelab.tasks.cervical.seg3d.predict import Seg3dPredictor

    run = tmp_path / "run"
    shutil.copytree(tiny_seg3d_run, run, ignore=shutil.ignore_patterns("vertebra", "patient", "cache", "crops"))
    with pytest.raises(InputError, match="no trained classifier"):
        Seg3dPredictor(run, tta=False)
