"""Run-folder readers: fold specs checked up front, weights loaded safely, hashes, no Lightning import."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spinelab.errors import ConfigError, InputError
from spinelab.train.run_folder import (
    fold_dir,
    load_stage_models,
    model_sha256,
    parse_fold_spec,
    safe_torch_load,
    select_folds,
    trained_folds,
)
from tests.train.boring import BoringStage

REPO = Path(__file__).resolve().parents[2]


def test_parse_fold_spec_accepts_all_full_and_lists() -> None:
    assert parse_fold_spec("all", 5) == [0, 1, 2, 3, 4]
    assert parse_fold_spec("full", 5) == [None]
    assert parse_fold_spec("0, 2,2", 5) == [0, 2]


@pytest.mark.parametrize("spec", ["9", "0,5", "a", "-1", "1.5", ""])
def test_parse_fold_spec_refuses_folds_that_do_not_exist_or_parse(spec: str) -> None:
    with pytest.raises(ConfigError, match="--fold"):
        parse_fold_spec(spec, 5)


def _saved_stage(tmp_path: Path) -> BoringStage:
    stage = BoringStage(tmp_path)
    path = fold_dir(tmp_path, stage.name, 0) / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save(stage.build_model().state_dict(), path)
    return stage


def test_load_stage_models_and_hash(tmp_path: Path) -> None:
    stage = _saved_stage(tmp_path)
    assert trained_folds(tmp_path, "boring") == [0] and select_folds(tmp_path, "boring", None) == [0]
    (model,) = load_stage_models(stage)
    assert not model.training
    path = fold_dir(tmp_path, "boring", 0) / "model.pt"
    assert model_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("content", "problem"), [
    (lambda raw: raw[: len(raw) // 2], "cannot be read"),
    (lambda raw: b"garbage" * 10, "cannot be read"),
    (lambda raw: b"", "cannot be read"),
])
def test_truncated_or_garbage_weights_are_one_line_input_errors(tmp_path: Path, content, problem: str) -> None:
    stage = _saved_stage(tmp_path)
    path = fold_dir(tmp_path, "boring", 0) / "model.pt"
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(InputError, match=problem) as err:
        load_stage_models(stage)
    assert err.value.path == path and "\n" not in str(err.value)


def test_weights_of_another_model_are_named(tmp_path: Path) -> None:
    stage = _saved_stage(tmp_path)
    torch.save({"other.weight": torch.zeros(3)}, fold_dir(tmp_path, "boring", 0) / "model.pt")
    with pytest.raises(InputError, match="do not fit the model"):
        load_stage_models(stage)


def test_safe_load_refuses_objects(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"a": Path("/etc")}, path)  # a harmless class, but not plain data
    with pytest.raises(InputError, match="refused"):
        safe_torch_load(path)


def test_inference_side_imports_no_lightning() -> None:
    code = ("import sys, spinelab.train.run_folder, spinelab.train.run, spinelab.train.provenance, "
            "spinelab.tasks.cervical.predict, spinelab.tasks.lumbar.predict; "
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def test_run_format_is_written_read_and_checked(tmp_path: Path) -> None:
    import json

    from spinelab.train.run_folder import RUN_FORMAT, run_format, write_run_format

    assert run_format(tmp_path) == 1  # no format.json: a spinelab 0.1 run folder
    write_run_format(tmp_path)
    assert run_format(tmp_path) == RUN_FORMAT
    (tmp_path / "format.json").write_text(json.dumps({"format": RUN_FORMAT + 1}))
    with pytest.raises(InputError, match="newer than this spinelab reads"):
        run_format(tmp_path)
    (tmp_path / "format.json").write_text("{")
    with pytest.raises(InputError, match="format.json.*not a spinelab run format file"):
        run_format(tmp_path)


def test_run_config_is_read_once_and_handed_out_as_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from spinelab.config import load as load_module
    from spinelab.config.load import load_config, save_config
    from spinelab.train.run_folder import read_run_config

    save_config(load_config("lumbar"), tmp_path / "config.yaml")
    calls = []
    real = load_module.read_yaml
    monkeypatch.setattr(load_module, "read_yaml", lambda p: calls.append(p) or real(p))
    first, second = read_run_config(tmp_path), read_run_config(tmp_path)
    assert len(calls) == 1 and first == second and first is not second
    first.experiment = "changed"
    assert read_run_config(tmp_path).experiment == "default"
