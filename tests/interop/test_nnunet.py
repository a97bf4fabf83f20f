"""``spinelab export nnunet``: nnU-Net v2's raw layout on the DICOM grid, spinelab's folds as splits, the plans
override, the fracture pseudo-masks, refusals that leave nothing behind; nnU-Net's own integrity check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinelab.errors import ConfigError, InputError
from spinelab.interop import nnunet as nn
from spinelab.interop.nnunet import CONFIGURATION, SEED_PLANS, export_nnunet, install_plans
from spinelab.io.cache import load_series
from spinelab.io.nifti import read_nifti, write_nifti
from spinelab.io.volume import Volume


def test_export_writes_images_and_c1_c7_labels_on_the_dicom_grid(seg_dataset: Path, vertebra_export) -> None:
    from spinelab.data.cervical_labels import _seg_on_ct, find_segmentations

    folder = vertebra_export.folder
    assert folder.name == "Dataset011_Tiny" and len(vertebra_export.cases) == 4 and vertebra_export.skipped == []
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 4 and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, **{f"C{k}": k for k in range(1, 8)}}
    segs = find_segmentations(seg_dataset)
    for case in vertebra_export.cases:
        ct = load_series(f"train_images/{case}", dataset_dir=seg_dataset)
        image = read_nifti(folder / "imagesTr" / f"{case}_0000.nii.gz")
        labels = read_nifti(folder / "labelsTr" / f"{case}.nii.gz", is_label=True)
        np.testing.assert_allclose(image.affine, ct.affine, atol=1e-4)
        np.testing.assert_allclose(labels.affine, ct.affine, atol=1e-4)
        np.testing.assert_array_equal(image.array, ct.array)  # HU kept, voxel for voxel
        expected = np.asarray(_seg_on_ct(segs[case], ct)[0].array)
        expected = np.where((expected >= 1) & (expected <= 7), expected, 0)
        np.testing.assert_array_equal(labels.array, expected)
        assert set(np.unique(labels.array)) == set(range(8))


def test_splits_are_spinelab_folds_and_the_plans_override_the_seed_grid(seg_dataset: Path, tmp_path: Path,
                                                                        vertebra_export) -> None:
    cases = sorted(vertebra_export.cases)
    folds = tmp_path / "folds.csv"
    pd.DataFrame({"StudyInstanceUID": cases, "fold": [0, 1, 2, 1]}).to_csv(folds, index=False)
    result = export_nnunet(seg_dataset, tmp_path / "raw", folds_file=folds, progress=False)
    splits = json.loads((result.folder / "splits_final.json").read_text())
    assert result.folds == 3 and [s["val"] for s in splits] == [[cases[0]], sorted([cases[1], cases[3]]), [cases[2]]]
    for s in splits:
        assert sorted(s["train"] + s["val"]) == cases and not set(s["train"]) & set(s["val"])
    plans = json.loads((result.folder / "spinelab_plans.json").read_text())["configurations"][CONFIGURATION]
    assert plans == {"inherits_from": "3d_fullres", **SEED_PLANS["vertebrae"]}
    assert result.folder.name == "Dataset101_CervicalVertebrae"
    assert any(c.startswith("nnUNetv2_plan_and_preprocess -d 101") for c in result.commands)
    assert any(c.startswith(f"nnUNetv2_train 101 {CONFIGURATION} 2") for c in result.commands)
    assert result.commands[-1].endswith(f"-d 101 -c {CONFIGURATION} -f 0 1 2")
    record = json.loads((result.folder / "spinelab_export.json").read_text())
    assert record["cases"] == {c: c for c in cases} and record["commands"] == result.commands


def test_fractures_export_reads_the_pseudo_masks_by_world_position(seg_dataset: Path, tmp_path: Path) -> None:
    derived = tmp_path / "derived"
    (derived / "fracture_masks").mkdir(parents=True)
    uid, incomplete = sorted(p.name for p in (seg_dataset / "train_images").iterdir())[:2]
    ct = load_series(f"train_images/{uid}", dataset_dir=seg_dataset)
    mask = np.zeros(ct.shape, dtype=np.uint8)
    mask[10:14, 20:25, 18:30] = 4  # a pseudo-mask voxel carries its vertebra (here C4)
    shift = np.eye(4)
    shift[:3, 3] = [8, 15, 10]  # the crop's voxel (0, 0, 0) is the CT's (8, 15, 10): a grid of its own
    crop = Volume(mask[8:20, 15:35, 10:40].copy(), ct.affine @ shift, is_label=True)
    write_nifti(crop, derived / "fracture_masks" / f"{uid}.nii.gz")
    write_nifti(crop, derived / "fracture_masks" / f"{incomplete}.nii.gz")  # its index status keeps it out
    (derived / "fracture_masks" / "index.json").write_text(json.dumps(
        {"studies": {uid: {"status": "ok"}, incomplete: {"status": "incomplete"}}}))
    result = export_nnunet(seg_dataset, tmp_path / "raw", task="fractures", derived_dir=derived, k=2, progress=False)
    assert list(result.cases) == [uid] and result.folder.name == "Dataset201_CervicalFractures"
    assert json.loads((result.folder / "dataset.json").read_text())["labels"] == {"background": 0, "fracture": 1}
    labels = read_nifti(result.folder / "labelsTr" / f"{uid}.nii.gz", is_label=True)
    np.testing.assert_array_equal(labels.array, (mask > 0).astype(np.uint8))
    plans = json.loads((result.folder / "spinelab_plans.json").read_text())["configurations"][CONFIGURATION]
    assert plans["spacing"] == [0.8, 0.4, 0.4] and plans["patch_size"] == [96, 192, 192]


def test_bad_requests_are_refused_before_anything_is_written(seg_dataset: Path, tmp_path: Path,
                                                             vertebra_export) -> None:
    raw = tmp_path / "raw"
    with pytest.raises(ConfigError, match="--task must be one of vertebrae, fractures"):
        export_nnunet(seg_dataset, raw, task="discs")
    with pytest.raises(ConfigError, match="--dataset-id must be 1..999"):
        export_nnunet(seg_dataset, raw, dataset_id=1000)
    with pytest.raises(ConfigError, match="letters, digits and underscores"):
        export_nnunet(seg_dataset, raw, name="My-Data")
    with pytest.raises(ConfigError, match="--patch needs three"):
        export_nnunet(seg_dataset, raw, patch_size=[64, 64])
    with pytest.raises(InputError, match="no train_images"):
        export_nnunet(tmp_path, raw)
    with pytest.raises(InputError, match="fracture pseudo-masks"):
        export_nnunet(seg_dataset, raw, task="fractures")
    assert not raw.exists()
    other = vertebra_export.folder.parent
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        export_nnunet(seg_dataset, other, dataset_id=11, name="Tiny", k=2)
    with pytest.raises(InputError, match="another nnU-Net dataset has id 11"):
        export_nnunet(seg_dataset, other, dataset_id=11, name="Other", k=2)


def test_an_interrupted_export_leaves_no_dataset_and_overwrite_replaces_whole(seg_dataset: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    first = export_nnunet(seg_dataset, raw, k=2, progress=False)
    stale = first.folder / "imagesTr" / "stale_0000.nii.gz"
    stale.write_bytes(b"old")
    calls = []

    def failing_write(volume, path):
        calls.append(path)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return write_nifti(volume, path)

    monkeypatch.setattr("spinelab.io.nifti.write_nifti", failing_write)
    with pytest.raises(KeyboardInterrupt):
        export_nnunet(seg_dataset, raw, k=2, overwrite=True, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == [first.folder.name] and stale.is_file()  # the old one intact
    monkeypatch.undo()
    export_nnunet(seg_dataset, raw, k=2, overwrite=True, progress=False)
    assert not stale.exists() and len(list((first.folder / "imagesTr").iterdir())) == 4
    assert sorted(p.name for p in raw.iterdir()) == [first.folder.name]


def test_a_study_that_cannot_be_read_is_left_out_with_its_reason(seg_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "ds"
    (data / "train_images").mkdir(parents=True)
    (data / "segmentations").mkdir()
    uids = sorted(p.name for p in (seg_dataset / "train_images").iterdir())
    for uid in uids:
        (data / "train_images" / uid).symlink_to(seg_dataset / "train_images" / uid)
        (data / "segmentations" / f"{uid}.nii").symlink_to(seg_dataset / "segmentations" / f"{uid}.nii")
    (data / "train.csv").symlink_to(seg_dataset / "train.csv")
    (data / "segmentations" / "1.2.3.nii").write_bytes(b"not a nifti")  # no CT either
    (data / "train_images" / "9.9.9").mkdir()
    (data / "segmentations" / "9.9.9.nii").write_bytes(b"not a nifti")
    folds = pd.DataFrame({"StudyInstanceUID": [*uids, "9.9.9"], "fold": [0, 1, 0, 1, 0]})
    folds.to_csv(data / "folds.csv", index=False)
    result = export_nnunet(data, tmp_path / "raw", progress=False)
    reasons = {s["study"]: s["reason"] for s in result.skipped}
    assert sorted(result.cases) == uids and reasons["1.2.3"] == "no train_images folder" and "9.9.9" in reasons


def test_nnunet_verifies_the_export_and_reads_the_override(vertebra_export, nnunet_planned) -> None:
    """The CI check: nnU-Net v2's own ``--verify_dataset_integrity`` and planning pass on the export, and its
    plans manager reads the merged ``3d_fullres_spinelab`` configuration."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    assert nnunet_planned.returncode == 0, nnunet_planned.stderr[-3000:]
    pre = vertebra_export.folder.parent.parent / "nnUNet_preprocessed" / vertebra_export.folder.name
    plans_file = install_plans(vertebra_export.folder, pre)
    config = PlansManager(str(plans_file)).get_configuration(CONFIGURATION)
    assert list(config.patch_size) == SEED_PLANS["vertebrae"]["patch_size"]
    assert list(config.spacing) == SEED_PLANS["vertebrae"]["spacing"]
    assert json.loads((pre / "splits_final.json").read_text()) == json.loads(
        (vertebra_export.folder / "splits_final.json").read_text())


def test_install_plans_refuses_a_missing_plans_file(vertebra_export, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nnUNetPlans.json: not found"):
        install_plans(vertebra_export.folder, tmp_path)
    (tmp_path / "nnUNetPlans.json").write_text('{"configurations": {"2d": {}}}')
    with pytest.raises(InputError, match="no 3d_fullres configuration"):
        install_plans(vertebra_export.folder, tmp_path)
    assert nn.dataset_folder_name(5, "A_1") == "Dataset005_A_1"
