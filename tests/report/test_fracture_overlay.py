"""The fracture overlay: the planes cross at the peak of the most suspicious vertebra; the PNG is written."""

from __future__ import annotations

import numpy as np

from spinelab.io.volume import Volume
from spinelab.report.fracture_overlay import overlay_centre, write_fracture_overlay


def _study() -> tuple[Volume, Volume, Volume]:
    """A CT with a bone column, vertebra labels C1..C4 in slabs, and a map with a blob in C3 and a weaker one in C1
    on a coarser crop grid (its own affine, offset: it is placed by world position)."""
    d, h, w = 48, 64, 64
    z, y, x = np.mgrid[:d, :h, :w]
    ct = np.where((y - 32) ** 2 + (x - 32) ** 2 < 100, 700.0, -50.0).astype(np.float32)
    # (d, h, w) -> LPS: slices head to feet (-z), rows to posterior (+y), columns to the patient's left (+x)
    affine = np.array([[0, 0, 0.8, 0], [0, 0.8, 0, 0], [-1.5, 0, 0, 0], [0, 0, 0, 1.0]])
    labels = np.zeros((d, h, w), np.uint8)
    for k in range(4):
        labels[k * 12:(k + 1) * 12][(((y - 32) ** 2 + (x - 32) ** 2) < 100)[k * 12:(k + 1) * 12]] = k + 1
    vol = Volume(ct, affine)
    lab = Volume(labels, affine, is_label=True)
    crop = np.zeros((24, 32, 32), np.float32)
    cz, cy, cx = np.mgrid[:24, :32, :32]
    crop += 0.9 * np.exp(-((cz - 15) ** 2 + (cy - 16) ** 2 + (cx - 14) ** 2) / 4.0)  # C3 (slices 24..35)
    crop += 0.4 * np.exp(-((cz - 3) ** 2 + (cy - 16) ** 2 + (cx - 16) ** 2) / 4.0)  # C1
    crop_aff = affine * np.array([2.0, 2.0, 2.0, 1.0])[None, :]  # twice the CT's voxel size
    crop_aff[:3, 3] = [0.4, 0.4, -0.75]  # half a CT voxel: the map's voxel centres sit between the CT's
    return vol, Volume(crop, crop_aff), lab


def test_centre_is_the_peak_of_the_most_suspicious_vertebra() -> None:
    prob = np.zeros((10, 10, 10), np.float32)
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5], labels[5:] = 1, 2
    prob[2, 3, 4], prob[7, 6, 5] = 0.9, 0.5
    assert overlay_centre(prob, labels, {"C1": 0.2, "C2": 0.8}) == ((7, 6, 5), "C2")
    assert overlay_centre(prob, labels, {"C1": 0.7, "C2": 0.3}) == ((2, 3, 4), "C1")
    assert overlay_centre(prob, None, None) == ((2, 3, 4), None)


def test_writes_three_views(tmp_path) -> None:
    ct, prob, labels = _study()
    path = write_fracture_overlay(ct, prob, tmp_path / "s.png", vertebrae=labels,
                                  probabilities={"C1": 0.3, "C3": 0.8}, title="study 1")
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side
    warm = (image[..., 0] > 180) & (image[..., 2] < 120)  # the heat map's orange / yellow is drawn
    assert warm.sum() > 20
