"""Tests of the cervical phantom's rasterisation: arrays, labels, fracture clefts and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.data.synthetic.cervical_anatomy import LEVELS, PhantomSpec, sample_phantom
from spinelab.data.synthetic.cervical_render import render_phantom


@pytest.fixture(scope="module")
def spec() -> PhantomSpec:
    return sample_phantom(np.random.default_rng(5), fractured={"C3": True, "C6": True}, size=48,
                          slices=(40, 48))


def test_render_arrays_and_labels(spec: PhantomSpec) -> None:
    result = render_phantom(spec)
    assert result.hu.shape == result.labels.shape == spec.shape
    assert result.hu.dtype == np.int16 and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= set(range(len(LEVELS) + 1))
    # C1..C7 always lie inside the field of view and all are labelled.
    assert set(range(1, 8)) <= set(np.unique(result.labels).tolist())
    # Outside the reconstruction circle the scanner reports air at its padding value.
    assert (result.hu[:, 0, 0] == -1024).all()
    assert result.hu[result.labels > 0].mean() > 150  # labelled voxels are bone, brighter than soft tissue


def test_fracture_clefts_are_unlabelled_bone_gaps(spec: PhantomSpec) -> None:
    result = render_phantom(spec)
    assert sorted(result.fracture_mask) == [3, 6]
    for label, mask in result.fracture_mask.items():
        assert mask.shape == spec.shape and mask.any()
        assert not (result.labels[mask] == label).any()


def test_render_is_deterministic(spec: PhantomSpec) -> None:
    a, b = render_phantom(spec), render_phantom(spec)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
