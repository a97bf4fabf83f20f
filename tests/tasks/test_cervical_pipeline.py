"""The cervical pipeline end to end on a tiny synthetic dataset: train, resume, predict, evaluate, report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from spinelab import api
from spinelab.cli import app
from spinelab.config.load import load_config
from spinelab.registry import CERVICAL_TARGETS, cervical_row_ids
from spinelab.train.run import read_training_log

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    out = tmp_path_factory.mktemp("cervical") / "data"
    return generate_cervical_dataset(out, studies=10, test_studies=3, size=64, seed=3, workers=1,
                                     seg_fraction=0.6, slices=(28, 36), progress=False)


@pytest.fixture(scope="module")
def run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config("cervical", [REPO / "src/spinelab/configs/cervical/tiny.yaml"],
                      [f"data.dataset_dir={dataset}", "stage1.train.epochs=3", "trainer.accelerator=cpu",
                       "trainer.log_every_n_steps=1", "stage2.train.keep=all"])
    return api.train(cfg, run_dir=tmp_path_factory.mktemp("runs") / "tiny", fold="0", progress=False)


@pytest.fixture(scope="module")
def predictions(run: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return api.predict("cervical", model=run, input=dataset, out=tmp_path_factory.mktemp("pred"), device="cpu",
                       progress=False)


def test_run_folder_is_self_describing(run: Path) -> None:
    for name in ("config.yaml", "folds.csv", "targets.json", "prior.json", "localization.json", "cv_scores.json",
                 "stage1/fold_0/model.pt", "stage2/fold_0/model.pt", "stage2/fold_0/oof.csv"):
        assert (run / name).is_file(), name
    assert json.loads((run / "targets.json").read_text()) == list(CERVICAL_TARGETS)
    loc = json.loads((run / "localization.json").read_text())
    assert len(loc) == 10
    for summary in loc.values():
        assert set(summary["ranges"]) == {f"C{i}" for i in range(1, 8)}
        assert all(r[0] <= r[1] for r in summary["ranges"].values())
        x0, y0, x1, y1 = summary["box"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    cv = json.loads((run / "cv_scores.json").read_text())
    assert 0 < cv["competition_score"] < 5 and "prevalence_constant_score" in cv
    assert cv["schema_version"] == 1 and cv["folds"]["fold_0"]["schema_version"] == 1
    # train.keep: stage 1 the default (last), stage 2 "all"
    assert sorted(p.name for p in (run / "stage1" / "fold_0").glob("*.ckpt")) == ["checkpoint_last.ckpt"]
    assert len(list((run / "stage2" / "fold_0").glob("*.ckpt"))) == 2
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["weights"]["stage2/fold_0/model.pt"] == cv["folds"]["fold_0"]["model_sha256"]


def test_stage1_training_loss_falls(run: Path) -> None:
    log = read_training_log(run / "stage1" / "fold_0")
    per_epoch = log.dropna(subset=["train/loss_epoch"]).groupby("epoch")["train/loss_epoch"].mean()
    assert len(per_epoch) == 3
    assert per_epoch.iloc[-1] < per_epoch.iloc[0]


def test_stage2_learns_from_fracture_boxes_and_keeps_the_best_competition_loss(run: Path, dataset: Path) -> None:
    boxes = pd.read_csv(run / "derived" / "fracture_boxes.csv")  # derived labels default to the run folder
    assert len(boxes) > 0  # the synthetic positives carry boxes, so the per-step term is trained
    log = read_training_log(run / "stage2" / "fold_0")
    steps = log["train/step_loss_epoch"].dropna()
    assert len(steps) == 2 and np.isfinite(steps).all() and (steps > 0).all()
    assert "val/study_loss" in log.columns
    best = torch.load(run / "stage2" / "fold_0" / "checkpoint_best.ckpt", map_location="cpu", weights_only=False)
    monitors = [v["monitor"] for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert "val/study_loss" in monitors and None in monitors  # best on the study loss; last after every epoch


def test_submission_has_every_row_with_valid_probabilities(predictions: dict, dataset: Path) -> None:
    sub = pd.read_csv(predictions["submission"])
    test_ids = sorted(p.name for p in (dataset / "test_images").iterdir())
    assert predictions["studies"] == len(test_ids) and predictions["failed"] == 0
    expected = [r for uid in test_ids for r in cervical_row_ids(uid)]
    assert sorted(sub.row_id) == sorted(expected)
    assert sub.fractured.between(0, 1).all() and sub.fractured.notna().all()
    evaluation = json.loads(Path(predictions["evaluation"]).read_text())
    assert evaluation["studies"] == len(test_ids) and np.isfinite(evaluation["competition_score"])
    one = json.loads((Path(predictions["submission"]).parent / "studies" / f"{test_ids[0]}.json").read_text())
    assert set(one["probabilities"]) == set(CERVICAL_TARGETS)
    assert one["vertebra_ranges"]["C1"]["slice_numbers"] is not None and one["model"]["folds"]["stage2"] == [0]


def test_python_function_matches_the_command(run: Path, dataset: Path, predictions: dict) -> None:
    from spinelab import predict_cervical

    study = sorted((dataset / "test_images").iterdir())[0]
    result = predict_cervical(study, run, device="cpu")
    wide = pd.read_csv(predictions["predictions"]).set_index("StudyInstanceUID")
    for t in CERVICAL_TARGETS:
        assert result.probabilities[t] == pytest.approx(wide.loc[study.name, t], abs=1e-5)


def test_study_with_no_vertebrae_found_gets_prediction_and_warning(run: Path, dataset: Path) -> None:
    from spinelab.infer.runtime import Runtime
    from spinelab.tasks.cervical.predict import CervicalPredictor

    predictor = CervicalPredictor(run, runtime=Runtime(device="cpu"))
    predictor.cfg.stage1.min_peak = 1.01  # no ratio peak can reach it: nothing is "found"
    study = sorted((dataset / "test_images").iterdir())[0]
    result = predictor.predict_study(study)
    assert result.missing_vertebrae == [f"C{i}" for i in range(1, 8)]
    assert any("not found" in w for w in result.warnings)
    probs = np.array(list(result.probabilities.values()))
    assert probs.shape == (8,) and ((probs > 0) & (probs < 1)).all()


def test_corrupt_study_is_recorded_and_the_run_goes_on(run: Path, dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(dataset / "test_images", data / "test_images")
    bad = sorted((data / "test_images").iterdir())[1]
    for f in bad.iterdir():
        f.write_bytes(b"not dicom")
    result = api.predict("cervical", model=run, input=data, out=tmp_path / "out", device="cpu", progress=False)
    assert result["failed"] == 1 and result["studies"] == 3
    sub = pd.read_csv(result["submission"])
    assert len(sub) == 3 * 8 and sub.fractured.between(0, 1).all()
    failed = json.loads((tmp_path / "out" / "studies" / f"{bad.name}.json").read_text())
    assert failed["status"] == "failed" and bad.name in failed["error"]


def test_report_lists_studies_by_risk(predictions: dict, dataset: Path, run: Path, tmp_path: Path) -> None:
    index = api.report("cervical", predictions=Path(predictions["submission"]).parent, input=dataset,
                       out=tmp_path / "report", model=run)
    html = index.read_text()
    wide = pd.read_csv(predictions["predictions"]).sort_values("patient_overall", ascending=False)
    positions = [html.index(uid) for uid in wide.StudyInstanceUID]
    assert positions == sorted(positions)  # highest risk first
    assert len(list((tmp_path / "report" / "studies").glob("*.png"))) == len(wide)
    assert (tmp_path / "report" / "curves_stage1.png").is_file()


def test_cli_resume_continues_a_killed_fold(dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["train", "cervical", "-c", "cervical/tiny.yaml", "--run-dir", str(tmp_path / "r"),
            "--fold", "0", "--stage", "stage1", f"data.dataset_dir={dataset}", "trainer.accelerator=cpu"]
    first = runner.invoke(app, [*base, "stage1.train.epochs=1"])
    assert first.exit_code == 0, first.output
    before = json.loads((tmp_path / "r/stage1/fold_0/scores.json").read_text())
    second = runner.invoke(app, [*base, "--resume", "stage1.train.epochs=2"])
    assert second.exit_code == 0, second.output
    scores = json.loads((tmp_path / "r/stage1/fold_0/scores.json").read_text())
    assert scores["epochs"] == 2 and scores["global_step"] == 2 * before["global_step"]
    assert scores["seconds"] > before["seconds"]  # training time adds up over the resumed parts


def test_cli_reports_bad_config_without_traceback(dataset: Path) -> None:
    result = CliRunner().invoke(app, ["train", "cervical", "stage1.train.epochs=lots"])
    assert result.exit_code == 2
    assert "stage1.train.epochs" in result.output and "Traceback" not in result.output


def test_frame_pretraining_feeds_the_stage2_cnn(run: Path, dataset: Path, tmp_path: Path) -> None:
    from spinelab.tasks.cervical.fracture import FractureStage

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = load_config("cervical", [copy / "config.yaml"],
                      ["frames.enabled=true", "frames.model.name=test_cervical_frame_classifier",
                       "frames.frames_per_epoch=16", "frames.train.epochs=1",
                       "frames.train.batch_size=8"])
    api.train(cfg, run_dir=copy, fold="0", stage="frames", progress=False)
    scores = json.loads((copy / "frames" / "fold_0" / "scores.json").read_text())
    assert scores["global_step"] == 2 and np.isfinite(scores.get("auc_vertebra_max_step", 0.5))
    frames = torch.load(copy / "frames" / "fold_0" / "model.pt")
    stage = FractureStage(cfg, copy)
    model = stage.build_model()
    stage.initialize(model, 0)
    got = model.encoder.backbone.state_dict()
    assert all(torch.equal(got[k.removeprefix("backbone.")], v) for k, v in frames.items()
               if k.startswith("backbone."))



# --- refusals before any work, read-only datasets, planted checkpoints -----------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    return generate_cervical_dataset(tmp_path_factory.mktemp("small") / "data", studies=6, test_studies=2, size=64,
                                     seed=3, workers=1, seg_fraction=0.6, slices=(28, 36), progress=False)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize(("args", "message"), [
    (["--fold", "9"], "out of range"), (["--fold", "a"], "--fold must be"), (["--stage", "stage3"], "unknown"),
    (["--keep", "some"], "--keep must be")])
def test_bad_options_are_refused_before_anything_is_written(small: Path, tmp_path: Path, args: list[str],
                                                            message: str) -> None:
    before = _snapshot(small.parent)
    result = CliRunner().invoke(app, ["train", "cervical", "-c", str(REPO / "src/spinelab/configs/cervical/tiny.yaml"),
                                      "--run-dir", str(tmp_path / "run"), *args, f"data.dataset_dir={small}"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and _snapshot(small.parent) == before


def test_missing_train_csv_is_refused_before_the_cache_is_built(small: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(small / "train_images", data / "train_images")
    result = CliRunner().invoke(app, ["train", "cervical", "--run-dir", str(tmp_path / "run"),
                                      f"data.dataset_dir={data}"])
    assert result.exit_code == 2 and "train.csv not found" in result.output
    assert not (tmp_path / "run").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def _read_only(dataset: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with ``dataset`` read-only: a read-only bind mount in a private mount namespace
    as root (root ignores file modes), the write bits taken away otherwise."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    if os.geteuid() == 0:
        mount = f"mount --bind {dataset} {dataset} && mount -o remount,ro,bind {dataset} && "
        return subprocess.run(["unshare", "-m", "sh", "-c", mount + script], capture_output=True, text=True,
                              env=env, timeout=600)
    subprocess.run(["chmod", "-R", "a-w", str(dataset)], check=True)
    try:
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=600)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(dataset)], check=True)


def test_folds_train_and_predict_on_a_read_only_dataset(small: Path, tmp_path: Path) -> None:
    before = _snapshot(small.parent)
    cli = f"{sys.executable} -m spinelab -q"
    run, folds = tmp_path / "run", tmp_path / "folds.csv"
    script = " && ".join([
        f"! {cli} folds {small} 2> {tmp_path}/refused.txt",  # the default place is read-only: a clear refusal
        f"{cli} folds {small} --k 2 --out {folds}",
        f"{cli} train cervical -c {REPO}/src/spinelab/configs/cervical/tiny.yaml --run-dir {run} --fold 0 --keep model "
        f"data.dataset_dir={small} data.folds_file={folds} stage1.train.epochs=1 stage2.train.epochs=1 "
        "trainer.accelerator=cpu",
        f"{cli} predict cervical --model {run} -i {small} -o {tmp_path}/pred --device cpu",
    ])
    proc = _read_only(small, script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused = (tmp_path / "refused.txt").read_text()
    assert "folds.csv" in refused and "--out" in refused and "Traceback" not in refused
    assert _snapshot(small.parent) == before  # nothing written into (or beside) the dataset
    assert (run / "cache").is_dir() and (run / "derived" / "slice_labels.csv").is_file()
    assert not list(run.glob("*/fold_0/*.ckpt"))  # --keep model
    assert len(pd.read_csv(tmp_path / "pred" / "submission.csv")) == 2 * 8
    provenance = json.loads((run / "provenance.json").read_text())
    assert set(provenance["weights"]) == {"stage1/fold_0/model.pt", "stage2/fold_0/model.pt"}
    assert provenance["commands"][-1]["argv"][1:4] == ["-q", "train", "cervical"]


def test_cli_resume_refuses_a_planted_checkpoint(small: Path, tmp_path: Path) -> None:
    class Planted:
        def __reduce__(self) -> tuple:
            return (open, (str(tmp_path / "pwned"), "w"))

    run = tmp_path / "run"
    target = run / "stage1" / "fold_1" / "checkpoint_last.ckpt"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "payload": Planted()}, target)
    result = CliRunner().invoke(app, ["train", "cervical", "-c", str(REPO / "src/spinelab/configs/cervical/tiny.yaml"),
                                      "--run-dir", str(run), "--fold", "1", "--stage", "stage1", "--resume",
                                      f"data.dataset_dir={small}", "data.folds=2", "trainer.accelerator=cpu"])
    assert result.exit_code == 2 and "checkpoint_last.ckpt: checkpoint refused" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "pwned").exists()
    assert not (target.parent / "model.pt").exists()
