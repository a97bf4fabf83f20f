"""The segmentation preview: fixed size, one solid legend colour per vertebra present, display convention
whatever the stored orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from PIL import Image

from spinelab.io.orientation import reorient
from spinelab.io.volume import Volume
from spinelab.report.segmentation import PREVIEW_SIZE, vertebra_color, write_segmentation_preview
from spinelab.tasks.cervical.seg3d.vertebrae import LABEL_NAMES


def _neck() -> tuple[Volume, Volume]:
    """A canonical (IPL) CT with five bony blocks labelled C1..C5 down the middle and one dense marker at the
    head end on the patient's left."""
    ct = np.full((90, 60, 60), -1000, np.int16)
    ct[:, 10:50, 10:50] = 30
    labels = np.zeros(ct.shape, np.uint8)
    for k in range(5):
        d = 10 + 15 * k
        ct[d:d + 10, 25:40, 22:38] = 700
        labels[d:d + 10, 25:40, 22:38] = k + 1
    aff = np.eye(4)
    aff[:3, :3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.5, 0.0, 0.0]]
    return Volume(ct, aff, meta={"modality": "CT"}), Volume(labels, aff, is_label=True)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _has_color(img: np.ndarray, color: str) -> bool:
    target = np.round(np.asarray(to_rgb(color)) * 255).astype(int)
    return bool(np.any(np.all(np.abs(img.astype(int) - target) <= 1, axis=-1)))


def test_preview_has_its_size_and_a_colour_per_vertebra_present(tmp_path: Path) -> None:
    ct, labels = _neck()
    path = write_segmentation_preview(ct, labels, tmp_path / "preview.png", names=LABEL_NAMES, title="neck",
                                      warnings=["C6 missing: not segmented"])
    assert Image.open(path).size == PREVIEW_SIZE
    img = _rgb(path)
    for label in range(1, 6):
        assert _has_color(img, vertebra_color(label)), LABEL_NAMES[label]
    for label in (6, 7):
        assert not _has_color(img, vertebra_color(label)), LABEL_NAMES[label]
    assert len({vertebra_color(k) for k in LABEL_NAMES}) == len(LABEL_NAMES)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically


def test_preview_does_not_depend_on_the_stored_orientation(tmp_path: Path) -> None:
    ct, labels = _neck()
    a = write_segmentation_preview(ct, labels, tmp_path / "a.png", names=LABEL_NAMES)
    b = write_segmentation_preview(reorient(ct, "SAR"), reorient(labels, "SAR"), tmp_path / "b.png",
                                   names=LABEL_NAMES)
    assert np.array_equal(_rgb(a), _rgb(b))
