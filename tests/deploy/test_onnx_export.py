"""ONNX export: opset 17+, parity under 1e-3 recorded, ``--runtime onnx`` predicts as torch, bf16 recorded and
made the default only where it passed on a CPU with bf16 units."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from spinelab import api
from spinelab.deploy.manifest import MANIFEST_FILE, verify_package
from spinelab.deploy.onnx_export import BF16_TOLERANCE, ONNX_TOLERANCE, export_onnx
from spinelab.deploy.package import write_manifest
from spinelab.errors import ConfigError
from spinelab.infer import runtime as runtime_module
from spinelab.infer.onnx_runtime import OnnxRuntime
from spinelab.infer.runtime import run_inference_options
from tests.deploy.conftest import copy_package


def test_every_2d_network_is_exported_at_opset_17_and_checked(onnx_package: Path) -> None:
    manifest = verify_package(onnx_package)  # the ONNX files are in the manifest too
    section = manifest["onnx"]
    assert {n["weights"] for n in section["networks"]} == {"stage1/fold_0/model.pt", "stage2/fold_0/model.pt"}
    for n in section["networks"]:
        assert n["file"] in manifest["files"] and n["use"] and n["max_abs_diff"] < ONNX_TOLERANCE
        model = onnx.load(str(onnx_package / n["file"]))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert section["parity"]["passed"] and section["parity"]["max_prob_diff"] < ONNX_TOLERANCE
    assert section["parity"]["networks_used"] == 2
    assert manifest["bf16"]["max_prob_diff"] < BF16_TOLERANCE and manifest["bf16"]["passed"]


def test_runtime_onnx_predicts_as_torch(onnx_package: Path, cervical_studies: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = OnnxRuntime.session

    def counting(self: OnnxRuntime, key: str) -> object:
        calls.append(key)
        return real(self, key)

    monkeypatch.setattr(OnnxRuntime, "session", counting)
    frames = {}
    for rt in ("torch", "onnx"):
        res = api.predict("cervical", model=onnx_package, input=cervical_studies, out=tmp_path / rt, device="cpu",
                          precision="fp32", tta=True, runtime=rt, progress=False)
        frames[rt] = pd.read_csv(res["submission"]).set_index("row_id")
    assert len(set(calls)) == 2  # both networks ran on onnxruntime
    diff = np.abs(frames["onnx"]["fractured"] - frames["torch"]["fractured"]).max()
    assert diff < ONNX_TOLERANCE


def test_runtime_onnx_needs_an_export(cervical_package: Path) -> None:
    with pytest.raises(ConfigError, match="spinelab export onnx"):
        run_inference_options(cervical_package, device="cpu", runtime="onnx")
    with pytest.raises(ConfigError, match="torch or onnx"):
        run_inference_options(cervical_package, device="cpu", runtime="tensorrt")


def test_a_failed_parity_check_is_refused_at_load(onnx_package: Path, tmp_path: Path) -> None:
    pkg = copy_package(onnx_package, tmp_path / "pkg")
    data = json.loads((pkg / MANIFEST_FILE).read_text())
    data["onnx"]["parity"].update(passed=False, max_prob_diff=0.5)
    record = {k: v for k, v in data.items() if k not in ("kind", "format", "spinelab", "created", "files")}
    write_manifest(pkg, record)
    with pytest.raises(ConfigError, match="parity check failed"):
        run_inference_options(pkg, device="cpu", runtime="onnx")


@pytest.mark.parametrize(("units", "passed", "expected"), [(True, True, "bf16"), (False, True, "fp32"),
                                                           (True, False, "fp32")])
def test_bf16_is_the_default_only_where_it_passed_and_the_cpu_has_units(
        onnx_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, units: bool, passed: bool,
        expected: str) -> None:
    pkg = copy_package(onnx_package, tmp_path / "pkg")
    data = json.loads((pkg / MANIFEST_FILE).read_text())
    data["bf16"]["passed"] = passed
    write_manifest(pkg, {k: v for k, v in data.items() if k not in ("kind", "format", "spinelab", "created", "files")})
    monkeypatch.setattr(runtime_module, "cpu_has_bf16_units", lambda: units)
    rt, _ = run_inference_options(pkg, device="cpu")
    assert rt.precision == expected
    assert run_inference_options(pkg, device="cpu", precision="fp32")[0].precision == "fp32"  # explicit wins


def test_a_route_without_2d_networks_records_bf16_only(cervical_package: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import spinelab.deploy.onnx_export as ox

    pkg = copy_package(cervical_package, tmp_path / "pkg")
    monkeypatch.setattr(ox, "_3D", (torch.nn.Module,))  # every network counts as 3D
    section = export_onnx(pkg, bf16=False)
    assert section["networks"] == [] and section["parity"]["passed"] is None and "bf16" not in section
    assert not (pkg / "onnx").exists() or not any((pkg / "onnx").iterdir())
    with pytest.raises(ConfigError, match="no ONNX network"):
        run_inference_options(pkg, device="cpu", runtime="onnx")


def test_an_opset_under_17_is_refused(cervical_package: Path) -> None:
    with pytest.raises(ConfigError, match="17 or newer"):
        export_onnx(cervical_package, opset=13)


def test_loading_a_package_on_onnxruntime_imports_no_training_code(onnx_package: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    code = ("import sys\nfrom spinelab.infer.ensemble import load_predictor\n"
            f"p = load_predictor('cervical', {str(onnx_package)!r}, device='cpu', runtime='onnx')\n"
            "assert type(p.runtime).__name__ == 'OnnxRuntime'\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', "
            "'spinelab.train.run', 'spinelab.train.module', 'spinelab.deploy.package', 'spinelab.deploy.onnx_export'"
            ")) and m != 'spinelab.train.run_folder'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo,
                         env={"PYTHONPATH": f"{repo / 'src'}:{repo}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip().splitlines()[-1] == "[]"
