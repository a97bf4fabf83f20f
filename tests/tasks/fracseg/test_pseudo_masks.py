"""Box pseudo-masks: inside their vertebra and their boxes, each voxel its vertebra; studies listed by whether
they enter the voxel loss; ``spinelab labels cervical --fracture-masks`` on a synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from spinelab.cli import app
from spinelab.config.fracseg import FracsegConfig
from spinelab.io.nifti import read_nifti
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.fracseg.pseudo_masks import nearest_vertebra, pseudo_mask


def _study() -> tuple[Volume, np.ndarray, pd.DataFrame]:
    """A 2 mm-slice CT with C3 and C4 stacked, a box on C3 that spills into the background and onto C4."""
    shape = (20, 32, 32)
    affine = np.diag([2.0, 0.7, 0.7, 1.0])
    vol = Volume(array=np.zeros(shape, dtype=np.int16), affine=affine)
    lab = np.zeros(shape, dtype=np.uint8)
    lab[3:9, 8:24, 8:24] = 3
    lab[9:15, 8:24, 8:24] = 4
    boxes = pd.DataFrame({"index": [6, 9], "x0": [4.0, 10.0], "y0": [4.0, 10.0], "x1": [14.0, 16.0],
                          "y1": [14.0, 16.0]})
    return vol, lab, boxes


def _cfg(**pseudo: object) -> FracsegConfig:
    return FracsegConfig.model_validate({"grid": {"margin_mm": 2.0, "spacing_mm": [1.0, 0.5, 0.5]},
                                         "pseudo": {"dilate_mm": 1.0, **pseudo}})


def test_pseudo_mask_lies_inside_its_vertebra_and_its_boxes() -> None:
    vol, lab, boxes = _study()
    crop, mask = pseudo_mask(vol, lab, boxes, {3, 4}, _cfg())
    assert mask.shape == crop.shape and set(np.unique(mask)) == {0, 3, 4}
    idx = np.argwhere(mask > 0)
    # Each voxel's position on the CT, through the crop's own affine.
    ct_idx = (np.c_[idx, np.ones(len(idx))] @ (np.linalg.inv(vol.affine) @ crop.affine).T)[:, :3]
    near = np.rint(ct_idx).astype(int)
    # Inside a box: the box's slice, its rows and columns (pixel edges).
    inside_box = np.zeros(len(idx), dtype=bool)
    for rec in boxes.itertuples():
        inside_box |= ((near[:, 0] == rec.index) & (ct_idx[:, 1] >= rec.y0 - 0.5) & (ct_idx[:, 1] < rec.y1 + 0.5)
                       & (ct_idx[:, 2] >= rec.x0 - 0.5) & (ct_idx[:, 2] < rec.x1 + 0.5))
    assert inside_box.all()
    # Inside the vertebra it carries (grown by dilate_mm = 1 mm: at most 2 in-plane pixels of 0.7 mm).
    grown = nearest_vertebra(lab, vol.spacing, 1.0 + 0.5)
    assert (grown[tuple(near.T)] == mask[tuple(idx.T)]).all()
    # The box on C3's slice 6 spills outside the vertebra (rows and columns 4..7): only its 1 mm rim stays.
    assert ct_idx[:, 1].min() >= 8 - 0.5 - 1.0 / 0.7 - 0.5 and ct_idx[:, 2].min() >= 8 - 0.5 - 1.0 / 0.7 - 0.5


def test_only_vertebrae_labelled_fractured_keep_voxels() -> None:
    vol, lab, boxes = _study()
    _, only_c3 = pseudo_mask(vol, lab, boxes, {3}, _cfg())
    assert set(np.unique(only_c3)) == {0, 3}
    _, every = pseudo_mask(vol, lab, boxes, set(), _cfg(fractured_only=False))
    assert set(np.unique(every)) == {0, 3, 4}


def test_labels_cli_writes_fracture_masks_with_their_affines(fracseg_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "derived"
    result = CliRunner().invoke(app, ["labels", "cervical", str(fracseg_dataset), "--out", str(out),
                                      "--fracture-masks"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "fracture_masks" / "index.json").read_text())
    train = pd.read_csv(fracseg_dataset / "train.csv").set_index("StudyInstanceUID")
    boxed = set(pd.read_csv(fracseg_dataset / "train_bounding_boxes.csv")["StudyInstanceUID"])
    assert set(index["studies"]) == boxed and boxed
    for uid, rec in index["studies"].items():
        fractured = {k for k in range(1, 8) if train.loc[uid, f"C{k}"] == 1}
        assert rec["fractured"] == sorted(fractured)
        assert rec["status"] in ("ok", "incomplete")
        mask = read_nifti(out / "fracture_masks" / f"{uid}.nii.gz", is_label=True)
        values = set(np.unique(mask.array)) - {0}
        assert values <= fractured and rec["covered"] == sorted(values)
        assert (rec["status"] == "ok") == (values == fractured)
        assert np.allclose(mask.spacing, (0.8, 0.4, 0.4))  # the route's default grid
        ct_mask = read_nifti(out / "masks" / f"{uid}.nii.gz", is_label=True)
        # The crop lies inside the CT's field of view, in world coordinates.
        corners = mask.voxel_to_world(np.array([[0, 0, 0], np.array(mask.shape) - 1]))
        ct_idx = ct_mask.world_to_voxel(corners)
        assert np.all(ct_idx >= -0.5 - 1e-6) and np.all(ct_idx <= np.array(ct_mask.shape) - 0.5 + 1e-6)
    assert any(r["status"] == "ok" for r in index["studies"].values())
