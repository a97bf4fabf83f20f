"""provenance.json: versions, command, machine and weight hashes; history kept across commands."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from spinelab import __version__
from spinelab.train.provenance import PACKAGES, git_commit, record_weights, start_provenance

REPO = Path(__file__).resolve().parents[2]


def test_provenance_records_environment_command_and_weights(tmp_path: Path) -> None:
    start_provenance(tmp_path, accelerator="cpu", argv=["spinelab", "train", "cervical"])
    weights = tmp_path / "stage1" / "fold_0" / "model.pt"
    weights.parent.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, weights)
    record_weights(tmp_path)
    start_provenance(tmp_path, accelerator="cpu", argv=["spinelab", "train", "cervical", "--fold", "1"])
    record = json.loads((tmp_path / "provenance.json").read_text())
    assert record["schema_version"] == 1 and record["spinelab_version"] == __version__
    assert set(record["packages"]) == set(PACKAGES) and torch.__version__.startswith(record["packages"]["torch"])
    assert record["cpu"] and record["device"] == "cpu"
    assert [c["argv"][-1] for c in record["commands"]] == ["cervical", "1"]  # the history is kept
    assert record["weights"] == {"stage1/fold_0/model.pt": hashlib.sha256(weights.read_bytes()).hexdigest()}


def test_git_commit_in_and_outside_a_checkout(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", git_commit(REPO) or "")
