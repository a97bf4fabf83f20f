"""``spinelab export nnunet`` / ``nnunet-plans`` on the command line: the dataset and the next commands on
stdout, one-line errors with exit 2, option values checked before any work."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from spinelab.cli import app


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_export_prints_the_dataset_and_the_nnunet_commands(seg_dataset: Path, tmp_path: Path) -> None:
    raw = tmp_path / "nnUNet_raw"
    result = invoke("export", "nnunet", seg_dataset, "--out", raw, "--k", "2", "--dataset-id", "42",
                    "--name", "Neck", "--patch", "64,96,96", "--spacing", "1,0.8,0.8")
    assert result.exit_code == 0, result.output
    folder = raw / "Dataset042_Neck"
    assert f"wrote {folder} (4 cases, 2 folds, 0 left out)" in result.stdout
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "nnUNetv2_plan_and_preprocess -d 42 -c 3d_fullres --verify_dataset_integrity" in lines
    assert "nnUNetv2_train 42 3d_fullres_spinelab 1" in lines
    assert lines[-1] == "nnUNetv2_predict -i INPUT_FOLDER -o OUTPUT_FOLDER -d 42 -c 3d_fullres_spinelab -f 0 1"
    plans = json.loads((folder / "spinelab_plans.json").read_text())["configurations"]["3d_fullres_spinelab"]
    assert plans["patch_size"] == [64, 96, 96] and plans["spacing"] == [1.0, 0.8, 0.8]
    assert len(list((folder / "labelsTr").iterdir())) == 4


def test_bad_values_are_one_line_and_exit_2(seg_dataset: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    result = invoke("export", "nnunet", seg_dataset, "--out", raw, "--patch", "64,96")
    assert result.exit_code == 2 and "--patch needs three comma-separated numbers" in result.output
    result = invoke("export", "nnunet", seg_dataset, "--out", raw, "--task", "discs")
    assert result.exit_code == 2 and "error: --task must be one of vertebrae, fractures" in result.output
    result = invoke("export", "nnunet-plans", tmp_path, "--preprocessed", tmp_path)
    assert result.exit_code == 2 and "spinelab_plans.json: not found" in result.output
    assert "Traceback" not in result.output and not raw.exists()
