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


def test_a_painted_cleft_cuts_the_ct_channels_of_consecutive_crops_and_leaves_the_mask() -> None:
    from spinelab.tasks.cervical.seg3d.vertebra_stage import paint_crop_cleft

    images = np.full((15, 6, 32, 32), 0.5, np.float32)  # 400 HU in the (400, 1800) window: bone everywhere
    images[:, -1] = 0.0
    images[:, -1, 8:24, 8:24] = 1.0
    before = images.copy()
    painted = paint_crop_cleft(images, (400.0, 1800.0), np.random.default_rng(3), max_steps=4)
    changed = np.flatnonzero((images != before).any(axis=(1, 2, 3)))
    assert np.array_equal(painted, changed)
    assert 1 <= len(changed) <= 4 and np.array_equal(changed, np.arange(changed[0], changed[-1] + 1))
    assert np.array_equal(images[:, -1], before[:, -1])  # the mask channel is untouched
    cut = images[changed[0], 2] < 0.45
    assert 0 < cut.mean() < 0.2  # a thin band of the crop, not all of it
    soft = np.zeros_like(images)  # no bone to cut: nothing painted
    assert len(paint_crop_cleft(soft, (400.0, 1800.0), np.random.default_rng(3))) == 0


def test_training_items_paint_only_intact_vertebrae_and_the_vertebra_loss_skips_them(tmp_path) -> None:
    crops = _index(tmp_path, [[True] * 7])
    # bone everywhere in the CT channels, so every cleft can be painted
    cache_images = np.full((7, 3, 4, 8, 8), 0.5, np.float32)
    cache_images[:, :, -1] = 1.0
    crops.cache.put("s0", VertebraCrops(cache_images, np.ones(7, bool), np.zeros((7, 3), np.int64), np.zeros((7, 4))))
    target = np.array([0, 1, 0, 0, 0, 0, 0, 1], np.float32)
    studies = SimpleNamespace(targets=lambda uid: target)
    train = VertebraDataset(studies, crops, ["s0"], train=True, augment=False, fake_prob=1.0)
    fakes = [bool(train[k]["fake"]) for k in range(7)]
    assert fakes == [True, False, True, True, True, True, True]  # C2 is fractured: never painted
    assert not np.allclose(train[0]["image"].numpy(), cache_images[0])
    val = VertebraDataset(studies, crops, ["s0"], train=False, fake_prob=1.0)
    assert not any(bool(val[k]["fake"]) for k in range(7))

    from spinelab.tasks.cervical.seg3d.vertebra_stage import VertebraStage

    stage = VertebraStage.__new__(VertebraStage)
    stage.cfg = SimpleNamespace(vertebra=SimpleNamespace(slice_loss_weight=1.0))
    item = train[0]
    assert item["slice_target"].tolist() == [1.0] * 3  # the seed's targets: painted = positive on every crop
    assert val[0]["slice_target"].tolist() == [0.0] * 3 and val[1]["slice_target"].tolist() == [1.0] * 3
    batch = {"target": torch.tensor([0.0, 0.0]), "fake": torch.tensor([False, True]),
             "slice_target": torch.tensor([[0.0] * 3, [1.0] * 3])}
    outputs = {"vertebra": torch.tensor([-3.0, -3.0]), "slice": torch.full((2, 3), -3.0)}
    loss = stage.loss(outputs, batch)
    wrong = stage.loss({**outputs, "vertebra": torch.tensor([-3.0, 9.0])}, batch)
    assert float(wrong["vertebra_loss"]) == pytest.approx(float(loss["vertebra_loss"]))  # the painted one is out
    sure = stage.loss({**outputs, "slice": torch.tensor([[-3.0] * 3, [9.0] * 3])}, batch)
    assert float(sure["slice_loss"]) < float(loss["slice_loss"])  # its slices are positives


def test_box_targets_mark_the_crops_whose_slices_a_box_marks(tmp_path) -> None:
    from spinelab.io.volume import Volume

    crops = _index(tmp_path, [[True] * 7, [True] * 7])
    centres = np.zeros((7, 3), np.int64)
    centres[1] = [10, 14, 18]  # C2's crops: slices 9-11, 13-15, 17-19 (span 3)
    bone = np.full((7, 3, 4, 8, 8), 0.5, np.float32)
    for uid in ("s0", "s1"):
        crops.cache.put(uid, VertebraCrops(bone, np.ones(7, bool), centres, np.zeros((7, 4))))
    volume = Volume(np.zeros((30, 8, 8), np.float32), np.eye(4))
    targets = {"s0": np.array([0, 1, 0, 0, 0, 0, 0, 1], np.float32),  # C2 fractured, box on slice 15
               "s1": np.array([0, 1, 0, 0, 0, 0, 0, 1], np.float32)}  # C2 fractured, no boxes
    studies = SimpleNamespace(targets=lambda uid: targets[uid], volume=lambda uid: volume,
                              fracture_slices={"s0": {"C2": {15}}})
    ds = VertebraDataset(studies, crops, ["s0", "s1"], train=False, slice_targets="boxes")
    assert ds[1]["slice_target"].tolist() == [0.0, 1.0, 0.0]  # only the crop holding slice 15
    assert ds[0]["slice_target"].tolist() == [0.0, 0.0, 0.0]  # C1 intact
    assert ds[8]["slice_target"].tolist() == [-1.0, -1.0, -1.0]  # s1's C2: fractured, which crops unknown
    painted = VertebraDataset(studies, crops, ["s0"], train=True, augment=False, fake_prob=1.0,
                              slice_targets="boxes")[0]
    assert bool(painted["fake"]) and 1 <= painted["slice_target"].sum() <= 3  # only its painted crops
