"""Route ensembles of real (tiny) trained runs through the CLI and ``spinelab.api``: ``predict --model A --model
B``, ``ensemble fit`` on out-of-fold predictions, ``--weights weights.json`` (``spinelab.infer.ensemble``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from spinelab import api
from spinelab.cli import app
from spinelab.registry import CERVICAL_TARGETS

cli = CliRunner()


def _copy(run: Path, to: Path) -> Path:
    """A second member: the same trained run under another folder name."""
    return Path(shutil.copytree(run, to))


def test_two_cervical_runs_average_and_name_every_member(tiny_cervical_run: Path, tiny_cervical_dataset: Path,
                                                         tmp_path: Path) -> None:
    a, b = tiny_cervical_run, _copy(tiny_cervical_run, tmp_path / "run_b")
    test_images = tiny_cervical_dataset / "test_images"
    single = api.predict("cervical", model=a, input=test_images, out=tmp_path / "single", device="cpu", tta=False,
                         progress=False)
    done = cli.invoke(app, ["predict", "cervical", "--model", str(a), "--model", str(b), "--weights", "1,3",
                            "-i", str(test_images), "-o", str(tmp_path / "ens"), "--device", "cpu", "--no-tta"])
    assert done.exit_code == 0, done.output
    got, want = pd.read_csv(tmp_path / "ens" / "submission.csv"), pd.read_csv(single["submission"])
    assert list(got.row_id) == list(want.row_id)
    assert np.abs(got.fractured - want.fractured).max() <= 1e-6  # the mean of one model twice is that model
    study = sorted(p.name for p in test_images.iterdir())[0]
    one = json.loads((tmp_path / "ens" / "studies" / f"{study}.json").read_text())
    alone = json.loads((tmp_path / "single" / "studies" / f"{study}.json").read_text())
    members = one["model"]["ensemble"]
    assert [m["run_dir"] for m in members] == [str(a), str(b)] and [m["weight"] for m in members] == [0.25, 0.75]
    assert {m["route"] for m in members} == {"cervical/slices"}
    assert members[0]["weights_sha256"] == members[1]["weights_sha256"] == alone["model"]["weights_sha256"]
    assert [m["status"] for m in one["members"]] == [alone["status"]] * 2
    assert one["vertebra_ranges"] == alone["vertebra_ranges"] and one["warnings"] == alone["warnings"]
    manifest = json.loads((tmp_path / "ens" / "manifest.json").read_text())
    assert len(manifest["model"]["ensemble"]) == 2
    index = api.report("cervical", predictions=tmp_path / "ens", input=test_images, out=tmp_path / "report")
    assert index.is_file() and (tmp_path / "report" / "studies" / f"{study}.png").is_file()  # the report as is


def test_weights_are_fitted_on_out_of_fold_predictions_and_read_back(tiny_cervical_run: Path,
                                                                     tiny_cervical_dataset: Path,
                                                                     tmp_path: Path) -> None:
    a, b = tiny_cervical_run, _copy(tiny_cervical_run, tmp_path / "run_b")
    oof = pd.read_csv(b / "oof.csv", dtype={"StudyInstanceUID": str})
    for t in CERVICAL_TARGETS:  # member b knows the answers: the fit must lean on it
        oof[t] = np.where(oof[f"true_{t}"] == 1, 0.95, 0.05)
    oof.to_csv(b / "oof.csv", index=False)
    weights = tmp_path / "weights.json"
    fitted = cli.invoke(app, ["ensemble", "fit", "--model", str(a), "--model", str(b), "-o", str(weights)])
    assert fitted.exit_code == 0, fitted.output
    record = json.loads(weights.read_text())
    assert record["task"] == "cervical" and record["studies"] == len(oof)
    assert [m["weight"] for m in record["members"]][1] > 0.9
    assert sum(m["weight"] for m in record["members"]) == pytest.approx(1)
    assert record["oof_score"] <= min(m["oof_score"] for m in record["members"]) + 1e-9
    assert record["oof_score"] < record["equal_weights_score"]
    out = tmp_path / "pred"
    done = cli.invoke(app, ["predict", "cervical", "--model", str(a), "--model", str(b), "--weights", str(weights),
                            "-i", str(tiny_cervical_dataset / "test_images"), "-o", str(out), "--device", "cpu",
                            "--no-tta"])
    assert done.exit_code == 0, done.output
    one = json.loads(next((out / "studies").glob("*.json")).read_text())
    assert [m["weight"] for m in one["model"]["ensemble"]] == pytest.approx([m["weight"] for m in record["members"]])
    swapped = cli.invoke(app, ["predict", "cervical", "--model", str(b), "--model", str(a), "--weights", str(weights),
                               "-i", str(tiny_cervical_dataset), "-o", str(tmp_path / "x")])
    assert swapped.exit_code == 2 and "was fitted for the runs" in swapped.output


def test_ensemble_fit_refuses_a_run_without_out_of_fold_predictions(tiny_cervical_run: Path, tmp_path: Path) -> None:
    b = _copy(tiny_cervical_run, tmp_path / "run_b")
    (b / "oof.csv").unlink()
    done = cli.invoke(app, ["ensemble", "fit", "--model", str(tiny_cervical_run), "--model", str(b),
                            "-o", str(tmp_path / "w.json")])
    assert done.exit_code == 2 and "oof.csv: no out-of-fold predictions" in done.output
    assert not (tmp_path / "w.json").exists()


def test_two_lumbar_runs_average_grades_and_fit(tiny_lumbar_run: Path, tiny_lumbar_dataset: Path,
                                               tmp_path: Path) -> None:
    a, b = tiny_lumbar_run, _copy(tiny_lumbar_run, tmp_path / "run_b")
    single = api.predict("lumbar", model=a, input=tiny_lumbar_dataset / "test_images", out=tmp_path / "single",
                         device="cpu", tta=False, progress=False)
    ens = api.predict("lumbar", model=[a, b], weights=[0.5, 0.5], input=tiny_lumbar_dataset / "test_images",
                      out=tmp_path / "ens", device="cpu", tta=False, progress=False)
    got, want = pd.read_csv(ens["submission"]), pd.read_csv(single["submission"])
    assert np.abs(got.drop(columns="row_id").to_numpy() - want.drop(columns="row_id").to_numpy()).max() <= 1e-5
    one = json.loads(next((tmp_path / "ens" / "studies").glob("*.json")).read_text())
    assert {m["route"] for m in one["model"]["ensemble"]} == {"lumbar/points"} and "points" in one
    assert all(abs(sum(g.values()) - 1) < 1e-4 for g in one["grades"].values())
    weights = api.fit_ensemble([a, b], tmp_path / "weights.json")
    record = json.loads(weights.read_text())
    assert record["task"] == "lumbar" and record["studies"] >= 1
    assert record["oof_score"] == pytest.approx(record["members"][0]["oof_score"])  # identical members
