"""Tests of per-slice cervical labels derived from segmentations, on tiny studies with known truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinelab.data.cervical_labels import BOX_COLUMNS, SLICE_COLUMNS, derive_cervical_labels
from spinelab.io.dicom_write import write_series
from spinelab.io.nifti import write_nifti
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE

DEPTH, SIZE = 16, 64


def _truth_labels() -> np.ndarray:
    """Label map ``(DEPTH, SIZE, SIZE)`` indexed head-first: slice 0 is the most cranial.

    Vertebra k (1..7) occupies slices 2k-1 and 2k: a 6 x 8 block (48 px) on its first slice and a larger
    (10 + k) x 12 block on its second, so its ratio is 48 / (12 * (10 + k)) on the first slice and 1 on the
    second. Slice 2k (k < 7) also holds a 4 x 4 corner of vertebra k + 1 (ratio 16 / max) far to the right,
    so the union box spans both. Slices 15 holds T1 (label 8), which must be ignored; slice 0 is empty.
    """
    lab = np.zeros((DEPTH, SIZE, SIZE), dtype=np.uint8)
    for k in range(1, 8):
        first, second = 2 * k - 1, 2 * k
        lab[first, 10 + k : 16 + k, 20:28] = k  # 6 x 8 = 48 px
        lab[second, 20 : 30 + k, 14:26] = k  # (10 + k) x 12 px
        if k < 7:
            lab[second, 40:44, 50:54] = k + 1  # 16 px of the next vertebra
    lab[15, 30:40, 30:40] = 8
    return lab


def _expected_row(lab_slice: np.ndarray, peaks: np.ndarray) -> dict[str, float]:
    """Ratios and box of one head-first truth slice, computed the slow, obvious way."""
    row: dict[str, float] = {}
    for k, name in enumerate(VERTEBRAE, start=1):
        row[name] = np.count_nonzero(lab_slice == k) / peaks[k - 1]
    rr, cc = np.nonzero((lab_slice >= 1) & (lab_slice <= 7))
    if rr.size:
        row.update(x0=cc.min(), y0=rr.min(), x1=cc.max() + 1, y1=rr.max() + 1)
    return row


def _ct_affine(head_first_d: bool) -> np.ndarray:
    """Axial (D, H, W) -> LPS affine; D runs towards the feet if ``head_first_d`` else towards the head."""
    aff = np.eye(4)
    aff[:3, 0] = [0.0, 0.0, -2.0 if head_first_d else 2.0]
    aff[:3, 1] = [0.0, 0.8, 0.0]
    aff[:3, 2] = [0.8, 0.0, 0.0]
    aff[:3, 3] = [-25.0, -20.0, 10.0]
    return aff


def _sagittal_seg(labels: np.ndarray, affine: np.ndarray) -> Volume:
    """The same labels in another axis order (W, H, D), H and D flipped, with the affine that keeps every
    voxel at its world position -- the layout of the RSNA sagittal NIfTI files."""
    d, h, w = labels.shape
    array = labels.transpose(2, 1, 0)[:, ::-1, ::-1]  # s = (w, h', d') with h' = h-1-h, d' = d-1-d
    m = np.zeros((4, 4))
    m[2, 0] = 1.0  # s0 -> w
    m[1, 1], m[1, 3] = -1.0, h - 1  # s1 -> h
    m[0, 2], m[0, 3] = -1.0, d - 1  # s2 -> d
    m[3, 3] = 1.0
    return Volume(array=np.ascontiguousarray(array), affine=affine @ m, is_label=True)


def _write_study(
    root: Path, uid: str, *, head_first_d: bool, files_head_to_feet: bool, with_seg: bool = True
) -> dict[str, int]:
    """Write one study; return ``{slice_number: head-first truth slice}``."""
    truth = _truth_labels()
    # CT array in its own D order; the truth is head-first.
    lab = truth if head_first_d else truth[::-1]
    ct = np.where(lab > 0, 700, -50).astype(np.int16)
    affine = _ct_affine(head_first_d)
    head_first_of_d = np.arange(DEPTH) if head_first_d else DEPTH - 1 - np.arange(DEPTH)
    # RSNA file numbering: "head to feet" = slice_number 1 is the most cranial slice.
    numbers = head_first_of_d + 1 if files_head_to_feet else DEPTH - head_first_of_d
    names = [f"{n}.dcm" for n in numbers]
    write_series(
        Volume(ct, affine),
        root / "train_images" / uid,
        file_names=names,
        study_uid=uid,
        instance_numbers=[int(n) for n in numbers],
    )
    if with_seg:
        write_nifti(_sagittal_seg(lab, affine), root / "segmentations" / f"{uid}.nii")
    return {str(n): int(h) for n, h in zip(numbers, head_first_of_d, strict=True)}


@pytest.mark.parametrize(
    "files_head_to_feet", [True, False], ids=["files-head-to-feet", "files-feet-to-head"]
)
@pytest.mark.parametrize("head_first_d", [True, False], ids=["written-head-first", "written-feet-first"])
def test_slice_labels_match_truth(tmp_path: Path, head_first_d: bool, files_head_to_feet: bool) -> None:
    mapping = _write_study(
        tmp_path, "1.2.3", head_first_d=head_first_d, files_head_to_feet=files_head_to_feet
    )
    paths = derive_cervical_labels(tmp_path, progress=False)
    assert [p.name for p in paths] == ["slice_labels.csv", "fracture_boxes.csv", "label_failures.json"]
    assert paths[0].parent == tmp_path / "derived"
    table = pd.read_csv(paths[0], dtype={"StudyInstanceUID": str, "slice_number": str})
    assert table.columns.tolist() == SLICE_COLUMNS
    report = json.loads(paths[2].read_text())
    # The NIfTI lattice is the CT lattice permuted: an exact move, nothing lost, nothing to report.
    assert report["failed"] == [] and [w for w in report["warnings"] if w["study"]] == []
    assert "no train_bounding_boxes.csv" in report["warnings"][0]["warning"]
    assert table["index"].tolist() == list(range(DEPTH))
    truth = _truth_labels()
    peaks = np.array([max(np.count_nonzero(s == k) for s in truth) for k in range(1, 8)], dtype=float)
    for row in table.itertuples(index=False):
        hf = mapping[row.slice_number]
        exp = _expected_row(truth[hf], peaks)
        for name in VERTEBRAE:
            assert getattr(row, name) == pytest.approx(exp[name], abs=1e-12), (row.slice_number, name)
        if "x0" in exp:
            assert (row.x0, row.y0, row.x1, row.y1) == (exp["x0"], exp["y0"], exp["x1"], exp["y1"])
            assert row.nx1 == pytest.approx(exp["x1"] / SIZE) and row.ny0 == pytest.approx(exp["y0"] / SIZE)
        else:
            assert np.isnan(row.x0) and np.isnan(row.nx0)
    # The array index runs along the slice normal (+z for this orientation): cranial slices last.
    hf_by_index = [mapping[s] for s in table["slice_number"]]
    assert hf_by_index == list(range(DEPTH - 1, -1, -1))
    # Hand-checked values: C3 occupies head-first slices 5 (48 px) and 6 (13 x 12 = 156 px, its max).
    c3 = table.set_index(table["slice_number"].map(mapping))["C3"]
    assert c3[5] == pytest.approx(48 / 156) and c3[6] == 1.0 and c3[4] == pytest.approx(16 / 156)
    # Slice 6 holds C3 (rows 20-32, cols 14-25) and a corner of C4 (rows 40-43, cols 50-53): union box.
    row6 = table[table["slice_number"].map(mapping) == 6].iloc[0]
    assert (row6.x0, row6.y0, row6.x1, row6.y1) == (14, 20, 54, 44)
    # T1 on slice 15 is not a cervical vertebra: no box, all ratios 0.
    row15 = table[table["slice_number"].map(mapping) == 15].iloc[0]
    assert np.isnan(row15.x0) and row15[list(VERTEBRAE)].sum() == 0


def test_fracture_boxes_and_failures(tmp_path: Path) -> None:
    mapping = _write_study(tmp_path, "1.2.3", head_first_d=True, files_head_to_feet=False)
    by_hf = {h: s for s, h in mapping.items()}
    _write_study(tmp_path, "1.2.4", head_first_d=False, files_head_to_feet=True, with_seg=False)
    # A segmentation whose DICOM folder is missing, and one that is not a NIfTI file at all.
    (tmp_path / "segmentations" / "1.2.9.nii").write_bytes(
        (tmp_path / "segmentations" / "1.2.3.nii").read_bytes()
    )
    (tmp_path / "segmentations" / "1.2.4.nii").write_text("not a nifti file")
    boxes = pd.DataFrame(
        [
            # C5 fills rows 20-34, cols 14-25 of head-first slice 10; the box covers part of it.
            {
                "StudyInstanceUID": "1.2.3",
                "x": 15.0,
                "y": 22.0,
                "width": 8.0,
                "height": 6.0,
                "slice_number": by_hf[10],
            },
            # Slice 0 is empty: the box maps to an index but no vertebra.
            {
                "StudyInstanceUID": "1.2.3",
                "x": 1.0,
                "y": 1.0,
                "width": 5.0,
                "height": 5.0,
                "slice_number": by_hf[0],
            },
            {
                "StudyInstanceUID": "1.2.3",
                "x": 1.0,
                "y": 1.0,
                "width": 5.0,
                "height": 5.0,
                "slice_number": 999,
            },
            {
                "StudyInstanceUID": "1.2.4",
                "x": 10.0,
                "y": 12.0,
                "width": 4.0,
                "height": 4.0,
                "slice_number": 3,
            },
        ]
    )
    boxes.to_csv(tmp_path / "train_bounding_boxes.csv", index=False)
    out = tmp_path / "labels_out"
    slice_csv, box_csv, report = derive_cervical_labels(tmp_path, out=out, progress=False)
    table = pd.read_csv(box_csv, dtype={"StudyInstanceUID": str, "slice_number": str})
    assert table.columns.tolist() == BOX_COLUMNS
    assert len(table) == 3
    first = table.iloc[0]
    slices = pd.read_csv(slice_csv, dtype={"slice_number": str})
    assert first["index"] == slices.loc[slices["slice_number"] == by_hf[10], "index"].item()
    assert first["vertebra"] == "C5" and first["overlap"] == 8 * 6
    assert (first.x1, first.y1, first.nx0) == (23.0, 28.0, pytest.approx(15 / SIZE))
    assert pd.isna(table.iloc[1]["vertebra"]) and table.iloc[1]["overlap"] == 0
    # Study 1.2.4 has boxes but no usable segmentation: index from its slice ids, no vertebra.
    other = table[table["StudyInstanceUID"] == "1.2.4"].iloc[0]
    assert pd.isna(other["vertebra"]) and 0 <= other["index"] < DEPTH
    info = json.loads(report.read_text())
    failed = {f["study"]: f["error"] for f in info["failed"]}
    assert set(failed) == {"1.2.4", "1.2.9"}
    assert "not a readable NIfTI" in failed["1.2.4"] and "1.2.9" in failed["1.2.9"]
    assert info["unmatched_box_slices"] == [{"study": "1.2.3", "slice_number": "999"}]
    # Only the good study made it into the slice table.
    assert set(slices["StudyInstanceUID"].astype(str)) == {"1.2.3"}


def test_cache_gives_same_labels(tmp_path: Path) -> None:
    from spinelab.io.cache import build_cache

    _write_study(tmp_path, "1.2.3", head_first_d=False, files_head_to_feet=True)
    direct = pd.read_csv(derive_cervical_labels(tmp_path, progress=False)[0])
    build_cache(tmp_path, tmp_path / "cache", workers=1, progress=False)
    # Remove the DICOM: the labels must now come from the cache alone.
    for f in (tmp_path / "train_images" / "1.2.3").iterdir():
        f.unlink()
    cached = pd.read_csv(
        derive_cervical_labels(tmp_path, out=tmp_path / "d2", cache_dir=tmp_path / "cache", progress=False)[0]
    )
    pd.testing.assert_frame_equal(direct, cached)


def test_missing_dataset_raises(tmp_path: Path) -> None:
    from spinelab.errors import InputError

    with pytest.raises(InputError, match="dataset folder does not exist"):
        derive_cervical_labels(tmp_path / "nope", progress=False)


@pytest.mark.parametrize("feet_first", [False, True], ids=["head-first", "feet-first"])
def test_on_generated_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feet_first: bool) -> None:
    """End to end on the synthetic RSNA 2022 generator: vertebra ratios peak at the true vertebra centres."""
    from spinelab.data.synthetic import cervical as synth
    from spinelab.io.dicom import read_series

    # Force the storage order (the generator draws it per study, 10% feet first).
    monkeypatch.setattr(synth, "FEET_FIRST_FRACTION", 1.0 if feet_first else 0.0)
    root = synth.generate_cervical_dataset(
        tmp_path / "ds",
        studies=2,
        test_studies=0,
        size=64,
        seed=4,
        workers=1,
        seg_fraction=1.0,
        slices=(24, 32),
        progress=False,
    )
    truth = json.loads((root / "synthetic_truth.json").read_text())["studies"]
    assert [t["feet_first"] for t in truth.values()] == [feet_first, feet_first]
    slice_csv, box_csv, report = derive_cervical_labels(root, progress=False)
    info = json.loads(report.read_text())
    assert info["failed"] == [] and info["unmatched_box_slices"] == [] and info["warnings"] == []
    slices = pd.read_csv(slice_csv, dtype={"StudyInstanceUID": str, "slice_number": str})
    boxes = pd.read_csv(box_csv, dtype={"StudyInstanceUID": str, "slice_number": str})
    train = pd.read_csv(root / "train.csv", dtype={"StudyInstanceUID": str}).set_index("StudyInstanceUID")
    assert train["patient_overall"].sum() >= 1  # the generator gives every train set a fractured study
    for uid, study in truth.items():
        ct = read_series(root / "train_images" / uid)
        rows = slices[slices["StudyInstanceUID"] == uid]
        assert rows["slice_number"].tolist() == ct.slice_ids
        for name in VERTEBRAE:
            ratio = rows[name].to_numpy()
            assert ratio.max() == 1.0
            centre = ct.world_to_voxel(np.array(study["vertebrae"][name]["center_lps"]))[0]
            # Ratio-weighted mean slice index = the vertebra's centre slice (within one slice).
            assert (ratio * np.arange(len(ratio))).sum() / ratio.sum() == pytest.approx(centre, abs=1.0)
        positives = {v for v in VERTEBRAE if train.loc[uid, v] == 1}
        assigned = boxes.loc[boxes["StudyInstanceUID"] == uid, "vertebra"].dropna()
        assert positives <= set(assigned)
        if positives:
            # Boxes are padded, so a few touch a neighbour more, but most sit on a fractured vertebra.
            assert assigned.isin(positives).mean() >= 0.6


def test_box_csv_study_id_outside_the_dataset_is_refused(tmp_path: Path) -> None:
    from spinelab.errors import InputError

    (tmp_path / "train_images").mkdir()
    pd.DataFrame({"StudyInstanceUID": ["1.2.3", "../../elsewhere"], "x": [1.0, 1.0], "y": [1.0, 1.0],
                  "width": [2.0, 2.0], "height": [2.0, 2.0], "slice_number": [1, 2]}
                 ).to_csv(tmp_path / "train_bounding_boxes.csv", index=False)
    with pytest.raises(InputError, match=r"train_bounding_boxes\.csv: line 3: StudyInstanceUID '\.\./\.\./elsewhere'"):
        derive_cervical_labels(tmp_path, out=tmp_path / "derived", progress=False)


def test_unwritable_output_is_refused_before_any_study_is_read(tmp_path: Path) -> None:
    from spinelab.errors import InputError

    (tmp_path / "train_images").mkdir()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="a_file") as err:
        derive_cervical_labels(tmp_path, out=tmp_path / "a_file" / "derived", progress=False)
    assert "\n" not in str(err.value)
