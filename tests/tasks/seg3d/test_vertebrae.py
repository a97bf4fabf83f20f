"""Per-vertebra statistics and the vertebra check: one test per failure it names, in world coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.io.orientation import reorient
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.seg3d.vertebrae import (
    DUPLICATE_MM,
    check_vertebrae,
    keep_largest_components,
    vertebra_stats,
)

STEP_MM = 18.0  # centroid to centroid, a typical cervical level
SLICE_MM = 2.0


def _spine(centres_mm: dict[int, float] | None = None, *, feet_first: bool = True) -> Volume:
    """Boxes for C1-C7 (labels 1..7) on an axial grid of 2 x 1 x 1 mm voxels, ``centres_mm[label]`` = how far
    below C1 (mm) each sits; stored feet first (index 0 = most caudal slice) unless ``feet_first`` is False."""
    centres_mm = centres_mm or {k: (k - 1) * STEP_MM for k in range(1, 8)}
    depth = 100
    arr = np.zeros((depth, 40, 40), np.uint8)
    for label, below in centres_mm.items():
        d = int(round(10 + below / SLICE_MM))  # head-first index of the centre slice
        arr[d - 3:d + 3, 10:30, 12:28] = label  # 6 slices x 20 x 16 voxels = 1.92 ml
    aff = np.eye(4)  # canonical IPL: D towards the feet (LPS z down), H posterior (+y), W left (+x)
    aff[:3, :3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-SLICE_MM, 0.0, 0.0]]
    aff[:3, 3] = [-20.0, -20.0, 100.0]
    if feet_first:
        arr = arr[::-1].copy()
        aff[:3, 3] = aff[:3, 3] + aff[:3, 0] * (depth - 1)
        aff[:3, 0] = -aff[:3, 0]
    ids = [str(i + 1) for i in range(depth)]
    return Volume(arr, aff, slice_ids=ids, is_label=True)


def _kinds(issues: list) -> list[str]:
    return [i.kind for i in issues]


def test_stats_measure_count_volume_centroid_boxes_and_slice_numbers() -> None:
    labels = _spine()
    stats = vertebra_stats(labels)
    assert list(stats) == ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    c1 = stats["C1"]
    assert c1.voxels == 6 * 20 * 16
    assert c1.volume_ml == pytest.approx(6 * 20 * 16 * SLICE_MM / 1000)
    # C1's centre slice is head-first index 10 (z = 100 - 20 = 80 mm; the box spans slices 7..12 -> 9.5 mean)
    assert c1.centroid_mm[2] == pytest.approx(100.0 - 9.5 * SLICE_MM)
    assert c1.centroid_mm[:2] == pytest.approx((-20 + 19.5, -20 + 19.5))
    # stored feet first: head-first slices 7..12 are stored indices 87..92
    assert c1.box_dhw == ((87, 10, 12), (92, 29, 27))
    assert c1.slice_numbers == ("88", "93")
    (lo, hi) = c1.box_mm
    assert hi[2] - lo[2] == pytest.approx(6 * SLICE_MM) and hi[0] - lo[0] == pytest.approx(16.0)
    js = c1.to_json()
    assert js["box_ijk"] == {"start": [12, 10, 87], "end": [27, 29, 92]}  # the NIfTI's (i, j, k) order
    assert js["slices"] == {"start_index": 87, "end_index": 92, "slice_numbers": ["88", "93"]}


def test_a_clean_spine_passes_stored_either_way_and_in_any_orientation() -> None:
    for labels in (_spine(), _spine(feet_first=False), reorient(_spine(), "LAS"), reorient(_spine(), "PIR")):
        stats = vertebra_stats(labels)
        assert check_vertebrae(stats) == [], labels.orientation
        assert stats["C4"].centroid_mm == pytest.approx(vertebra_stats(_spine())["C4"].centroid_mm)


def test_missing_vertebra_is_named() -> None:
    centres = {k: (k - 1) * STEP_MM for k in range(1, 8) if k != 4}
    issues = check_vertebrae(vertebra_stats(_spine(centres)))
    assert _kinds(issues) == ["missing"]  # C3-C5 is two levels apart: a plausible gap
    assert issues[0].vertebrae == ("C4",) and "C4 missing" in issues[0].message


def test_swapped_neighbours_are_named() -> None:
    centres = {k: (k - 1) * STEP_MM for k in range(1, 8)}
    centres[3], centres[4] = centres[4], centres[3]
    issues = check_vertebrae(vertebra_stats(_spine(centres)))
    swapped = [i for i in issues if i.kind == "swapped"]
    assert len(swapped) == 1 and swapped[0].vertebrae == ("C3", "C4")
    assert "out_of_order" not in _kinds(issues)


def test_out_of_order_names_the_order_found() -> None:
    centres = {k: (k - 1) * STEP_MM for k in range(1, 8)}
    centres[2] = 4.3 * STEP_MM  # C2 between C5 and C6
    centres[3], centres[4], centres[5] = 1 * STEP_MM, 2 * STEP_MM, 3 * STEP_MM
    issues = check_vertebrae(vertebra_stats(_spine(centres)))
    order = [i for i in issues if i.kind == "out_of_order"]
    assert len(order) == 1 and "swapped" not in _kinds(issues)
    assert order[0].message.endswith("C1, C3, C4, C5, C2, C6, C7")


def test_duplicated_vertebra_is_found_and_the_largest_part_kept() -> None:
    labels = _spine()
    arr = labels.array.copy()
    arr[(arr == 4) & (np.arange(arr.shape[1])[None, :, None] < 12)] = 0  # C4 a little smaller than C6
    arr[arr == 6] = 4  # C6 labelled C4: two C4s, 36 mm apart
    cleaned, issues = keep_largest_components(labels.with_array(arr))
    assert _kinds(issues) == ["duplicated"] and issues[0].vertebrae == ("C4",)
    assert f"{2 * STEP_MM:.0f} mm" in issues[0].message and "above" in issues[0].message
    stats = vertebra_stats(cleaned)
    assert stats["C4"].voxels == 6 * 20 * 16  # the whole (former C6) part stays
    assert stats["C4"].centroid_mm[2] == pytest.approx(vertebra_stats(labels)["C6"].centroid_mm[2])
    assert "missing" in _kinds(check_vertebrae(stats))


def test_small_or_level_second_parts_are_dropped_silently() -> None:
    labels = _spine()
    arr = labels.array.copy()
    d = np.nonzero((arr == 3).any(axis=(1, 2)))[0]
    arr[d[0]:d[-1] + 1, 10:30, 32:36] = 3  # a level part beside C3 (same height): a cut ring, not a duplicate
    arr[5, 2:4, 2:4] = 3  # a far speck
    assert DUPLICATE_MM > 0
    cleaned, issues = keep_largest_components(labels.with_array(arr))
    assert issues == []
    assert np.array_equal(cleaned.array, labels.array)
    assert cleaned.affine is not None and cleaned.array.dtype == labels.array.dtype


def test_implausible_gap_is_named() -> None:
    centres = {k: (k - 1) * STEP_MM for k in range(1, 8)}
    centres[7] = 5 * STEP_MM + 50.0  # C7 50 mm below C6
    issues = check_vertebrae(vertebra_stats(_spine(centres)))
    assert _kinds(issues) == ["gap"] and issues[0].vertebrae == ("C6", "C7")


def test_implausible_volumes_are_named() -> None:
    labels = _spine()
    arr = labels.array.copy()
    arr[(arr == 5) & (np.arange(arr.shape[2])[None, None, :] > 13)] = 0  # C5 cut to a sliver
    issues = check_vertebrae(vertebra_stats(labels.with_array(arr)))
    assert _kinds(issues) == ["volume"] and issues[0].vertebrae == ("C5",)
    assert "fragment" in issues[0].message
    big = labels.array.copy()
    big[(big == 0) & (np.arange(big.shape[0])[:, None, None] < 8)] = 7  # C7 spread over the lowest slices
    issues = check_vertebrae(vertebra_stats(labels.with_array(big)))
    assert ("volume", ("C7",)) in [(i.kind, i.vertebrae) for i in issues]
