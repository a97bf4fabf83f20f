"""Cervical prediction on inputs that are not a cervical CT (real data), --strict, --series, NIfTI and single
files, the study JSON schema and the manifest. The real-data tests run in CI (they fail without the data)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from spinelab import api
from spinelab.cli import app
from spinelab.infer.batch import read_study_results
from spinelab.registry import CERVICAL_TARGETS

pytestmark = pytest.mark.slow


def _study(out: Path, sid: str) -> dict:
    return json.loads((out / "studies" / f"{sid}.json").read_text())


def test_thoracic_ct_series_is_refused_and_gets_the_prior(tiny_cervical_run: Path, realdata: Path,
                                                          tmp_path: Path) -> None:
    series = realdata / "totalsegmentator" / "example_ct_dicom_j2k"  # 20 slices, 2 mm: 40 mm of T11-T12
    result = api.predict("cervical", model=tiny_cervical_run, input=series, out=tmp_path, device="cpu",
                         progress=False)
    assert result["counts"] == {"ok": 0, "warning": 0, "refused": 1, "failed": 0}
    study = _study(tmp_path, series.name)
    assert study["status"] == "refused" and any("40 mm" in r for r in study["reasons"])
    assert study["input"]["slice_extent_mm"] == 40.0 and study["input"]["modality"] == "CT"
    prior = json.loads((tiny_cervical_run / "prior.json").read_text())
    assert study["probabilities"] == pytest.approx({t: prior[t] for t in CERVICAL_TARGETS})
    sub = pd.read_csv(result["submission"])
    assert len(sub) == 8 and sub.fractured.between(0, 1).all()


def test_abdomen_ct_as_nifti_and_as_dicom_is_never_a_silent_ok(tiny_cervical_run: Path, realdata: Path,
                                                               tmp_path: Path) -> None:
    from spinelab.io.dicom_write import write_series
    from spinelab.io.nifti import read_nifti

    nifti = realdata / "totalsegmentator" / "example_ct.nii.gz"  # abdomen/pelvis, T11-S1, 3 mm voxels
    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(nifti, data / "abdomen_nifti.nii.gz")
    write_series(read_nifti(nifti, is_label=False), data / "abdomen_dicom", rescale_intercept=-2048.0,
                 bits_stored=16, series_description="ABDOMEN PELVIS")
    result = api.predict("cervical", model=tiny_cervical_run, input=data, out=tmp_path / "out", device="cpu",
                         progress=False)
    assert result["studies"] == 2 and result["counts"]["ok"] == 0 and result["counts"]["failed"] == 0
    for sid in ("abdomen_nifti", "abdomen_dicom"):
        study = _study(tmp_path / "out", sid)
        assert study["status"] in ("warning", "refused")
        assert any("pixel spacing 3 mm" in w for w in study["warnings"]), study["warnings"]
    assert any("names abdomen" in w for w in _study(tmp_path / "out", "abdomen_dicom")["warnings"])


def test_mr_slice_is_refused_by_the_command_with_exit_3_and_a_summary(tiny_cervical_run: Path, realdata: Path,
                                                                      tmp_path: Path) -> None:
    mr = realdata / "pydicom_data" / "MR2_J2KR.dcm"  # one MR slice
    run = CliRunner().invoke(app, ["predict", "cervical", "--model", str(tiny_cervical_run), "-i", str(mr),
                                   "-o", str(tmp_path), "--device", "cpu"])
    assert run.exit_code == 3, run.output
    summary = "1 studies: 0 ok, 0 warning, 1 refused, 0 failed"
    assert summary in run.stderr and summary not in run.stdout  # results on stdout, the summary on stderr
    study = _study(tmp_path, "MR2_J2KR")
    assert study["status"] == "refused"
    assert any("modality MR" in r for r in study["reasons"]) and any("single slice" in r for r in study["reasons"])


def test_mr_nifti_is_refused(tiny_cervical_run: Path, realdata: Path, tmp_path: Path) -> None:
    mr = realdata / "totalsegmentator" / "example_mr_sm.nii.gz"
    result = api.predict("cervical", model=tiny_cervical_run, input=mr, out=tmp_path, device="cpu", progress=False)
    assert result["counts"]["refused"] == 1
    assert any("not a CT in Hounsfield units" in r for r in _study(tmp_path, "example_mr_sm")["reasons"])


def test_strict_turns_warnings_into_refusals(tiny_cervical_run: Path, tiny_cervical_dataset: Path,
                                             tmp_path: Path) -> None:
    study = sorted((tiny_cervical_dataset / "test_images").iterdir())[0]
    lenient = api.predict("cervical", model=tiny_cervical_run, input=study, out=tmp_path / "a", device="cpu",
                          progress=False)
    first = _study(tmp_path / "a", study.name)
    assert lenient["counts"]["refused"] == 0 and first["status"] in ("ok", "warning")
    if first["status"] == "ok":
        pytest.fail("the 64 px synthetic study has 2+ mm pixels: it should warn")
    strict = api.predict("cervical", model=tiny_cervical_run, input=study, out=tmp_path / "b", device="cpu",
                         strict=True, progress=False)
    refused = _study(tmp_path / "b", study.name)
    assert strict["counts"]["refused"] == 1 and refused["status"] == "refused"
    assert all(r.startswith("--strict: ") for r in refused["reasons"])


def test_series_option_picks_one_of_several_series(tiny_cervical_run: Path, tiny_cervical_dataset: Path,
                                                   tmp_path: Path) -> None:
    from spinelab.io.dicom import read_series
    from spinelab.io.dicom_write import write_series

    study = tmp_path / "in" / "two_series"
    shutil.copytree(sorted((tiny_cervical_dataset / "test_images").iterdir())[0], study)
    vol = read_series(study)
    write_series(vol, study, file_names=[f"scout{i}.dcm" for i in range(vol.shape[0])],
                 series_description="SCOUT")
    unpicked = api.predict("cervical", model=tiny_cervical_run, input=study, out=tmp_path / "a", device="cpu",
                           progress=False)
    assert unpicked["counts"]["failed"] == 1 and "--series" in _study(tmp_path / "a", study.name)["error"]
    picked = api.predict("cervical", model=tiny_cervical_run, input=study, out=tmp_path / "b", device="cpu",
                         series=vol.meta["series_uid"], progress=False)
    assert picked["counts"]["failed"] == 0 and picked["counts"]["refused"] == 0


def test_study_json_states_schema_conventions_and_weights(tiny_cervical_run: Path, tiny_cervical_dataset: Path,
                                                          tmp_path: Path) -> None:
    result = api.predict("cervical", model=tiny_cervical_run, input=tiny_cervical_dataset, out=tmp_path,
                         device="cpu", progress=False)
    study = read_study_results(tmp_path)[0]
    assert study["schema_version"] == 1 and "exclusive" in study["conventions"]["crop_box"]
    x0, y0, x1, y1 = study["crop_box"]
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    ranges = study["vertebra_ranges"]["C1"]
    assert all(isinstance(s, str) for s in ranges["slice_numbers"])
    weights = study["model"]["weights_sha256"]
    assert set(weights) == {"stage1/fold_0/model.pt", "stage2/fold_0/model.pt"}
    for rel, digest in weights.items():
        assert digest == hashlib.sha256((tiny_cervical_run / rel).read_bytes()).hexdigest()
    evaluation = json.loads(Path(result["evaluation"]).read_text())
    assert evaluation["schema_version"] == 1
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["schema_version"] == 1 and manifest["model"]["weights_sha256"] == weights
    assert [s["study"] for s in manifest["studies"]] == sorted(p.name for p in
                                                               (tiny_cervical_dataset / "test_images").iterdir())


def test_a_reused_output_folder_reports_only_the_last_call(tiny_cervical_run: Path, tiny_cervical_dataset: Path,
                                                           realdata: Path, tmp_path: Path) -> None:
    api.predict("cervical", model=tiny_cervical_run, input=tiny_cervical_dataset, out=tmp_path, device="cpu",
                progress=False)
    mr = realdata / "totalsegmentator" / "example_mr_sm.nii.gz"
    api.predict("cervical", model=tiny_cervical_run, input=mr, out=tmp_path, device="cpu", progress=False)
    assert len(list((tmp_path / "studies").glob("*.json"))) == 3  # the old files stay on disk ...
    assert [r["study"] for r in read_study_results(tmp_path)] == ["example_mr_sm"]  # ... but are not read


def test_a_malformed_study_among_good_ones_costs_only_itself(tiny_cervical_run: Path, tiny_cervical_dataset: Path,
                                                             tmp_path: Path) -> None:
    """The issue's worst case: a header claiming 65535 x 65535 pixels once crashed `predict` (SIGSEGV, no
    submission). Run as a subprocess, so that a signal would show as one."""
    import os
    import subprocess
    import sys

    from spinelab.io.dicom_write import write_malformed

    studies = tmp_path / "studies"
    good = sorted((tiny_cervical_dataset / "test_images").iterdir())
    for d in good:
        shutil.copytree(d, studies / d.name)
    bad = studies / "bad_header"
    for f in sorted(good[0].iterdir()):
        write_malformed(f, bad / f.name, "oversized_header")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "spinelab", "predict", "cervical", "--model", str(tiny_cervical_run),
                           "-i", str(studies), "-o", str(out), "--device", "cpu"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{len(good) + 1} studies: " in proc.stderr and "1 failed" in proc.stderr
    sub = pd.read_csv(out / "submission.csv")
    assert len(sub) == 8 * (len(good) + 1) and sub.fractured.between(0, 1).all()
    assert _study(out, "bad_header")["status"] == "failed"
    assert "65535" in _study(out, "bad_header")["error"]
    assert all(_study(out, d.name)["status"] in ("ok", "warning") for d in good)
