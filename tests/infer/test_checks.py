"""The input rules: each threshold on a synthetic volume with known geometry, and the DICOM tags they read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from spinelab.infer.checks import (
    InputCheck,
    StudyRefusedError,
    check_cervical_input,
    check_cervical_localization,
    check_lumbar_series,
    plane_of,
    series_tags,
)
from spinelab.io.dicom import read_series
from spinelab.io.dicom_write import write_series
from spinelab.io.volume import Volume


def _ct(depth: int, *, dz: float = 1.0, pixel: float = 0.5, modality: str | None = "CT",
        air: bool = True) -> Volume:
    arr = np.full((depth, 16, 16), 40, np.int16)
    if air:
        arr[:, :, :4] = -1000
    aff = np.eye(4)
    aff[:3, :3] = [[0, 0, pixel], [0, pixel, 0], [-dz, 0, 0]]  # columns: D feet-ward (head first), H, W
    meta = {"modality": modality} if modality else {"format": "nifti"}
    return Volume(arr, aff, meta=meta)


def test_a_long_fine_axial_ct_passes_every_rule() -> None:
    check = check_cervical_input(_ct(200, dz=0.8))
    assert check.refusals == [] and check.warnings == []
    assert check.facts["slice_extent_mm"] == 160.0 and check.facts["plane"] == "axial"


@pytest.mark.parametrize(("depth", "dz", "refused", "warned"), [
    (1, 1.0, "single slice", None),
    (20, 2.0, "40 mm", None),  # the real thoracic series: 20 slices of 2 mm
    (80, 1.0, None, "80 mm"),
    (120, 1.0, None, None),
])
def test_z_extent_thresholds(depth: int, dz: float, refused: str | None, warned: str | None) -> None:
    check = check_cervical_input(_ct(depth, dz=dz))
    assert any(refused in r for r in check.refusals) if refused else check.refusals == []
    assert any(warned in w for w in check.warnings) if warned else check.warnings == []


def test_wrong_modality_and_no_air_are_refused() -> None:
    assert any("modality MR" in r for r in check_cervical_input(_ct(150, modality="MR")).refusals)
    no_air = check_cervical_input(_ct(150, modality=None, air=False))  # a NIfTI without HU air: not CT
    assert any("not a CT in Hounsfield units" in r for r in no_air.refusals)
    assert check_cervical_input(_ct(150, modality=None)).refusals == []  # a NIfTI CT in HU passes


def test_real_nifti_ct_crop_passes_and_real_mr_is_refused(realdata: Path) -> None:
    from spinelab.io.nifti import read_nifti

    crop = read_nifti(realdata / "tptbox" / "sub-ct_label-22_ct.nii.gz", is_label=False)  # a tight spine crop
    assert not any("Hounsfield" in r for r in check_cervical_input(crop).refusals)
    for mr in ("totalsegmentator/example_mr_sm.nii.gz", "sct_testing_data/t2.nii.gz"):
        vol = read_nifti(realdata / mr, is_label=False)
        assert any("not a CT in Hounsfield units" in r for r in check_cervical_input(vol).refusals), mr


def test_coarse_slices_and_pixels_warn() -> None:
    warnings = check_cervical_input(_ct(40, dz=4.0, pixel=1.5)).warnings
    assert any("slice spacing 4 mm" in w for w in warnings)
    assert any("pixel spacing 1.5 mm" in w for w in warnings)


def test_sagittal_slices_warn() -> None:
    vol = _ct(150)
    vol.affine[:3, :3] = np.array([[1.0, 0, 0], [0, 0.5, 0], [0, 0, -0.5]])  # D along x: sagittal
    assert plane_of(vol) == "sagittal"
    assert any("sagittal, not axial" in w for w in check_cervical_input(vol).warnings)


def _dicom_ct(folder: Path, **tags: object) -> Volume:
    write_series(_ct(45, dz=2.5), folder, slice_thickness=tags.pop("thickness", None),
                 series_description=str(tags.pop("description", "")))
    if tags:
        for f in folder.iterdir():
            ds = pydicom.dcmread(f)
            for k, v in tags.items():
                setattr(ds, k, v)
            ds.save_as(f)
    return read_series(folder)


def test_body_part_and_thickness_are_read_from_the_header(tmp_path: Path) -> None:
    vol = _dicom_ct(tmp_path / "a", BodyPartExamined="ABDOMEN", thickness=5.0, description="CT ABD/PEL")
    assert series_tags(vol, ["BodyPartExamined", "SliceThickness"]) == {"BodyPartExamined": "ABDOMEN",
                                                                        "SliceThickness": 5.0}
    warnings = check_cervical_input(vol).warnings
    assert any("BodyPartExamined 'ABDOMEN' names abdomen" in w for w in warnings)
    assert any("slice thickness 5 mm" in w for w in warnings)
    neck = _dicom_ct(tmp_path / "b", BodyPartExamined="NECK", description="HEAD NECK CTA")
    assert check_cervical_input(neck).warnings == []
    assert check_cervical_input(_dicom_ct(tmp_path / "c", description="CT C-SPINE BONE")).warnings == []


def _summary(ranges: dict[str, list[int] | None]) -> dict:
    return {"ranges": ranges, "missing": [v for v, r in ranges.items() if r is None], "warnings": []}


def test_stage1_plausibility() -> None:
    vol = _ct(200, dz=1.0)  # head first: C1 has the smallest indices
    good = {f"C{i}": [10 + 18 * (i - 1), 10 + 18 * i] for i in range(1, 8)}
    assert check_cervical_localization(_summary(good), vol) == []
    swapped = dict(good, C2=good["C5"], C5=good["C2"])
    assert any("out of head-to-feet order" in w for w in check_cervical_localization(_summary(swapped), vol))
    long = dict(good, C3=[0, 150])
    assert any("C3 151 mm" in w for w in check_cervical_localization(_summary(long), vol))
    squeezed = {f"C{i}": [i * 6, i * 6 + 5] for i in range(1, 8)}  # 47 mm for all seven
    assert any("C1-C7 span" in w for w in check_cervical_localization(_summary(squeezed), vol))
    # The predictor hands over canonical volumes (index 0 the most cranial slice): C7 above C1 is out of order.
    reversed_order = {v: [199 - r[1], 199 - r[0]] for v, r in good.items()}
    assert any("out of head-to-feet order" in w for w in check_cervical_localization(_summary(reversed_order), vol))


def test_lumbar_series_rules() -> None:
    sag = Volume(np.zeros((15, 8, 8), np.int16), np.diag([4.0, 0.6, -0.6, 1.0]), meta={"modality": "MR"})
    assert check_lumbar_series(sag, "sag_t1", "10").warnings == []
    assert any("sagittal slices, not axial" in w for w in check_lumbar_series(sag, "axial", "10").warnings)
    ct = Volume(sag.array, sag.affine, meta={"modality": "CT"})
    assert any("modality CT" in r for r in check_lumbar_series(ct, "sag_t2", "11").refusals)


def test_strict_makes_warnings_refusals() -> None:
    check = InputCheck(warnings=["coarse"], facts={"shape": [1, 2, 3]})
    check.raise_if_refused(strict=False)
    with pytest.raises(StudyRefusedError) as err:
        check.raise_if_refused(strict=True)
    assert err.value.reasons == ["--strict: coarse"] and err.value.facts == {"shape": [1, 2, 3]}
