"""Tests of the cervical phantom's implicit shapes: inside distances, unions/cuts and a vertebra's canal."""

from __future__ import annotations

import numpy as np
import pytest

from spinelab.data.synthetic.cervical_anatomy import sample_phantom
from spinelab.data.synthetic.cervical_shapes import cylinder, ellipse, ellipsoid, slab, vertebra_distance


def test_ellipse_is_positive_inside_zero_on_the_rim_negative_outside() -> None:
    u = np.array([1.0, 4.0, 1.0, 7.0])
    v = np.array([2.0, 2.0, 4.0, 2.0])
    # Centre (1, 2), half-axes 3 (u) and 2 (v): centre, rim along u, rim along v, outside.
    assert ellipse(u, v, 1.0, 2.0, 3.0, 2.0) == pytest.approx([2.0, 0.0, 0.0, -2.0])


def test_slab_and_cylinder() -> None:
    s = np.array([-1.0, 0.5, 3.0])
    assert slab(s, 0.0, 2.0) == pytest.approx([-1.0, 0.5, -1.0])
    zeros = np.zeros(3)
    # The cylinder is the minimum of its cross-section (2 at the axis) and its slab.
    assert cylinder(zeros, zeros, s, 0.0, 0.0, 2.0, 2.0, 0.0, 2.0) == pytest.approx([-1.0, 0.5, -1.0])
    assert cylinder(zeros, zeros, s, 0.0, 0.0, 0.2, 0.2, 0.0, 2.0)[1] == pytest.approx(0.2)


def test_ellipsoid_centre_and_surface() -> None:
    u = np.array([1.0, 3.0, 1.0])
    v = np.array([1.0, 1.0, 1.0])
    s = np.array([1.0, 1.0, 5.0])
    assert ellipsoid(u, v, s, (1.0, 1.0, 1.0), (2.0, 3.0, 4.0)) == pytest.approx([2.0, 0.0, 0.0])


@pytest.mark.parametrize("index", [0, 1, 4, 8])  # C1 (atlas), C2 (dens), C5, T2
def test_vertebra_keeps_its_canal_free_of_bone(index: int) -> None:
    vert = sample_phantom(np.random.default_rng(4), fractured={}, size=64).vertebrae[index]
    d = vert.dims
    vc = d["b"] + d["cb"] - 0.5 if vert.level != "C1" else 5.0
    canal = vertebra_distance(np.array([0.0]), np.array([vc]), np.array([0.0]), vert)
    assert canal[0] < 0
    # Bone somewhere on a lateral line through the pillars / lateral masses.
    u = np.linspace(-30.0, 30.0, 121)
    line = vertebra_distance(u, np.full_like(u, 1.0 if vert.level == "C1" else vc), np.zeros_like(u), vert)
    assert line.max() > 0
    if vert.level != "C1":  # the atlas has no body; every other level has bone at its body centre
        assert vertebra_distance(np.zeros(1), np.zeros(1), np.zeros(1), vert)[0] > 0
