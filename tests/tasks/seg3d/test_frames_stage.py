"""Stage ``frames`` of the seg3d route: balanced single crops, every held-out crop, type 1 starting from it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spinelab.config.load import load_config
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.seg3d.crops import CropCache, VertebraCrops, crop_key
from spinelab.tasks.cervical.seg3d.frames_stage import CropFrameDataset, CropFrameStage
from spinelab.tasks.cervical.seg3d.vertebra_stage import CROPS_INDEX, TrainingCrops, VertebraStage

TINY = Path(__file__).resolve().parents[3] / "src/spinelab/configs/cervical/seg3d_tiny.yaml"


def _cfg(*overrides: str):
    return load_config("cervical", [TINY], ["crops.n_slices=3", "crops.span=3", "crops.image_size=8",
                                                    "frames.frames_per_epoch=16", "vertebra.augment=false",
                                                    *overrides])


def _crops(tmp_path: Path, cfg, found: dict[str, list[bool]]) -> TrainingCrops:
    """Cached crops with bone in every CT pixel (a cleft can always be painted); crop k of vertebra v carries
    ``(10 v + k) / 100`` in its first pixel, so an item names the crop it came from."""
    key = crop_key(cfg.crops, "truth")
    cache = CropCache(tmp_path / "crops", key)
    centres = np.tile(np.array([10, 14, 18]), (7, 1))  # every vertebra's crops: slices 9-11, 13-15, 17-19
    studies = {}
    for uid, f in found.items():
        images = np.full((7, 3, 4, 8, 8), 0.5, np.float32)
        images[:, :, -1] = 1.0
        images[:, :, 0, 0, 0] = (10 * np.arange(7)[:, None] + np.arange(3)[None]) / 100
        cache.put(uid, VertebraCrops(images, np.array(f), centres, np.zeros((7, 4))))
        studies[uid] = {"source": "truth", "found": f, "warnings": []}
    (tmp_path / CROPS_INDEX).write_text(json.dumps({"key": key, "studies": studies}))
    return TrainingCrops(tmp_path)


def _studies() -> SimpleNamespace:
    """"a" intact; "b" with C2 fractured and boxed on slice 15 (its second crop), "c" with C3 fractured, no box."""
    labels = {"a": np.zeros(8, np.float32), "b": np.array([0, 1, 0, 0, 0, 0, 0, 1], np.float32),
              "c": np.array([0, 0, 1, 0, 0, 0, 0, 1], np.float32)}
    volume = Volume(np.zeros((30, 8, 8), np.float32), np.eye(4))
    return SimpleNamespace(targets=lambda uid: labels[uid], volume=lambda uid: volume,
                           fracture_slices={"b": {"C2": {15}}})


FOUND = {"a": [True] * 6 + [False], "b": [True] * 7, "c": [True] * 7}


def test_pools_hold_the_boxed_crops_and_the_found_intact_vertebrae(tmp_path) -> None:
    cfg = _cfg()
    ds = CropFrameDataset(_studies(), _crops(tmp_path, cfg, FOUND), list(FOUND), cfg, train=True)
    assert ds.positive == [("b", 1, 1)]
    assert len(ds.intact) == 6 + 6 + 6 and ("a", 6) not in ds.intact and ("c", 2) not in ds.intact


@pytest.mark.parametrize(("shares", "expected"), [(("1.0", "0.0"), 1.0), (("0.0", "1.0"), 1.0),
                                                  (("0.0", "0.0"), 0.0)])
def test_training_items_follow_the_shares(tmp_path, shares: tuple[str, str], expected: float) -> None:
    cfg = _cfg(f"frames.positive_share={shares[0]}", f"frames.fake_share={shares[1]}")
    crops = _crops(tmp_path, cfg, FOUND)
    ds = CropFrameDataset(_studies(), crops, list(FOUND), cfg, train=True)
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 16 and all(it["image"].shape == (4, 8, 8) for it in items)
    assert all(float(it["target"]) == expected for it in items)
    if shares[0] == "1.0":  # always the boxed crop: C2's second
        assert all(float(it["image"][0, 0, 0]) == pytest.approx(0.11, abs=1 / 255) for it in items)
    painted = [float((it["image"][1:-1] < 0.45).float().mean()) for it in items]
    assert all((p > 0) == (shares[1] == "1.0") for p in painted)  # a cleft only in the painted share
    assert all(bool((it["image"][-1] == 1.0).all()) for it in items)  # the mask channel is never painted
    assert crops.get("a", 0).images.min() == pytest.approx(0.0, abs=1 / 255)  # the cache is left as it was


def test_validation_covers_every_crop_of_found_vertebrae_in_order(tmp_path) -> None:
    cfg = _cfg()
    ds = CropFrameDataset(_studies(), _crops(tmp_path, cfg, FOUND), list(FOUND), cfg, train=False)
    assert len(ds) == (6 + 7 + 7) * 3
    keys = [(it["uid"], it["vertebra"], it["step"]) for it in (ds[i] for i in range(len(ds)))]
    assert keys == [(u, v, c) for u, f in FOUND.items() for v in range(7) if f[v] for c in range(3)]
    by_key = {k: ds[i] for i, k in enumerate(keys)}
    assert [float(by_key[("b", 1, c)]["target"]) for c in range(3)] == [0.0, 1.0, 0.0]
    assert [float(by_key[("c", 2, c)]["target"]) for c in range(3)] == [-1.0] * 3  # fractured, crops unknown
    assert float(by_key[("c", 2, 0)]["fractured"]) == 1.0 and float(by_key[("a", 0, 0)]["fractured"]) == 0.0
    assert float(by_key[("b", 3, 2)]["image"][0, 0, 0]) == pytest.approx(0.32, abs=1 / 255)


def test_type_1_starts_its_cnn_from_the_frame_model_of_its_fold(tmp_path, caplog) -> None:
    cfg = _cfg("frames.enabled=true", "frames.model.name=test_cervical_frame_classifier")
    frame_model = CropFrameStage(cfg, tmp_path).build_model()
    assert next(frame_model.backbone.parameters()).shape[1] == 4  # the crop's span + the mask
    (tmp_path / "frames" / "fold_0").mkdir(parents=True)
    torch.save(frame_model.state_dict(), tmp_path / "frames" / "fold_0" / "model.pt")
    stage = VertebraStage(cfg, tmp_path)
    model = stage.build_model()
    stage.initialize(model, 0)
    ours, theirs = model.encoder.backbone.state_dict(), frame_model.backbone.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    fresh = stage.build_model()
    with caplog.at_level("WARNING", logger="spinelab"):
        VertebraStage(cfg, tmp_path / "elsewhere").initialize(fresh, 0)
    assert "no frame model fits type 1" in caplog.text
    off = VertebraStage(_cfg(), tmp_path)
    untouched = off.build_model()
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    off.initialize(untouched, 0)
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())
