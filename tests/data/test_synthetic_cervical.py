"""Tests of the synthetic RSNA 2022 cervical generator: layout, DICOM geometry, segmentation alignment,
fracture boxes, determinism and label prevalence."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from spinelab.data.synthetic.cervical import (
    CERVICAL_PREVALENCE,
    OVERALL_PREVALENCE,
    draw_cervical_labels,
    generate_cervical_dataset,
    plan_cervical_dataset,
)
from spinelab.errors import ConfigError
from spinelab.registry import VERTEBRAE

# Seed 35 with 5 train + 2 test studies gives every case the tests need: feet-first studies (one of them
# segmented and fractured), JPEG Lossless 4.70 and JPEG 2000 4.90 studies, positives in train and test.
PARAMS = {"studies": 5, "test_studies": 2, "size": 80, "seed": 35, "seg_fraction": 0.6, "slices": (24, 34)}
JPEG_LOSSLESS, JPEG2000 = "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cervical") / "ds"
    return generate_cervical_dataset(out, workers=1, progress=False, **PARAMS)


@pytest.fixture(scope="module")
def truth(dataset: Path) -> dict:
    return json.loads((dataset / "synthetic_truth.json").read_text())


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))


def _file_order_volume(folder: Path) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """HU volume in slice-number order (file order, not sorted by position) and the headers."""
    headers = [pydicom.dcmread(p) for p in _files(folder)]
    hu = np.stack([h.pixel_array * float(h.RescaleSlope) + float(h.RescaleIntercept) for h in headers])
    return hu, headers


def _seg_on_dicom_grid(seg_path: Path, headers: list[pydicom.Dataset]) -> np.ndarray:
    """Map a NIfTI onto the DICOM grid (file order) through world coordinates only (nearest neighbour)."""
    img = nib.load(str(seg_path))
    data = np.asarray(img.dataobj)
    inv = np.linalg.inv(img.affine)
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    iop = np.array(headers[0].ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in headers[0].PixelSpacing)
    hh, ww = np.mgrid[0:rows, 0:cols]
    out = np.zeros((len(headers), rows, cols), dtype=np.uint8)
    for d, h in enumerate(headers):
        ipp = np.array(h.ImagePositionPatient, dtype=float)
        lps = ipp + ww[..., None] * dc * iop[:3] + hh[..., None] * dr * iop[3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = np.rint(ras @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        ok = np.all((ijk >= 0) & (ijk < np.array(data.shape)), axis=-1)
        out[d][ok] = data[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]]
    return out


# --- layout -----------------------------------------------------------------------------------------------
def test_layout_and_columns_match_kaggle(dataset: Path, truth: dict, rsna_labels: Path) -> None:
    real = pd.read_csv(rsna_labels / "darraghdog__RSNA22" / "train_folded_v01.csv", nrows=5)
    train = pd.read_csv(dataset / "train.csv")
    assert list(train.columns) == [c for c in real.columns if c != "fold"]
    assert len(train) == PARAMS["studies"]
    assert (train["patient_overall"] == train[list(VERTEBRAE)].max(axis=1)).all()
    assert set(np.unique(train[list(VERTEBRAE)].to_numpy())) <= {0, 1}
    boxes = pd.read_csv(dataset / "train_bounding_boxes.csv")
    assert list(boxes.columns) == ["StudyInstanceUID", "x", "y", "width", "height", "slice_number"]
    test = pd.read_csv(dataset / "test.csv")
    assert list(test.columns) == ["row_id", "StudyInstanceUID", "prediction_type"]
    sub = pd.read_csv(dataset / "sample_submission.csv")
    assert list(sub.columns) == ["row_id", "fractured"]
    assert list(sub["row_id"]) == list(test["row_id"]) and (sub["fractured"] == 0.5).all()
    counts = test.groupby("StudyInstanceUID").size()
    assert (counts == 8).all() and len(counts) == PARAMS["test_studies"] + 1
    folders = {p.name for p in (dataset / "test_images").iterdir()}
    missing = set(counts.index) - folders
    assert missing == {truth["missing_test_study"]}
    assert (test["row_id"] == test["StudyInstanceUID"] + "_" + test["prediction_type"]).all()
    test_labels = pd.read_csv(dataset / "test_labels.csv")
    assert list(test_labels.columns) == list(train.columns)
    assert set(test_labels["StudyInstanceUID"]) == folders
    assert test_labels["patient_overall"].any() and train["patient_overall"].any()
    for uid in train["StudyInstanceUID"]:
        assert uid.startswith("1.2.826.0.1.3680043.")
        stems = sorted(int(p.stem) for p in (dataset / "train_images" / uid).glob("*.dcm"))
        assert stems == list(range(1, len(stems) + 1))
        assert PARAMS["slices"][0] <= len(stems) <= PARAMS["slices"][1]
    segs = sorted(p.stem for p in (dataset / "segmentations").glob("*.nii"))
    assert len(segs) == round(PARAMS["seg_fraction"] * PARAMS["studies"])
    assert set(segs) <= set(train["StudyInstanceUID"])
    # Boxes only for fractured training studies, and every fractured one has boxes.
    positives = set(train.loc[train["patient_overall"] == 1, "StudyInstanceUID"])
    assert set(boxes["StudyInstanceUID"]) == positives


def test_options_out_of_range_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="size"):
        generate_cervical_dataset(tmp_path, studies=1, size=8, progress=False)
    with pytest.raises(ConfigError, match="seg_fraction"):
        generate_cervical_dataset(tmp_path, studies=1, seg_fraction=1.5, progress=False)
    with pytest.raises(ConfigError, match="slices"):
        generate_cervical_dataset(tmp_path, studies=1, slices=(10, 5), progress=False)
    assert not any(tmp_path.iterdir())


# --- DICOM ------------------------------------------------------------------------------------------------
def test_dicom_headers_syntaxes_and_slice_order(dataset: Path, truth: dict) -> None:
    syntaxes, directions = set(), {}
    for uid, info in truth["studies"].items():
        folder = dataset / f"{info['split']}_images" / uid
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in _files(folder)]
        h0 = headers[0]
        assert h0.Modality == "CT" and h0.StudyInstanceUID == uid and h0.SeriesInstanceUID
        assert [float(v) for v in h0.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(h0.PixelSpacing[0]) == pytest.approx(info["pixel_spacing"], abs=1e-5)
        assert float(h0.SliceThickness) == pytest.approx(info["slice_spacing"], abs=1e-3)
        assert (float(h0.RescaleIntercept), float(h0.RescaleSlope)) == (-1024.0, 1.0)
        assert len({h.SOPInstanceUID for h in headers}) == len(headers)
        assert [int(h.InstanceNumber) for h in headers] == list(range(1, len(headers) + 1))
        z = np.array([float(h.ImagePositionPatient[2]) for h in headers])
        steps = np.diff(z)
        assert np.allclose(steps, steps[0], atol=1e-3)
        assert abs(steps[0]) == pytest.approx(info["slice_spacing"])
        directions[uid] = bool(steps[0] > 0)
        assert directions[uid] == info["feet_first"]
        syntaxes |= {str(h.file_meta.TransferSyntaxUID) for h in headers}
    assert {JPEG_LOSSLESS, JPEG2000} <= syntaxes
    assert any(directions.values()) and not all(directions.values())


def test_read_series_gives_ct_in_hounsfield_units(dataset: Path, truth: dict) -> None:
    read_series = pytest.importorskip("spinelab.io.dicom").read_series
    for uid, info in truth["studies"].items():
        vol = read_series(dataset / f"{info['split']}_images" / uid, workers=1)
        assert vol.shape == tuple(info["shape"])
        expected = (info["slice_spacing"], info["pixel_spacing"], info["pixel_spacing"])
        assert vol.spacing == pytest.approx(expected, abs=1e-3)
        arr = np.asarray(vol.array)
        assert arr.min() == -1024 and arr[:, 0, 0].max() == -1024  # outside the reconstruction circle
        assert arr.max() > 500  # cortical bone
        centre = np.array(info["vertebrae"]["C4"]["center_lps"])
        d, h, w = np.rint(vol.world_to_voxel(centre)).astype(int)
        assert np.median(arr[d, h - 1:h + 2, w - 1:w + 2]) > 150  # inside the C4 body


# --- segmentation alignment ------------------------------------------------------------------------------
def test_segmentation_aligns_only_through_world_coordinates(dataset: Path, truth: dict) -> None:
    segmented = [(uid, info) for uid, info in truth["studies"].items() if info["segmentation"]]
    assert any(info["feet_first"] for _, info in segmented)
    for uid, info in segmented:
        seg_path = dataset / "segmentations" / f"{uid}.nii"
        img = nib.load(str(seg_path))
        assert img.get_data_dtype() == np.uint8 and seg_path.read_bytes()[344:348] == b"n+1\x00"
        hu, headers = _file_order_volume(dataset / "train_images" / uid)
        # The raw array is not in DICOM order: it is (W, H, K) ...
        assert img.shape == (hu.shape[2], hu.shape[1], hu.shape[0])
        aligned = _seg_on_dicom_grid(seg_path, headers)
        # ... and the seeds' recipes recover the DICOM file order from it (S1/S2: flip rows, z by direction).
        raw = np.asarray(img.dataobj)
        recipe = raw[:, ::-1] if info["feet_first"] else raw[:, ::-1, ::-1]
        recipe = recipe.transpose(2, 1, 0)
        np.testing.assert_array_equal(recipe, aligned)
        assert set(np.unique(aligned)) >= set(range(1, 8)) and aligned.max() <= 19
        # Labels sit on bone: high mean HU inside every vertebra label.
        for label in range(1, 8):
            assert hu[aligned == label].mean() > 250, f"label {label} of {uid} is not on bone"
        # The label at each unfractured body centre (C2-C7) is that vertebra.
        file_affine = np.array(info["file_affine_lps"])
        inv = np.linalg.inv(file_affine)
        for level in VERTEBRAE[1:]:
            v = info["vertebrae"][level]
            if v["fractures"]:
                continue
            d, h, w = np.rint(inv[:3, :3] @ np.array(v["center_lps"]) + inv[:3, 3]).astype(int)
            assert aligned[d, h, w] == v["label"], f"{uid} {level}"


def test_fracture_boxes_lie_on_their_vertebra(dataset: Path, truth: dict) -> None:
    boxes = pd.read_csv(dataset / "train_bounding_boxes.csv")
    checked = 0
    for uid, info in truth["studies"].items():
        if not info["segmentation"] or not info["labels"]["patient_overall"]:
            continue
        hu, headers = _file_order_volume(dataset / "train_images" / uid)
        aligned = _seg_on_dicom_grid(dataset / "segmentations" / f"{uid}.nii", headers)
        fractured = {v["label"] for lv, v in info["vertebrae"].items() if v["fractures"]}
        assert fractured == {i + 1 for i, lv in enumerate(VERTEBRAE) if info["labels"][lv]}
        rows = boxes[boxes["StudyInstanceUID"] == uid]
        assert len(rows) >= len(fractured)
        for row in rows.itertuples():
            d = int(row.slice_number) - 1
            y0, x0 = int(row.y), int(row.x)
            patch = aligned[d, y0:y0 + int(row.height), x0:x0 + int(row.width)]
            assert np.isin(patch, list(fractured)).any(), f"box on slice {row.slice_number} misses its bone"
            assert min(x0, y0) >= 0 and x0 + row.width <= hu.shape[2] and y0 + row.height <= hu.shape[1]
            checked += 1
    assert checked > 0


# --- determinism and labels ------------------------------------------------------------------------------
def test_same_seed_gives_identical_dataset_in_parallel(dataset: Path, tmp_path: Path) -> None:
    again = generate_cervical_dataset(tmp_path / "again", workers=2, progress=False, **PARAMS)
    csvs = ("train.csv", "train_bounding_boxes.csv", "test.csv", "sample_submission.csv", "test_labels.csv")
    for name in csvs:
        assert (again / name).read_bytes() == (dataset / name).read_bytes(), name
    for folder in sorted((dataset / "train_images").iterdir())[:3]:
        a, _ = _file_order_volume(folder)
        b, _ = _file_order_volume(again / "train_images" / folder.name)
        np.testing.assert_array_equal(a, b)
    for seg in (dataset / "segmentations").glob("*.nii"):
        np.testing.assert_array_equal(np.asarray(nib.load(str(seg)).dataobj),
                                      np.asarray(nib.load(str(again / "segmentations" / seg.name)).dataobj))


def test_plan_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a, la, ma = plan_cervical_dataset(tmp_path, studies=10, seed=3)
    b, lb, mb = plan_cervical_dataset(tmp_path, studies=10, seed=3)
    c, _, _ = plan_cervical_dataset(tmp_path, studies=10, seed=4)
    assert a == b and ma == mb and np.array_equal(la, lb)
    assert [j["uid"] for j in a] != [j["uid"] for j in c]
    assert len({j["uid"] for j in a} | {ma}) == 15  # unique UIDs, the missing test study included


def test_label_prevalence_matches_real_train_labels(rsna_labels: Path) -> None:
    real = pd.read_csv(rsna_labels / "darraghdog__RSNA22" / "train_folded_v01.csv")
    drawn = draw_cervical_labels(40000, np.random.default_rng(0))
    cols = [*VERTEBRAE, "patient_overall"]
    ours = pd.DataFrame(drawn, columns=cols)
    assert (ours["patient_overall"] == ours[list(VERTEBRAE)].max(axis=1)).all()
    for col in cols:
        assert ours[col].mean() == pytest.approx(real[col].mean(), abs=0.012), col
    assert CERVICAL_PREVALENCE["C7"] == pytest.approx(real["C7"].mean(), abs=0.002)
    assert abs(OVERALL_PREVALENCE - real["patient_overall"].mean()) < 0.002
    # Positives carry 1.5 fractured vertebrae on average, as in the real labels.
    pos = ours[ours["patient_overall"] == 1]
    real_pos = real[real["patient_overall"] == 1]
    assert pos[list(VERTEBRAE)].sum(axis=1).mean() == pytest.approx(
        real_pos[list(VERTEBRAE)].sum(axis=1).mean(), abs=0.05)
    assert draw_cervical_labels(50, np.random.default_rng(1), positive=False).sum() == 0
    assert draw_cervical_labels(50, np.random.default_rng(1), positive=True)[:, -1].all()
