"""``export_model``: the package predicts exactly as its run folder, carries only inference files, and nothing
in it is unpickled as code."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from spinelab import api
from spinelab.deploy.manifest import MANIFEST_FILE, verify_package
from spinelab.deploy.package import export_model, write_manifest
from spinelab.errors import ConfigError, InputError
from spinelab.infer.ensemble import load_predictor
from tests.deploy.conftest import copy_package


def _predict(task: str, model: Path, input: Path, out: Path, **kw: object) -> pd.DataFrame:
    res = api.predict(task, model=model, input=input, out=out, device="cpu", precision="fp32", compile=False,
                      tta=False, progress=False, **kw)
    return pd.read_csv(res["submission"])


def test_a_cervical_package_predicts_as_its_run_folder(cervical_run: Path, cervical_package: Path,
                                                       cervical_studies: Path, tmp_path: Path) -> None:
    a = _predict("cervical", cervical_run, cervical_studies, tmp_path / "run")
    b = _predict("cervical", cervical_package, cervical_studies, tmp_path / "pkg")
    pd.testing.assert_frame_equal(a, b)
    info = json.loads(next((tmp_path / "pkg" / "studies").glob("*.json")).read_text())["model"]
    assert info["run_dir"] == str(cervical_package)
    assert info["weights_sha256"] == json.loads(next((tmp_path / "run" / "studies").glob("*.json")).read_text()
                                                )["model"]["weights_sha256"]


def test_a_lumbar_package_predicts_as_its_run_folder(lumbar_run: Path, lumbar_dataset: Path,
                                                     tmp_path: Path) -> None:
    pkg = export_model(lumbar_run, tmp_path / "pkg")
    assert (pkg / "geometry.json").is_file()  # the points route's fitted side offsets
    a = _predict("lumbar", lumbar_run, lumbar_dataset, tmp_path / "run")
    b = _predict("lumbar", pkg, lumbar_dataset, tmp_path / "pkg_pred")
    pd.testing.assert_frame_equal(a, b)


def test_the_package_holds_only_what_inference_reads(cervical_run: Path, cervical_package: Path) -> None:
    files = set(verify_package(cervical_package)["files"])
    assert {"config.yaml", "prior.json", "MODEL_CARD.md", "stage1/fold_0/model.pt", "stage2/fold_0/model.pt"} <= files
    assert not any(f.endswith((".ckpt", ".csv")) or "/logs/" in f for f in files)
    card = (cervical_package / "MODEL_CARD.md").read_text()
    assert "CC-BY-4.0" in card and json.loads((cervical_package / MANIFEST_FILE).read_text())["licence"] == "CC-BY-4.0"


def test_folds_not_trained_are_refused(cervical_run: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"folds \[3\] not trained"):
        export_model(cervical_run, tmp_path / "pkg", folds=[3])
    assert not (tmp_path / "pkg").exists() and not (tmp_path / "pkg.partial").exists()


def test_an_existing_folder_needs_overwrite(cervical_run: Path, tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "x").write_text("x")
    with pytest.raises(InputError, match="--overwrite"):
        export_model(cervical_run, tmp_path / "pkg")
    assert verify_package(export_model(cervical_run, tmp_path / "pkg", overwrite=True))


def test_a_package_is_not_exported_again(cervical_package: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already a model package"):
        export_model(cervical_package, tmp_path / "again")


def test_imagenet_paths_are_cleared_from_the_inference_config(cervical_run: Path, tmp_path: Path) -> None:
    from spinelab.deploy.package import _inference_config

    cfg = yaml.safe_load((cervical_run / "config.yaml").read_text())
    cfg["stage1"]["model"]["pretrained_path"] = str(tmp_path / "imagenet.pth")  # not on the deployment machine
    cfg["stage1"]["model"]["pretrained_sha256"] = "0" * 64
    (tmp_path / "src.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cleared = _inference_config(tmp_path / "src.yaml", tmp_path / "config.yaml")
    assert cleared == ["stage1.model.pretrained_path", "stage1.model.pretrained_sha256"]
    out = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert out["stage1"]["model"]["pretrained_path"] is None and out["stage2"] == cfg["stage2"]


class _Planted:
    """What a malicious checkpoint carries: an object whose unpickling would run code."""

    def __reduce__(self) -> tuple:
        return (print, ("planted code ran",))


def test_a_weight_file_with_pickled_code_is_refused(cervical_package: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    pkg = copy_package(cervical_package, tmp_path / "pkg")
    target = pkg / "stage2" / "fold_0" / "model.pt"
    state = torch.load(target, weights_only=True)
    state["extra"] = _Planted()
    torch.save(state, target)
    record = {k: v for k, v in json.loads((pkg / MANIFEST_FILE).read_text()).items()
              if k not in ("kind", "format", "spinelab", "created", "files")}
    write_manifest(pkg, record)  # hashes match: only weights_only stands between the file and the code
    with pytest.raises(InputError, match="refused: it references") as err:
        load_predictor("cervical", pkg, device="cpu", precision="fp32")
    assert err.value.path == target
    assert "planted code ran" not in capsys.readouterr().out
