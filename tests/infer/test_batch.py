"""The prediction loop: statuses, refusals, failures, manifest, schema version and the weights' hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from spinelab.errors import InputError
from spinelab.infer.batch import (
    predict_studies,
    read_study_results,
    status_counts,
    summary_line,
    weights_sha256,
)
from spinelab.infer.checks import StudyRefusedError
from spinelab.infer.result import StudyResult


def _predict_one(sid: str, path: Path) -> StudyResult:
    if sid == "refused":
        raise StudyRefusedError(["a single slice"], ["no Modality"], {"shape": [1, 8, 8]})
    if sid == "failed":
        raise InputError(path, "no readable DICOM image")
    if sid == "crashed":
        raise ZeroDivisionError("bug")
    if sid == "malformed":  # an invalid result cannot be built: the study fails with the validation error
        return StudyResult(schema_version=1, study=sid, status="fine", probabilities={"C1": 0.3})
    if sid == "dict":  # the contract is a StudyResult object
        return {"study": sid, "probabilities": {"C1": 0.3}}  # type: ignore[return-value]
    return StudyResult(schema_version=1, study=sid, status="warning" if sid == "warned" else "ok",
                       probabilities={"C1": 0.3}, warnings=["coarse"] if sid == "warned" else [])


def _fallback(sid: str, error: str) -> StudyResult:
    return StudyResult(schema_version=1, study=sid, probabilities={"C1": 0.1}, status="failed", error=error,
                       warnings=[f"failed: {error}"])


def test_every_status_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    ids = ["good", "warned", "refused", "failed", "crashed", "malformed", "dict"]
    results = predict_studies([(s, tmp_path / s) for s in ids], _predict_one, _fallback, out_dir=tmp_path,
                              progress=False, task="cervical", model={"weights_sha256": {"m.pt": "ab"}})
    assert [r["status"] for r in results] == ["ok", "warning", "refused", "failed", "failed", "failed", "failed"]
    refused = json.loads((tmp_path / "studies" / "refused.json").read_text())
    assert refused["reasons"] == ["a single slice"] and "error" not in refused
    assert refused["probabilities"] == {"C1": 0.1}
    assert refused["warnings"][0].startswith("refused, prior used") and refused["input"] == {"shape": [1, 8, 8]}
    assert "ZeroDivisionError" in results[4]["traceback"]
    assert "ValidationError" in results[5]["error"] and "status" in results[5]["error"]
    assert results[6]["error"] == "TypeError: a predictor returned dict, not a StudyResult"
    assert all(r["schema_version"] == 1 for r in results)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": 1, "warning": 1, "refused": 1, "failed": 4}
    assert [(s["study"], s["file"]) for s in manifest["studies"]] == [(s, f"studies/{s}.json") for s in ids]
    assert manifest["task"] == "cervical" and manifest["model"]["weights_sha256"] == {"m.pt": "ab"}


def test_summary_line() -> None:
    counts = status_counts([{"status": "ok"}, {"status": "refused"}, {}])
    assert summary_line(counts) == "3 studies: 2 ok, 0 warning, 1 refused, 0 failed"


def test_read_study_results_follows_the_manifest(tmp_path: Path) -> None:
    predict_studies([("old", tmp_path)], _predict_one, _fallback, out_dir=tmp_path, progress=False)
    predict_studies([("new", tmp_path)], _predict_one, _fallback, out_dir=tmp_path, progress=False)
    assert [r["study"] for r in read_study_results(tmp_path / "submission.csv")] == ["new"]
    (tmp_path / "studies" / "new.json").unlink()
    with pytest.raises(InputError, match="listed in manifest.json but missing"):
        read_study_results(tmp_path)
    (tmp_path / "manifest.json").unlink()  # a folder from before manifests: every study JSON
    assert [r["study"] for r in read_study_results(tmp_path)] == ["old"]


def test_weights_are_hashed_by_relative_path(tmp_path: Path) -> None:
    path = tmp_path / "stage1" / "fold_0" / "model.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    assert weights_sha256(tmp_path, [path]) == {"stage1/fold_0/model.pt": hashlib.sha256(b"weights").hexdigest()}
