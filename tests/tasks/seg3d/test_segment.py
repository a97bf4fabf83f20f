"""``Segmenter`` and ``spinelab segment``: labels back on the input's exact grid (real DICOM and NIfTI too),
flip TTA and folds, the input rules, one folder per study, failures recorded, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.infer.runtime import Runtime
from spinelab.io.dicom import read_series
from spinelab.io.nifti import read_nifti, write_nifti
from spinelab.io.orientation import reorient
from spinelab.io.volume import Volume
from spinelab.report.segmentation import PREVIEW_SIZE
from spinelab.tasks.cervical.seg3d.segment import JSON_FILE, MASK_FILE, PREVIEW_FILE, Segmenter, segment_studies

REPO = Path(__file__).resolve().parents[3]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def seg_run(tiny_cervical_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cervical/seg3d run folder of the tiny recipe, its one fold trained a few steps on one synthetic study
    (the run folder's layout written directly: a couple of seconds instead of a Lightning run)."""
    from spinelab.config.load import load_config, save_config
    from spinelab.io.geometry import resample_to
    from spinelab.tasks.cervical.seg3d.inputs import seg_input
    from spinelab.tasks.cervical.seg3d.seg_stage import SegStage
    from spinelab.tasks.cervical.studies import prepare_cervical_volume
    from spinelab.train.run_folder import fold_dir, write_run_format

    run = tmp_path_factory.mktemp("seg_run") / "run"
    cfg = load_config("cervical", [REPO / "src/spinelab/configs/cervical/seg3d_tiny.yaml"],
                      [f"data.dataset_dir={tiny_cervical_dataset}"])
    seg = sorted((tiny_cervical_dataset / "segmentations").glob("*.nii*"))[0]
    ct = prepare_cervical_volume(read_series(tiny_cervical_dataset / "train_images" / seg.name.split(".nii")[0]))
    labels = np.asarray(resample_to(read_nifti(seg, is_label=True), ct).array).copy()
    labels[labels > 7] = 0
    grid = seg_input(ct, cfg.seg)
    x, y = torch.from_numpy(grid.image)[None], torch.from_numpy(grid.mask_to_grid(labels).astype(np.int64))[None]
    torch.manual_seed(0)
    model = SegStage(cfg, run).build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x)["mask"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    write_run_format(run)
    fold_dir(run, "seg", 0).mkdir(parents=True)
    torch.save(model.eval().state_dict(), fold_dir(run, "seg", 0) / "model.pt")
    return run


class _Threshold(torch.nn.Module):
    """A stand-in network that needs no training: class 1 where the window maps HU above 0.7 (dense bone),
    class 2 between 0.45 and 0.7, else background; it commutes with flips, as a segmentation should."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        v = x[:, :1]
        logits = torch.full((x.shape[0], 8, *x.shape[2:]), -20.0)
        logits[:, 0:1] = 0.0
        logits[:, 1:2] = 40 * (v - 0.7)
        logits[:, 2:3] = torch.minimum(40 * (v - 0.45), 40 * (0.7 - v))
        return {"mask": logits}


def _phantom() -> Volume:
    """A small CT in HU stored feet first with columns towards the patient's right ('SPR'): air, soft tissue,
    an off-centre dense block (-> class 1) and a less dense one below it (-> class 2)."""
    arr = np.full((24, 20, 28), -1000, np.int16)
    arr[:, 4:16, 3:25] = 40
    arr[14:20, 6:12, 4:10] = 1500  # head end (stored feet first: high index = cranial), off-centre in W
    arr[3:9, 6:12, 15:22] = 600
    aff = np.eye(4)
    aff[:3, :3] = [[0.0, 0.0, -1.2], [0.0, 1.1, 0.0], [2.0, 0.0, 0.0]]  # D up (S), H posterior, W right
    aff[:3, 3] = [40.0, -20.0, -300.0]
    return Volume(arr, aff, slice_ids=[str(100 - i) for i in range(24)], meta={"modality": "CT", "format": "dicom"})


def _threshold_segmenter(run: Path, shape: tuple[int, int, int], *, tta: bool) -> Segmenter:
    s = Segmenter(run, runtime=Runtime(channels_last=False), tta=tta)
    s.cfg.seg.size = shape  # the grid of the canonical phantom itself: seg_input moves nothing
    s.models = [_Threshold(), _Threshold()]  # two "folds"
    return s


@pytest.mark.parametrize("tta", [False, True])
def test_labels_come_back_on_the_stored_grid_exactly(seg_run: Path, tta: bool) -> None:
    ct = _phantom()
    assert ct.orientation == "SPR"
    canonical_shape = reorient(ct, "IPL").shape
    result = _threshold_segmenter(seg_run, canonical_shape, tta=tta).segment(ct)
    expected = np.where(ct.array >= 1000, 1, np.where((ct.array >= 500) & (ct.array < 1000), 2, 0))
    assert result.labels.array.dtype == np.uint8
    assert np.array_equal(result.labels.affine, ct.affine) and result.labels.shape == ct.shape
    assert np.array_equal(result.labels.array, expected)
    c1 = result.vertebrae["C1"]
    assert c1.voxels == 6 * 6 * 6 and c1.box_dhw == ((14, 6, 4), (19, 11, 9))
    assert c1.slice_numbers == ("86", "81")
    # the check speaks about the phantom (C3-C7 missing), the input rules about its 48 mm extent
    assert [i.vertebrae[0] for i in result.issues if i.kind == "missing"] == ["C3", "C4", "C5", "C6", "C7"]
    assert any("segmented anyway" in w for w in result.input_warnings)


def test_a_non_ct_is_refused_and_recorded(seg_run: Path, tmp_path: Path) -> None:
    mr = Volume(np.full((30, 16, 16), 200, np.int16), np.diag([1.0, 1.0, 3.0, 1.0]), meta={"source": "mr.nii.gz"})
    write_nifti(mr, tmp_path / "mr.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MASK_FILE).write_bytes(b"stale")  # an older run's mask must not stay beside a refusal
    result = invoke("segment", "-i", tmp_path / "mr.nii.gz", "-o", tmp_path / "out", "--model", seg_run)
    assert result.exit_code == 3, result.output
    record = json.loads((tmp_path / "out" / JSON_FILE).read_text())
    assert record["status"] == "refused" and "not a CT" in record["reasons"][0]
    assert not (tmp_path / "out" / MASK_FILE).exists()


def test_cli_end_to_end_on_a_synthetic_study(seg_run: Path, tiny_cervical_dataset: Path, tmp_path: Path) -> None:
    study = sorted((tiny_cervical_dataset / "test_images").iterdir())[0]
    out = tmp_path / "out"
    result = invoke("segment", "-i", study, "-o", out, "--model", seg_run, "--tta")
    assert result.exit_code == 0, result.output
    assert f"segmented: {out}" in result.stdout
    assert "1 studies:" in result.stderr
    volume = read_series(study)
    img = nib.load(out / MASK_FILE)
    assert img.shape == volume.shape[::-1]  # nibabel's (i, j, k) = spinelab's (D, H, W) reversed
    mask = np.asarray(img.dataobj).transpose(2, 1, 0)
    record = json.loads((out / JSON_FILE).read_text())
    assert record["schema_version"] == 1 and record["study"] == study.name
    assert record["status"] in ("ok", "warning") and record["model"]["tta"] is True
    assert set(record["vertebrae"]) | set(record["missing"]) >= {"C1", "C7"}
    for name, entry in record["vertebrae"].items():  # the JSON describes the mask that was written
        found = np.argwhere(mask == entry["label"])
        assert entry["voxels"] == len(found), name
        assert entry["slices"]["start_index"] == found[:, 0].min()
        assert entry["slices"]["slice_numbers"][0] == volume.slice_ids[found[:, 0].min()]
    assert all(i["message"] in record["warnings"] for i in record["check"]["issues"])
    assert record["check"]["passed"] == (not record["check"]["issues"])
    assert Image.open(out / PREVIEW_FILE).size == PREVIEW_SIZE


def test_a_dataset_gives_a_folder_per_study_and_a_failed_study_is_recorded(seg_run: Path,
                                                                           tiny_cervical_dataset: Path,
                                                                           tmp_path: Path) -> None:
    folder = tmp_path / "studies"
    studies = sorted((tiny_cervical_dataset / "test_images").iterdir())
    for study in studies:
        shutil.copytree(study, folder / study.name)
    good = sorted(studies[0].iterdir())[0]
    (folder / "broken").mkdir()
    (folder / "broken" / good.name).write_bytes(good.read_bytes()[:400])  # a DICOM cut inside its header
    result = invoke("segment", "-i", folder, "-o", tmp_path / "out", "--model", seg_run)
    assert result.exit_code == 3, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    status = {s["study"]: s["status"] for s in manifest["studies"]}
    assert status.pop("broken") == "failed" and len(status) == 2
    assert set(status.values()) <= {"ok", "warning"} and manifest["counts"]["failed"] == 1
    assert json.loads((tmp_path / "out" / "broken" / JSON_FILE).read_text())["error"]
    for sid in status:
        assert (tmp_path / "out" / sid / MASK_FILE).is_file() and (tmp_path / "out" / sid / PREVIEW_FILE).is_file()
    assert "3 studies: " in result.stderr and "1 failed" in result.stderr


def test_bad_input_and_a_run_without_a_seg_stage_are_one_line_errors(seg_run: Path, tmp_path: Path) -> None:
    result = invoke("segment", "-i", tmp_path / "missing", "-o", tmp_path / "out", "--model", seg_run)
    assert result.exit_code == 2 and result.stderr.count("error:") == 1 and "missing" in result.stderr
    result = invoke("segment", "-i", tmp_path, "-o", tmp_path / "out", "--model", tmp_path)
    assert result.exit_code == 2 and "not a run folder" in result.stderr
    slices = tmp_path / "slices_run"
    slices.mkdir()
    (slices / "config.yaml").write_text("task: cervical\nexperiment: x\n")
    with pytest.raises(Exception, match="no seg stage"):
        Segmenter(slices)
    assert not (tmp_path / "out").exists()


def test_python_twin_takes_the_same_arguments(seg_run: Path, tmp_path: Path) -> None:
    import spinelab

    ct = _phantom()
    big = Volume(np.repeat(ct.array, 4, axis=0), ct.affine, meta={"modality": "CT"})
    write_nifti(big, tmp_path / "neck.nii.gz")
    out = spinelab.segment(tmp_path / "neck.nii.gz", tmp_path / "out", seg_run, progress=False)
    assert out["counts"]["failed"] == 0 and out["manifest"] is None
    written, given = nib.load(tmp_path / "out" / MASK_FILE), nib.load(tmp_path / "neck.nii.gz")
    assert written.shape == given.shape
    assert np.array_equal(written.affine, given.affine)  # a NIfTI input: the mask has its exact affine


@pytest.mark.realdata
def test_real_ct_dicom_mask_has_simpleitks_geometry(seg_run: Path, realdata: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    series = realdata / "totalsegmentator" / "example_ct_dicom_j2k"
    result = invoke("segment", "-i", series, "-o", tmp_path / "out", "--model", seg_run)
    assert result.exit_code == 0, result.output
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # nibabel's convention
    written = nib.load(tmp_path / "out" / MASK_FILE)
    assert written.shape == image.GetSize()
    np.testing.assert_allclose(written.affine, ras, atol=1e-4)
    record = json.loads((tmp_path / "out" / JSON_FILE).read_text())
    assert any("segmented anyway" in w for w in record["warnings"])  # 20 slices of 2 mm: too short for C1-C7


@pytest.mark.realdata
def test_real_ct_nifti_mask_keeps_the_input_affine(seg_run: Path, realdata: Path, tmp_path: Path) -> None:
    path = realdata / "totalsegmentator" / "example_ct.nii.gz"
    result = segment_studies(Segmenter(seg_run), path, tmp_path / "out", progress=False)
    assert result["counts"]["ok"] + result["counts"]["warning"] == 1
    written, given = nib.load(tmp_path / "out" / MASK_FILE), nib.load(path)
    assert written.shape == given.shape and np.array_equal(written.affine, given.affine)


def test_segmenting_imports_neither_lightning_nor_the_training_loop(seg_run: Path) -> None:
    import subprocess
    import sys

    code = ("import sys\nimport numpy as np\nfrom spinelab.io.volume import Volume\n"
            "from spinelab.tasks.cervical.seg3d.segment import Segmenter\n"
            "ct = np.full((40, 24, 24), -1000, np.int16)\nct[:, 8:16, 8:16] = 700\n"
            f"Segmenter({str(seg_run)!r}, tta=True).segment(Volume(ct, np.diag([3.0, 1.0, 1.0, 1.0])))\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', 'pytorch_lightning', "
            "'spinelab.train.run', 'spinelab.train.module', 'spinelab.tasks.cervical.seg3d.pipeline')) "
            "and m != 'spinelab.train.run_folder'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         env={"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip().splitlines()[-1] == "[]"
