"""Label schemes: each source's vertebra numbers onto the model's classes (0, C1..C7, optional T1)."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.errors import ConfigError
from spinelab.tasks.cervical.seg3d.schemes import check_scheme, class_names, level_values, remap_labels


def test_totalsegmentator_numbers_run_caudal_to_cranial() -> None:
    labels = np.array([50, 49, 44, 43, 42, 79, 0, 27])  # C1, C2, C7, T1, T2, spinal cord, background, L5
    assert remap_labels(labels, "total").tolist() == [1, 2, 7, 0, 0, 0, 0, 0]
    assert remap_labels(labels, "total", n_classes=9).tolist() == [1, 2, 7, 8, 0, 0, 0, 0]


@pytest.mark.parametrize("scheme", ["verse", "rsna"])
def test_verse_and_rsna_number_c1_to_t1_from_one(scheme: str) -> None:
    labels = np.arange(0, 12).reshape(3, 4)
    out = remap_labels(labels, scheme, n_classes=9)
    assert out.dtype == np.uint8 and out.shape == (3, 4)
    assert out.ravel().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0]
    assert remap_labels(labels, scheme).max() == 7  # no T1 class: T1 is background


def test_stand_in_levels_follow_each_schemes_own_numbering() -> None:
    # lumbar levels of a real abdominal CT standing in for C1..: TotalSegmentator T11 = 33 ... L5 = 27
    assert check_scheme("total:T11") == {33: 1, 32: 2, 31: 3, 30: 4, 29: 5, 28: 6, 27: 7}
    assert check_scheme("verse:L2") == {21: 1, 22: 2, 23: 3, 24: 4}
    assert level_values("total")["T1"] == 43 and level_values("verse")["L5"] == 24
    assert remap_labels(np.array([21, 22, 23, 26]), "verse:L2").tolist() == [1, 2, 3, 0]  # 26 = sacrum


def test_an_explicit_mapping_and_float_labels() -> None:
    assert remap_labels(np.array([[5.0, 6.0], [7.0, -1.0]]), {5: 3, 7: 1}).tolist() == [[3, 0], [1, 0]]
    assert remap_labels(np.zeros((0, 2), dtype=np.int16), "total").shape == (0, 2)
    assert class_names(8)[-1] == "C7" and class_names(9)[-1] == "T1"


@pytest.mark.parametrize(("scheme", "match"), [
    ("totalseg", "unknown label_scheme 'totalseg'"),
    ("nope:L2", "'nope' is not one of"),
    ("rsna:L2", "'L2' is not a level the rsna scheme numbers"),
    ({5: 8}, "maps to class 8, outside 1..7"),
    ({-2: 1}, "negative source value"),
    ({}, "non-empty mapping"),
])
def test_bad_schemes_are_config_errors(scheme: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_scheme(scheme)  # type: ignore[arg-type]
