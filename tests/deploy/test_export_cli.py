"""``spinelab export model`` / ``export onnx`` and ``predict --runtime onnx`` from the command line: results on
stdout, a damaged package one line on stderr with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.deploy.manifest import MANIFEST_FILE
from tests.deploy.conftest import copy_package

runner = CliRunner()


def test_export_model_then_onnx_then_predict_on_onnxruntime(cervical_run: Path, cervical_studies: Path,
                                                            tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    r = runner.invoke(app, ["export", "model", str(cervical_run), "--out", str(pkg), "--folds", "0",
                            "--licence", "MIT"])
    assert r.exit_code == 0, r.output
    assert f"wrote {pkg}" in r.stdout and json.loads((pkg / MANIFEST_FILE).read_text())["licence"] == "MIT"
    r = runner.invoke(app, ["export", "onnx", str(pkg), "--all-networks", "--no-bf16"])
    assert r.exit_code == 0, r.output
    assert "onnx/stage1_fold_0.onnx" in r.stdout and "passed" in r.stdout and "bf16" not in r.stdout
    outs = {}
    for rt in ("torch", "onnx"):
        r = runner.invoke(app, ["-q", "predict", "cervical", "--model", str(pkg), "-i", str(cervical_studies), "-o",
                                str(tmp_path / rt), "--device", "cpu", "--precision", "fp32", "--runtime", rt])
        assert r.exit_code == 0, r.output
        outs[rt] = pd.read_csv(tmp_path / rt / "submission.csv")
    assert (outs["onnx"]["fractured"] - outs["torch"]["fractured"]).abs().max() < 1e-3


def test_a_bad_runtime_is_a_usage_error(cervical_package: Path, cervical_studies: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["predict", "cervical", "--model", str(cervical_package), "-i", str(cervical_studies),
                            "-o", str(tmp_path / "o"), "--runtime", "tensorrt"])
    assert r.exit_code == 2 and "torch or onnx" in r.output


def test_a_tampered_package_is_one_line_naming_the_file(cervical_package: Path, cervical_studies: Path,
                                                        tmp_path: Path) -> None:
    pkg = copy_package(cervical_package, tmp_path / "pkg")
    (pkg / "prior.json").write_text("{}")
    r = runner.invoke(app, ["predict", "cervical", "--model", str(pkg), "-i", str(cervical_studies), "-o",
                            str(tmp_path / "o")])
    assert r.exit_code == 2
    assert f"error: {pkg / 'prior.json'}:" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o" / "submission.csv").exists()


def test_export_model_of_a_missing_run_is_exit_2(tmp_path: Path) -> None:
    r = runner.invoke(app, ["export", "model", str(tmp_path / "nope"), "--out", str(tmp_path / "pkg")])
    assert r.exit_code == 2 and "not a run folder" in r.output


def test_segment_takes_a_package(cervical_package: Path, cervical_studies: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["segment", "--model", str(cervical_package), "-i", str(cervical_studies), "-o",
                            str(tmp_path / "o")])
    assert r.exit_code == 2 and "seg" in r.output  # verified, then refused as a slices run (no seg stage)
