"""An nnU-Net v2 model folder in place of the seg stage: the stored array and spacing handed over as the export
wrote them, the Segmenter's outputs, a one-line error without the extra, nothing else importing nnunetv2; and
(opt-in, ``SPINELAB_NNUNET_TRAIN=1``) two training iterations through nnU-Net's Python API, then a prediction."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.errors import ConfigError, InputError
from spinelab.interop import nnunet_model
from spinelab.interop.nnunet_model import NNUNET_MISSING, NnunetFractureMap, NnunetSegmenter, is_nnunet_model_folder
from spinelab.io.cache import load_series
from spinelab.io.nifti import read_nifti

from .conftest import nnunet_env, nnunet_installed

REPO = Path(__file__).resolve().parents[2]


def _model_folder(root: Path, labels: dict[str, int]) -> Path:
    folder = root / "Dataset011_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    return folder


class _StubPredictor:
    """Stands in for ``nnUNetPredictor``: 'segments' each study by HU bands and records what it was handed."""

    seen: list[tuple[np.ndarray, dict]] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    def initialize_from_trained_model_folder(self, folder: str, use_folds, checkpoint_name: str) -> None:
        self.folds = use_folds

    def predict_single_npy_array(self, image, properties, prev, out, probabilities):
        _StubPredictor.seen.append((image, properties))
        band = np.clip(((image[0] - 200) // 60).astype(np.int64), 0, 7)  # bone HU bands -> labels 0..7
        probs = np.stack([(band == k).astype(np.float32) for k in range(8)])
        return band, probs


VERTEBRA_LABELS = {"background": 0, **{f"C{k}": k for k in range(1, 8)}}


def test_the_segmenter_hands_nnunet_the_stored_array_and_spacing(seg_dataset: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nnunet_model, "_predictor_class", lambda: _StubPredictor)
    folder = _model_folder(tmp_path, VERTEBRA_LABELS)
    segmenter = NnunetSegmenter(folder, tta=False)
    assert segmenter.model.predictor.kwargs["use_mirroring"] is False and segmenter.model.folds == ["0"]
    uid = sorted(p.name for p in (seg_dataset / "train_images").iterdir())[0]
    ct = load_series(f"train_images/{uid}", dataset_dir=seg_dataset)
    result = segmenter.segment(ct)
    image, properties = _StubPredictor.seen[-1]
    np.testing.assert_array_equal(image[0], ct.array)  # as stored, (slice, row, column): the export's NIfTI order
    assert properties["spacing"] == pytest.approx(list(ct.spacing))
    assert result.labels.shape == ct.shape and np.allclose(result.labels.affine, ct.affine)
    band = np.clip((np.asarray(ct.array, dtype=np.float32) - 200) // 60, 0, 7)
    kept = result.labels.array > 0
    np.testing.assert_array_equal(result.labels.array[kept], band[kept])  # largest parts of the bands, in place
    assert segmenter.names == {k: f"C{k}" for k in range(1, 8)}
    sha = hashlib.sha256(b"weights").hexdigest()
    assert segmenter.model_info["weights_sha256"] == {"fold_0/checkpoint_final.pth": sha}


def test_spinelab_segment_takes_an_nnunet_model_folder(seg_dataset: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nnunet_model, "_predictor_class", lambda: _StubPredictor)
    folder = _model_folder(tmp_path, VERTEBRA_LABELS)
    uid = sorted(p.name for p in (seg_dataset / "train_images").iterdir())[0]
    out = tmp_path / "seg"
    result = CliRunner().invoke(app, ["segment", "-i", str(seg_dataset / "train_images" / uid), "-o", str(out),
                                      "--model", str(folder), "--device", "cpu"])
    assert result.exit_code in (0, 3), result.output
    assert f"segmented: {out}" in result.stdout
    record = json.loads((out / "vertebrae.json").read_text())
    assert record["model"]["nnunet_model"] == str(folder) and record["model"]["folds"] == {"nnunet": ["0"]}
    ct = load_series(f"train_images/{uid}", dataset_dir=seg_dataset)
    assert read_nifti(out / "vertebrae.nii.gz", is_label=True).shape == ct.shape


def test_the_fracture_map_is_the_fracture_class_on_the_stored_grid(seg_dataset: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nnunet_model, "_predictor_class", lambda: _StubPredictor)
    uid = sorted(p.name for p in (seg_dataset / "train_images").iterdir())[0]
    ct = load_series(f"train_images/{uid}", dataset_dir=seg_dataset)
    fractures = NnunetFractureMap(_model_folder(tmp_path / "f", {"background": 0, "fracture": 1}))
    prob = fractures.probability(ct)
    assert prob.array.dtype == np.float32 and prob.shape == ct.shape and not prob.is_label
    np.testing.assert_array_equal(prob.array, (np.clip((np.asarray(ct.array) - 200) // 60, 0, 7) == 1))
    with pytest.raises(ConfigError, match="no 'fracture' label"):
        NnunetFractureMap(_model_folder(tmp_path / "v", VERTEBRA_LABELS))
    with pytest.raises(ConfigError, match="needs one trained on C1..C7"):
        NnunetSegmenter(_model_folder(tmp_path / "f2", {"background": 0, "fracture": 1}))


def test_without_the_extra_one_line_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     seg_dataset: Path) -> None:
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    monkeypatch.setitem(sys.modules, "nnunetv2.inference.predict_from_raw_data", None)
    folder = _model_folder(tmp_path, VERTEBRA_LABELS)
    with pytest.raises(ConfigError) as err:
        NnunetSegmenter(folder)
    assert str(err.value) == NNUNET_MISSING
    result = CliRunner().invoke(app, ["segment", "-i", str(seg_dataset / "train_images"), "-o", str(tmp_path / "o"),
                                      "--model", str(folder)])
    assert result.exit_code == 2 and "pip install 'spinelab[nnunet]'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_model_folder_problems_are_named(tmp_path: Path) -> None:
    assert not is_nnunet_model_folder(tmp_path)
    with pytest.raises(InputError, match="not a trained nnU-Net v2 model folder"):
        NnunetSegmenter(tmp_path)
    folder = _model_folder(tmp_path, VERTEBRA_LABELS)
    (folder / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(InputError, match=r"no fold_\*/checkpoint_final.pth"):
        NnunetSegmenter(folder)
    with pytest.raises(InputError, match="checkpoint not found"):
        NnunetSegmenter(folder, folds=[3])


def test_only_the_bridge_imports_nnunetv2() -> None:
    importers = set()
    for path in (REPO / "src" / "spinelab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "nnunetv2" for n in names):
                importers.add(path.relative_to(REPO / "src").as_posix())
    assert importers == {"spinelab/interop/nnunet_model.py"}
    bridge = ast.parse((REPO / "src/spinelab/interop/nnunet_model.py").read_text())
    top = [n for n in bridge.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not any("nnunetv2" in ast.dump(n) for n in top)  # imported inside a function: only when a model loads


@pytest.mark.slow
@pytest.mark.nnunet_train
@pytest.mark.skipif(os.environ.get("SPINELAB_NNUNET_TRAIN") != "1", reason="opt-in: SPINELAB_NNUNET_TRAIN=1")
def test_two_nnunet_iterations_train_and_predict_one_case(vertebra_export, nnunet_planned, seg_dataset: Path,
                                                          tmp_path: Path) -> None:
    """nnU-Net's preprocessing and ``nnUNetTrainer`` (2 iterations, 1 validation step, CPU) through its Python API
    in a subprocess (nnU-Net reads its folders from the environment at import), then ``NnunetSegmenter``."""
    assert nnunet_installed() and nnunet_planned.returncode == 0, nnunet_planned.stderr[-2000:]
    raw = vertebra_export.folder.parent
    code = f"""
import time, torch
start = time.perf_counter()
from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess
from nnunetv2.run.run_training import get_trainer_from_args
preprocess([{vertebra_export.dataset_id}], configurations=["3d_fullres"], num_processes=[1])
trainer = get_trainer_from_args("{vertebra_export.dataset_id}", "3d_fullres", 0, "nnUNetTrainer", "nnUNetPlans",
                                device=torch.device("cpu"))
trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch, trainer.num_epochs = 2, 1, 1
trainer.run_training()
print("TRAIN_SECONDS", round(time.perf_counter() - start, 1))
"""
    done = subprocess.run([sys.executable, "-c", code], env=nnunet_env(raw), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = raw.parent / "nnUNet_results" / vertebra_export.folder.name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    start = time.perf_counter()
    segmenter = NnunetSegmenter(folder, tta=False)
    uid = sorted(vertebra_export.cases)[0]
    ct = load_series(f"train_images/{uid}", dataset_dir=seg_dataset)
    result = segmenter.segment(ct)
    print(done.stdout.splitlines()[-1], "PREDICT_SECONDS", round(time.perf_counter() - start, 1))
    assert result.labels.shape == ct.shape and np.allclose(result.labels.affine, ct.affine)
    assert set(np.unique(result.labels.array)) <= set(range(8))
    assert segmenter.model_info["folds"] == {"nnunet": ["0"]}
