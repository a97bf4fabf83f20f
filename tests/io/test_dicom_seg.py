"""DICOM SEG: vertebra codes, references to the source series, and the geometry on a real CT stored head-first
by instance number (read feet first), checked voxel for voxel against the NIfTI segmentation by world position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from spinelab.errors import InputError
from spinelab.io.dicom_seg import build_vertebra_seg, labels_on_frames, ranges_label_map, read_source_series
from spinelab.io.volume import Volume
from tests.io._dicom_series import tiny_ct_series as _tiny_series

REAL_CT = "totalsegmentator/example_ct_dicom_j2k"
REAL_SEG = "totalsegmentator/example_seg_dicom.nii.gz"
STUDY_UID, SERIES_UID = "1.2.826.0.1.3680043.8.498.15001", "1.2.826.0.1.3680043.8.498.15002"


def _real_series(realdata: Path, dest: Path) -> Path:
    """The real series with its empty Study and Series Instance UIDs filled (the files hold only file-meta
    UIDs); pixel data and geometry are untouched."""
    dest.mkdir()
    for f in sorted((realdata / REAL_CT).iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
        ds.save_as(dest / f.name)
    return dest


def _truth_on_frame(nifti: object, ds: pydicom.Dataset, value: int) -> np.ndarray:
    """``value``'s mask on one source frame, from the NIfTI file by nibabel alone (RAS world, no spinelab)."""
    ipp = np.array(ds.ImagePositionPatient, float)
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    r, c = np.mgrid[0:ds.Rows, 0:ds.Columns]
    lps = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
    ras = lps * np.array([-1.0, -1.0, 1.0])
    ijk = np.rint(ras @ np.linalg.inv(nifti.affine)[:3, :3].T + np.linalg.inv(nifti.affine)[:3, 3]).astype(int)
    data = np.asarray(nifti.dataobj)
    inside = np.all((ijk >= 0) & (ijk < data.shape), axis=-1)
    out = np.zeros(r.shape, bool)
    out[inside] = data[tuple(ijk[inside].T)] == value
    return out


def test_real_ct_seg_reads_back_onto_exactly_its_source_frames(realdata: Path, tmp_path: Path) -> None:
    import highdicom as hd
    import nibabel as nib

    from spinelab.io.dicom import read_series
    from spinelab.io.geometry import resample_to
    from spinelab.io.nifti import read_nifti
    from spinelab.io.orientation import to_canonical

    study = _real_series(realdata, tmp_path / "ct")
    volume = read_series(study)
    # instance numbers run head to feet, the reader sorts feet to head: the stored grid is "SPL", reversed
    assert volume.orientation == "SPL"
    assert volume.meta["instance_numbers"] == sorted(volume.meta["instance_numbers"], reverse=True)
    labels = to_canonical(resample_to(read_nifti(realdata / REAL_SEG, is_label=True), volume))
    assert labels.orientation == "IPL"  # the grid the models' outputs live on: slices and rows reversed
    arr = np.asarray(labels.array)
    mask = labels.with_array(np.select([arr == 32, arr == 33], [1, 2], 0).astype(np.uint8))
    source = read_source_series(study, volume.meta["series_uid"])
    seg = build_vertebra_seg(mask, source, {1: "T12", 2: "T11"}, algorithm="test", description="geometry test")
    path = tmp_path / "seg.dcm"
    seg.save_as(path)

    nifti = nib.load(realdata / REAL_SEG)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source.datasets}
    back = pydicom.dcmread(path)
    frames = back.pixel_array.reshape(-1, back.Rows, back.Columns).astype(bool)
    checked = set()
    for frame, item in zip(frames, back.PerFrameFunctionalGroupsSequence, strict=True):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ds = by_uid[uid]
        assert np.allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in ds.ImagePositionPatient])
        truth = _truth_on_frame(nifti, ds, {1: 32, 2: 33}[number])
        assert truth.any() and not np.array_equal(truth, truth[::-1]) and not np.array_equal(truth, truth[:, ::-1])
        assert np.array_equal(frame, truth), f"frame of {uid}, segment {number}"
        checked.add((uid, number))
    expected = {(u, n) for u, ds in by_uid.items() for n in (1, 2)
                if _truth_on_frame(nifti, ds, {1: 32, 2: 33}[n]).any()}
    assert checked == expected and len(checked) > 10

    # highdicom reads the same masks back per source instance
    h = hd.seg.segread(path)
    uid = next(iter(sorted(u for u, _ in checked)))
    pixels = h.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1, 2],
                                             assert_missing_frames_are_empty=True)
    for n, value in ((1, 32), (2, 33)):
        assert np.array_equal(pixels[0, :, :, n - 1].astype(bool), _truth_on_frame(nifti, by_uid[uid], value))


def test_labels_follow_world_positions_not_file_order(tmp_path: Path) -> None:
    folder = _tiny_series(tmp_path, reverse=True)
    source = read_source_series(folder)
    # a label map on a grid of its own: z up from the lowest slice, then rows (y) and columns (x)
    affine = np.array([[0, 0, 1.0, -10], [0, 1.5, 0, -20], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    arr = np.zeros((4, 6, 5), np.uint8)
    arr[0, 1, 3] = 1  # z = 0 mm, row 1, column 3
    frames = labels_on_frames(Volume(arr, affine, is_label=True), source.datasets)
    z = [float(ds.ImagePositionPatient[2]) for ds in source.datasets]
    hit = np.argwhere(frames == 1)
    assert hit.tolist() == [[z.index(0.0), 1, 3]]
    assert z.index(0.0) == 3  # the fourth file holds the lowest slice


def test_seg_codes_references_and_only_present_segments(tmp_path: Path) -> None:
    folder = _tiny_series(tmp_path)
    source = read_source_series(folder)
    affine = np.array([[0, 0, 1.0, -10], [0, 1.5, 0, -20], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    arr = np.zeros((4, 6, 5), np.uint8)
    arr[1, 2:4, 1:3] = 3  # C3 only
    arr[2, 0:2, 0:2] = 5  # C5
    seg = build_vertebra_seg(Volume(arr, affine, is_label=True), source, {i: f"C{i}" for i in range(1, 8)},
                             algorithm="test", description="test")
    assert seg.StudyInstanceUID == source.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_uid
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert list(segments) == ["C3", "C5"]
    assert segments["C3"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "113205007"
    assert segments["C5"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "36978003"
    assert segments["C3"].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert int(seg.NumberOfFrames) == 2


@pytest.mark.parametrize(("name", "code"), [("C1", "14806007"), ("C2", "39976000"), ("C3", "113205007"),
                                            ("C4", "5329002"), ("C5", "36978003"), ("C6", "36054005"),
                                            ("C7", "87391001"), ("T1", "64864005")])
def test_vertebra_codes_are_the_snomed_ct_ones(name: str, code: str) -> None:
    from spinelab.io.dicom_seg import vertebra_code

    c = vertebra_code(name)
    assert (c.value, c.scheme_designator) == (code, "SCT")


def test_ranges_label_map_fills_the_slab_inside_the_box(oblique_affine: np.ndarray) -> None:
    grid = Volume(np.zeros((10, 8, 8), np.int16), oblique_affine)
    lab = ranges_label_map(grid, {"C1": {"start_index": 1, "end_index": 2}, "C2": {"start_index": 3,
                                                                                 "end_index": 5}},
                           [2.0, 1.0, 6.0, 4.0], ["C1", "C2"])
    assert np.array_equal(np.unique(lab.array), [0, 1, 2])
    assert (lab.array[1:3, 1:4, 2:6] == 1).all() and (lab.array[3:6, 1:4, 2:6] == 2).all()
    assert lab.array[:, 0].max() == 0 and lab.array[:, :, 6:].max() == 0 and lab.array[6:].max() == 0


def test_a_series_without_study_uid_is_refused_naming_the_file(realdata: Path) -> None:
    with pytest.raises(InputError, match="empty StudyInstanceUID"):
        read_source_series(realdata / REAL_CT)


def test_empty_sop_uids_come_from_the_file_meta(realdata: Path, tmp_path: Path) -> None:
    study = _real_series(realdata, tmp_path / "ct")
    source = read_source_series(study)
    assert all(str(ds.SOPInstanceUID) == str(ds.file_meta.MediaStorageSOPInstanceUID) for ds in source.datasets)
    assert len(source.datasets) == 20


def test_nothing_on_the_frames_is_an_input_error(tmp_path: Path) -> None:
    source = read_source_series(_tiny_series(tmp_path))
    empty = Volume(np.zeros((4, 6, 5), np.uint8), np.eye(4), is_label=True)
    with pytest.raises(InputError, match="no labelled voxel"):
        build_vertebra_seg(empty, source, {1: "C1"}, algorithm="test", description="test")
