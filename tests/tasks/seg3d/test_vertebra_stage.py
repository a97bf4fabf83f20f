"""Stage ``vertebra`` (type 1): the weighted loss, augmentation of crops with a mask channel, the items."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spinelab.data.transforms import SequenceAugment
from spinelab.errors import InputError
from spinelab.tasks.cervical.seg3d.crops import CropCache, VertebraCrops, crop_key
from spinelab.tasks.cervical.seg3d.vertebra_stage import (
    CROPS_INDEX,
    TrainingCrops,
    VertebraDataset,
    augment_crops,
    weighted_bce,
)


def test_weighted_bce_weights_positives_twice_and_skips_what_is_not_kept() -> None:
    logits, target = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    ln2 = float(np.log(2))
    assert float(weighted_bce(logits, target, 1.0, 2.0)) == pytest.approx(ln2)  # (2 ln2 + ln2) / 3
    confident = torch.tensor([5.0, 5.0])  # right on the positive, wrong on the negative
    pos_only = weighted_bce(confident, target, 1.0, 2.0, keep=torch.tensor([True, False]))
    both = weighted_bce(confident, target, 1.0, 2.0)
    assert float(pos_only) < 0.01 < float(both)


def test_augmented_crops_keep_a_binary_mask_that_moves_with_the_ct() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((7, 4, 4, 24, 24)).astype(np.float32)
    images[..., -1, :, :] = 0.0
    images[..., -1, 8:16, 2:10] = 1.0
    flipped = augment_crops(SequenceAugment(hflip=1.0, affine=0.0, intensity=0.0), images, rng)
    assert np.allclose(flipped, images[..., ::-1])  # CT and mask mirrored together
    moved = augment_crops(SequenceAugment(hflip=0.0, affine=1.0, intensity=1.0), images, rng)
    assert moved.shape == images.shape and set(np.unique(moved[..., -1, :, :])) <= {0.0, 1.0}
    assert not np.allclose(moved, images)


def _index(tmp_path, found: list[list[bool]]) -> TrainingCrops:
    settings = SimpleNamespace(n_slices=3, span=3, image_size=8, window=(400.0, 1800.0), margin=0.0)
    key = crop_key(settings, "truth")
    cache = CropCache(tmp_path / "crops", key)
    studies = {}
    for k, f in enumerate(found):
        uid = f"s{k}"
        imgs = np.zeros((7, 3, 4, 8, 8), np.float32)
        imgs[:, :, 0] = np.arange(7)[:, None, None, None] / 10  # vertebra i's crops carry i / 10
        cache.put(uid, VertebraCrops(imgs, np.array(f), np.zeros((7, 3), np.int64), np.zeros((7, 4))))
        studies[uid] = {"source": "truth", "found": f, "warnings": []}
    (tmp_path / CROPS_INDEX).write_text(json.dumps({"key": key, "studies": studies}))
    return TrainingCrops(tmp_path)


def test_items_are_the_found_vertebrae_with_their_own_crops_and_labels(tmp_path) -> None:
    crops = _index(tmp_path, [[True] * 7, [True, False, True, True, True, True, False]])
    targets = {"s0": np.array([0, 1, 0, 0, 0, 0, 0, 1], np.float32),
               "s1": np.array([1, 0, 0, 0, 0, 0, 1, 1], np.float32)}
    studies = SimpleNamespace(targets=lambda uid: targets[uid])
    ds = VertebraDataset(studies, crops, ["s0", "s1"], train=False)
    assert len(ds) == 7 + 5
    item = ds[8]  # s1's second found vertebra: C3
    assert item["uid"] == "s1" and item["vertebra"] == 2 and float(item["target"]) == 0.0
    assert float(item["image"][0, 0].mean()) == pytest.approx(0.2, abs=1 / 255)
    assert float(ds[1]["target"]) == 1.0  # s0's C2


def test_a_stage_without_crops_names_the_index(tmp_path) -> None:
    with pytest.raises(InputError, match="crops of the training studies not found"):
        TrainingCrops(tmp_path)
