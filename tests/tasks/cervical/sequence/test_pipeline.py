"""The sequence route end to end on the tiny synthetic dataset: train (two seeds), predict, report; a killed study
stage resumes without rebuilding the embedding cache; a changed CNN rebuilds it; --seeds is refused elsewhere."""

from __future__ import annotations

import json
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
from spinelab.registry import CERVICAL_TARGETS, VERTEBRAE
from spinelab.tasks.cervical.sequence.study_stage import StudyHeadStage
from spinelab.train.run_folder import read_run_config, read_training_log

REPO = Path(__file__).resolve().parents[4]


def _cache_meta(run: Path, stage: str = "slices_s0") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "embeddings" / stage / "fold_0").glob("*/meta.json"))]


def test_training_writes_every_step_for_every_seed(tiny_sequence_run: Path) -> None:
    run = tiny_sequence_run
    cfg = read_run_config(run)
    assert cfg.route == "sequence" and cfg.slices.seeds == [0, 1]
    folds = pd.read_csv(run / "folds.csv")
    labels = json.loads((run / "slice_labels" / "index.json").read_text())["studies"]
    assert set(labels) == set(folds.StudyInstanceUID) and set(json.loads((run / "localization.json").read_text()))
    for stage in ("stage1", "slices_s0", "slices_s1", "study_s0", "study_s1"):
        assert (run / stage / "fold_0" / "model.pt").is_file(), stage
    # two seeds are two models
    sha = [json.loads((run / f"slices_s{s}" / "fold_0" / "scores.json").read_text())["model_sha256"] for s in (0, 1)]
    assert sha[0] != sha[1]
    # each seed's study head read its own CNN's cache: fp16 arrays of every study
    for seed in (0, 1):
        (meta,) = _cache_meta(run, f"slices_s{seed}")
        assert meta["weights_sha256"] == sha[seed] and meta["built"] == meta["studies"] == len(folds)
        cached = next((run / "embeddings" / f"slices_s{seed}" / "fold_0" / meta["key"]).glob("*.npy"))
        assert np.load(cached, mmap_mode="r").dtype == np.float16
    scores = json.loads((run / "cv_scores.json").read_text())
    held_out = (folds.fold == 0).sum()
    assert scores["studies"] == held_out and set(scores["seeds"]) == {"study_s0", "study_s1"}
    assert 0 < scores["competition_score"] < 5 and "prevalence_constant_score" in scores
    oof = pd.read_csv(run / "oof.csv")
    assert len(oof) == held_out and set(CERVICAL_TARGETS) <= set(oof.columns)
    s0 = pd.read_csv(run / "study_s0" / "fold_0" / "oof.csv").set_index("StudyInstanceUID")
    s1 = pd.read_csv(run / "study_s1" / "fold_0" / "oof.csv").set_index("StudyInstanceUID")
    mean = ((s0[list(CERVICAL_TARGETS)] + s1[list(CERVICAL_TARGETS)]) / 2).sort_index()
    np.testing.assert_allclose(oof.set_index("StudyInstanceUID").sort_index()[list(CERVICAL_TARGETS)], mean)


def test_predict_and_report(tiny_sequence_run: Path, tiny_cervical_dataset: Path, tmp_path: Path) -> None:
    out = api.predict("cervical", model=tiny_sequence_run, input=tiny_cervical_dataset, out=tmp_path / "pred",
                      labels=tiny_cervical_dataset / "train.csv", progress=False, tta=False)
    assert out["counts"]["failed"] == 0 and out["counts"]["refused"] == 0
    sub = pd.read_csv(out["submission"])
    assert len(sub) == 8 * out["studies"] and sub.fractured.between(0, 1).all()
    result = json.loads(next((tmp_path / "pred" / "studies").glob("*.json")).read_text())
    assert result["model"]["route"] == "sequence" and result["model"]["seeds"] == [0, 1]
    assert set(result["model"]["folds"]) == {"stage1", "slices_s0", "study_s0", "slices_s1", "study_s1"}
    curves = result["slice_curves"]
    assert set(curves["fracture"]) == set(VERTEBRAE)
    assert all(len(c) == len(curves["indices"]) for c in curves["fracture"].values())
    assert curves["z_range"][0] <= curves["indices"][0] and curves["indices"][-1] <= curves["z_range"][1]
    assert set(result["vertebra_ranges"]) == set(VERTEBRAE) and len(result["crop_box"]) == 4
    api.report("cervical", predictions=tmp_path / "pred", input=tiny_cervical_dataset, out=tmp_path / "report")
    assert (tmp_path / "report" / "studies" / f"{result['study']}_slices.png").stat().st_size > 10_000
    assert f"{result['study']}_slices.png" in (tmp_path / "report" / "index.html").read_text()


def test_a_killed_study_stage_resumes_and_a_changed_cnn_rebuilds_the_cache(
        tiny_sequence_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_sequence_run, run, ignore=shutil.ignore_patterns("study_s*"))
    cfg = read_run_config(run).model_copy(deep=True)
    cfg.slices.seeds = [0]
    cfg.study.train.epochs = 2
    stage = StudyHeadStage(cfg, run, 0)
    train, _ = stage.datasets(0)
    bs = cfg.study.train.batch_size
    steps = len(train) // bs if len(train) > bs else 1
    before = _cache_meta(run)
    original, calls = StudyHeadStage.loss, {"n": 0}

    def dying(self, outputs, batch):  # noqa: ANN001, ANN202
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == steps + 1:
            raise RuntimeError("simulated kill")
        return original(self, outputs, batch)

    monkeypatch.setattr(StudyHeadStage, "loss", dying)
    with pytest.raises(RuntimeError, match="simulated kill"):
        api.train(cfg, run_dir=run, fold="0", stage="study", progress=False)
    fold = run / "study_s0" / "fold_0"
    assert not (fold / "model.pt").is_file()
    assert torch.load(fold / "checkpoint_last.ckpt", weights_only=False)["epoch"] == 0
    monkeypatch.setattr(StudyHeadStage, "loss", original)
    api.train(cfg, run_dir=run, fold="0", stage="study", resume=True, progress=False)
    scores = json.loads((fold / "scores.json").read_text())
    assert scores["epochs"] == 2 and scores["global_step"] == 2 * steps  # the first epoch was not trained again
    assert read_training_log(fold)["epoch"].max() == 1
    assert _cache_meta(run) == before  # the unchanged CNN's cache was read, not built again
    # a retrained CNN (other weights in slices_s0/fold_0/model.pt): a new cache, the old one removed
    path = run / "slices_s0" / "fold_0" / "model.pt"
    state = torch.load(path, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, path)
    api.train(cfg, run_dir=run, fold="0", stage="study", progress=False)
    (after,) = _cache_meta(run)
    assert after["key"] != before[0]["key"] and after["built"] == after["studies"]


def test_seeds_belong_to_the_sequence_route(tiny_cervical_dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["train", "cervical", "-c", "tiny", "-o", str(tmp_path / "r"), "--seeds", "0,1",
                              f"data.dataset_dir={tiny_cervical_dataset}"])
    assert res.exit_code == 2 and "--seeds" in res.output and "cervical/sequence" in res.output
    res = runner.invoke(app, ["train", "cervical", "-c", "sequence_tiny", "-o", str(tmp_path / "r"),
                              "--seeds", "0,0", f"data.dataset_dir={tiny_cervical_dataset}"])
    assert res.exit_code == 2 and "distinct" in res.output
    assert not (tmp_path / "r").exists()


def test_the_route_joins_an_ensemble_with_the_slice_route(tiny_sequence_run: Path, tiny_cervical_run: Path,
                                                           tiny_cervical_dataset: Path, tmp_path: Path) -> None:
    weights = api.fit_ensemble([tiny_cervical_run, tiny_sequence_run], tmp_path / "weights.json")
    fitted = json.loads(Path(weights).read_text())
    assert [m["route"] for m in fitted["members"]] == ["cervical/slices", "cervical/sequence"]
    out = api.predict("cervical", model=[tiny_cervical_run, tiny_sequence_run], weights=[0.5, 0.5],
                      input=tiny_cervical_dataset, out=tmp_path / "ens", progress=False, tta=False)
    assert out["counts"]["failed"] == 0
    result = json.loads(next((tmp_path / "ens" / "studies").glob("*.json")).read_text())
    members = result["model"]["ensemble"]
    assert [m["route"] for m in members] == ["cervical/slices", "cervical/sequence"]


def test_loading_the_predictor_imports_no_training_code(tiny_sequence_run: Path) -> None:
    code = ("import sys\nfrom spinelab.infer.ensemble import load_predictor\n"
            f"load_predictor('cervical', {str(tiny_sequence_run)!r})\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', "
            "'spinelab.train.run', 'spinelab.train.module', 'spinelab.tasks.cervical.sequence.pipeline')) "
            "and m != 'spinelab.train.run_folder'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_killed_labels_step_keeps_what_it_saved(tiny_sequence_run: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from spinelab.tasks.cervical import pipeline as slice_pipeline  # where localize_out_of_fold finds localize
    from spinelab.tasks.cervical.sequence import labels

    run = tmp_path / "run"
    shutil.copytree(tiny_sequence_run, run, ignore=shutil.ignore_patterns("slices_s*", "study_s*", "embeddings"))
    shutil.rmtree(run / "slice_labels")
    (run / "localization.json").unlink()
    cfg = read_run_config(run)
    monkeypatch.setattr(labels, "_SAVE_EVERY", 1)
    original, calls = slice_pipeline.localize, {"n": 0}

    def dying(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated kill")
        return original(*args, **kwargs)

    monkeypatch.setattr(slice_pipeline, "localize", dying)
    with pytest.raises(RuntimeError, match="simulated kill"):
        labels.write_slice_labels(cfg, run, progress=False)
    saved = json.loads((run / "slice_labels" / "index.json").read_text())["studies"]
    assert len(saved) == 3
    calls["n"] = -100  # no more kills
    labels.write_slice_labels(cfg, run, progress=False)
    total = len(pd.read_csv(run / "folds.csv"))
    assert calls["n"] == -100 + total - 3  # only the studies not saved were localised again
    assert len(json.loads((run / "slice_labels" / "index.json").read_text())["studies"]) == total
    assert set(json.loads((run / "localization.json").read_text())) == set(saved) | set(
        json.loads((run / "slice_labels" / "index.json").read_text())["studies"])
