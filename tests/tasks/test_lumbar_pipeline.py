"""End-to-end tests of the lumbar pipeline: tiny training run, losses that fall, prediction with fold
ensemble and TTA, a study missing its axial series, the CV scores and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spinelab.config.load import load_config
from spinelab.data.synthetic.lumbar import generate_lumbar_dataset
from spinelab.errors import InputError
from spinelab.registry import LUMBAR_GRADES, lumbar_row_ids
from spinelab.tasks.lumbar.grading import GradingStage
from spinelab.tasks.lumbar.points import AxialPointStage

CONFIG = Path(__file__).resolve().parents[2] / "src/spinelab/configs" / "lumbar" / "tiny.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = generate_lumbar_dataset(tmp_path_factory.mktemp("lumbar") / "ds", studies=6, test_studies=2,
                                   size=64, seed=11, workers=1, progress=False)
    # Take the axial series away from the first test study: it must still be predicted, with a warning.
    desc = pd.read_csv(path / "test_series_descriptions.csv", dtype=str)
    first = sorted(desc.study_id.unique())[0]
    for series in desc[(desc.study_id == first) & (desc.series_description == "Axial T2")].series_id:
        shutil.rmtree(path / "test_images" / first / series)
    return path


@pytest.fixture(scope="module")
def cfg(dataset: Path):
    # the tiny recipe for one epoch per stage (that losses fall is checked on fixed batches below)
    return load_config("lumbar", [CONFIG], [f"data.dataset_dir={dataset}", f"data.cache_dir={dataset}_cache",
                                            "stage1.train.epochs=1", "stage2.train.epochs=1"])


@pytest.fixture(scope="module")
def run_dir(cfg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spinelab.api import train

    return train(cfg, run_dir=tmp_path_factory.mktemp("run") / "tiny", fold="0", progress=False)


@pytest.fixture(scope="module")
def predicted(run_dir: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from spinelab.api import predict

    out = tmp_path_factory.mktemp("pred")
    return out, predict("lumbar", model=run_dir, input=dataset, out=out, device="cpu", progress=False)


def _fit_steps(stage, steps: int = 6) -> tuple[float, float]:
    """Train a fresh model on one fixed batch; return the first and last loss."""
    torch.manual_seed(0)
    ds, _ = stage.datasets(None)
    ds.train = False  # a fixed batch: no augmentation
    batch = torch.utils.data.default_collate([ds[i] for i in range(min(2, len(ds)))])
    model = stage.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = stage.loss(stage.forward(model, batch), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_run_folder_layout(run_dir: Path, dataset: Path) -> None:
    for stage in ("stage1_sag_t2", "stage1_sag_t1", "stage1_axial", "stage2"):
        assert (run_dir / stage / "fold_0" / "model.pt").is_file()
        assert (run_dir / stage / "fold_0" / "scores.json").is_file()
    geometry = json.loads((run_dir / "geometry.json").read_text())
    assert geometry["t1_offsets_mm"]["left"] > geometry["t1_offsets_mm"]["right"]  # slices run right -> left
    assert np.allclose(np.asarray(json.loads((run_dir / "prior.json").read_text())).sum(1), 1)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["schema_version"] == 1 and len(provenance["weights"]) == 4
    assert (run_dir / "folds.csv").is_file() and not (dataset / "folds.csv").exists()  # made in the run folder


def test_cv_scores_hold_metric_and_point_error(run_dir: Path) -> None:
    scores = json.loads((run_dir / "cv_scores.json").read_text())
    assert scores["studies"] > 0 and np.isfinite(scores["lumbar_score"]) and scores["schema_version"] == 1
    assert np.isfinite(scores["weight_optimal_constant_score"])
    assert set(scores["point_error_mm"]["by_level"]) <= {"l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1"}
    assert scores["point_error_mm"]["mean_mm"] > 0
    assert "error_mm" in scores["stage_scores"]["stage1_sag_t2"]["fold_0"]


@pytest.mark.parametrize("stage_cls", [GradingStage, AxialPointStage])
def test_loss_falls(cfg, run_dir: Path, stage_cls) -> None:
    first, last = _fit_steps(stage_cls(cfg, run_dir))
    assert last < first


def test_submission_has_every_row_with_valid_probabilities(predicted, dataset: Path) -> None:
    out, result = predicted
    assert result["studies"] == 2 and result["failed"] == 0
    sub = pd.read_csv(out / "submission.csv")
    studies = sorted(pd.read_csv(dataset / "test_series_descriptions.csv", dtype=str).study_id.unique())
    assert sorted(sub.row_id) == sorted(r for s in studies for r in lumbar_row_ids(s))
    probs = sub[list(LUMBAR_GRADES)].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["studies"] == 2 and np.isfinite(evaluation["lumbar_score"])
    assert "point_error_mm" in evaluation


def test_study_without_axial_gets_prediction_and_warning(predicted, dataset: Path) -> None:
    out, _ = predicted
    first = sorted(pd.read_csv(dataset / "test_series_descriptions.csv", dtype=str).study_id.unique())[0]
    result = json.loads((out / "studies" / f"{first}.json").read_text())
    assert result["status"] == "warning"  # predicted, with the reason below
    assert "axial" in result["missing_series"]
    assert any("missing axial" in w for w in result["warnings"])
    assert len(result["grades"]) == 25
    spinal = result["points"]["spinal_canal_stenosis"]["l3_l4"]
    assert {"x", "y", "world", "instance_number", "series_id"} <= set(spinal)


def test_predict_one_study_function(run_dir: Path, dataset: Path) -> None:
    import spinelab

    study = sorted((dataset / "test_images").iterdir())[-1]
    result = spinelab.predict_lumbar(study, run_dir, device="cpu", tta=False)
    assert result.study == study.name and result.missing_series == []
    assert all(abs(sum(g.values()) - 1) < 1e-4 for g in result.grades.values())


def test_predict_rejects_unknown_fold(run_dir: Path, dataset: Path, tmp_path: Path) -> None:
    from spinelab.api import predict

    with pytest.raises(InputError, match="not trained"):
        predict("lumbar", model=run_dir, input=dataset, out=tmp_path, folds=[3], device="cpu", progress=False)


def test_report_draws_studies_and_index(predicted, dataset: Path) -> None:
    from spinelab.api import report

    out, _ = predicted
    index = report("lumbar", predictions=out, input=dataset, out=out / "report")
    html = index.read_text()
    assert index.name == "index.html" and "max_severe" in html
    assert len(list((out / "report" / "studies").glob("*.png"))) == 2
