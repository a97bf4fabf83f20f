"""``FractureMapper``: the map on the crop and back on the DICOM grid by world position, flip TTA, the last
round by default; ``spinelab segment`` writes ``fracture_prob.nii.gz`` for a fracseg run; no training imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.config.fracseg import FractureSegConfig
from spinelab.errors import ConfigError
from spinelab.infer.runtime import Runtime
from spinelab.io.dicom import read_series
from spinelab.io.nifti import read_nifti
from spinelab.tasks.cervical.fracseg.fracture_map import FRACTURE_FILE, FractureMapper, crop_probability, last_round

REPO = Path(__file__).resolve().parents[3]


def _study(run: Path) -> tuple[Path, Path]:
    """A training study of the run's dataset and its vertebra mask on its CT grid."""
    masks = sorted((run / "derived" / "masks").glob("*.nii.gz"))
    uid = masks[0].name.removesuffix(".nii.gz")
    from spinelab.train.run_folder import read_run_config

    return Path(read_run_config(run).data.dataset_dir) / "train_images" / uid, masks[0]


def test_map_goes_back_onto_the_dicom_grid_by_world_position(fracseg_run: Path) -> None:
    mapper = FractureMapper(fracseg_run, tta=True)
    assert mapper.stage == last_round(fracseg_run) == "fracture_seg_r2" and mapper.folds == [0]
    folder, mask = _study(fracseg_run)
    ct = read_series(folder)
    fmap = mapper.map(ct, read_nifti(mask, is_label=True))
    assert fmap.probability.shape == fmap.grid.shape == fmap.vertebrae.shape
    assert fmap.probability.min() >= 0.0 and fmap.probability.max() <= 1.0
    on_ct = fmap.on(ct)
    assert on_ct.shape == ct.shape and np.array_equal(on_ct.affine, ct.affine) and on_ct.array.dtype == np.float32
    # A CT voxel inside the crop carries the crop's value there (linear sampling at the crop voxel's position).
    crop_idx = np.array(fmap.grid.shape) // 2
    world = fmap.grid.affine[:3, :3] @ crop_idx + fmap.grid.affine[:3, 3]
    ct_idx = np.rint(ct.world_to_voxel(world)).astype(int)
    back = fmap.grid.volume(fmap.probability, is_label=False).world_to_voxel(ct.voxel_to_world(ct_idx))
    near = np.clip(np.rint(back).astype(int), 0, np.array(fmap.grid.shape) - 1)
    window = fmap.probability[tuple(slice(max(n - 1, 0), n + 2) for n in near)]
    assert window.min() - 1e-5 <= on_ct.array[tuple(ct_idx)] <= window.max() + 1e-5
    # Outside the crop (more than a voxel beyond its edge) the map is 0.
    every = np.argwhere(np.ones(ct.shape, dtype=bool))
    at = fmap.grid.volume(fmap.probability, is_label=False).world_to_voxel(ct.voxel_to_world(every))
    outside = np.any((at < -1.0) | (at > np.array(fmap.grid.shape)), axis=1)
    assert outside.any() and (on_ct.array[tuple(every[outside].T)] == 0).all()


def test_flip_tta_averages_the_map_and_its_mirror() -> None:
    class Left(torch.nn.Module):  # fracture logits rise along the columns: a mirror reverses them
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            ramp = torch.linspace(-3, 3, x.shape[-1]).expand_as(x[:, :1])
            return {"mask": torch.cat([torch.zeros_like(ramp), ramp], dim=1)}

    sec = FractureSegConfig(patch=(8, 8, 8), sw_overlap=0.0)
    image = np.zeros((1, 8, 8, 8), dtype=np.float32)
    runtime = Runtime(device="cpu", channels_last=False)
    plain = crop_probability([Left().eval()], image, sec, runtime, tta=False)
    both = crop_probability([Left().eval()], image, sec, runtime, tta=True)
    assert plain[0, 0, -1] > 0.9 and plain[0, 0, 0] < 0.1
    np.testing.assert_allclose(both, (plain + plain[..., ::-1]) / 2, atol=1e-6)


def test_segment_writes_the_fracture_probability_on_the_input_grid(fracseg_run: Path, tmp_path: Path) -> None:
    folder, _ = _study(fracseg_run)
    result = CliRunner().invoke(app, ["segment", "-i", str(folder), "-o", str(tmp_path / "out"), "--model",
                                      str(fracseg_run), "--device", "cpu", "--no-tta"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    record = json.loads((out / "vertebrae.json").read_text())
    assert record["outputs"]["fracture_prob"] == FRACTURE_FILE
    prob, labels = nib.load(out / FRACTURE_FILE), nib.load(out / "vertebrae.nii.gz")
    assert prob.shape == labels.shape and np.array_equal(prob.affine, labels.affine)
    data = np.asarray(prob.dataobj)
    assert data.min() >= 0 and data.max() <= 1 and data.max() > 0


def test_a_run_without_the_stage_is_refused(tmp_path: Path, fracseg_run: Path) -> None:
    import shutil

    shutil.copy(fracseg_run / "config.yaml", tmp_path / "config.yaml")
    shutil.copy(fracseg_run / "format.json", tmp_path / "format.json")
    with pytest.raises(ConfigError, match="no trained fracture_seg round"):
        FractureMapper(tmp_path)


def test_mapping_imports_neither_lightning_nor_the_training_loop(fracseg_run: Path) -> None:
    folder, mask = _study(fracseg_run)
    code = ("import sys\nfrom spinelab.io.dicom import read_series\nfrom spinelab.io.nifti import read_nifti\n"
            "from spinelab.tasks.cervical.fracseg.fracture_map import FractureMapper\n"
            f"m = FractureMapper({str(fracseg_run)!r}, tta=False)\n"
            f"m.map(read_series({str(folder)!r}), read_nifti({str(mask)!r}, is_label=True))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', "
            "'spinelab.train.run', 'spinelab.train.module', 'spinelab.tasks.cervical.fracseg.pipeline')) "
            "and m != 'spinelab.train.run_folder'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip().splitlines()[-1] == "[]"
