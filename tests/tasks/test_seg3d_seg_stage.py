"""Stage ``seg``: cases, training items (whole grid or patches, MONAI augmentation), collation, Dice and centroid
scores; real-data overfits on a TotalSegmentator CT (``total`` scheme) and a TPTBox crop (VerSe scheme, PIR)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spinelab.config.load import load_config
from spinelab.errors import ConfigError, InputError
from spinelab.io.nifti import write_nifti
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.seg3d.seg_stage import (
    SegDataset,
    SegStage,
    centroid_errors,
    crop_to_labels,
    dice_per_class,
    external_cases,
    pad_collate,
    read_case,
)


def _pair(tmp_path: Path, name: str = "case") -> tuple[Path, Path]:
    """A CT NIfTI with three TotalSegmentator-numbered blocks (C1, C2, C3 = 50, 49, 48) on an LAS grid."""
    ct = np.full((30, 24, 20), -1000, dtype=np.int16)
    labels = np.zeros(ct.shape, dtype=np.uint8)
    for k, value in enumerate((50, 49, 48)):
        labels[4 + 8 * k: 10 + 8 * k, 8:16, 6:14] = value
    ct[labels > 0] = 700
    affine = np.diag([1.5, -1.0, 1.0, 1.0])  # slices feet to head: reoriented on reading
    image, label = tmp_path / f"{name}_ct.nii.gz", tmp_path / f"{name}_seg.nii.gz"
    write_nifti(Volume(ct, affine), image)
    write_nifti(Volume(labels, affine, is_label=True), label)
    return image, label


def _cfg(image: Path, label: Path, *more: str):
    ext = f"[{{name: ext, image: '{image}', label: '{label}', label_scheme: total}}]"
    return load_config("cervical", [], ["route=seg3d", f"seg.external={ext}", "seg.size=[16, 16, 16]", *more])


def test_dice_and_centroid_distance_per_class() -> None:
    truth = np.zeros((4, 4, 4), dtype=np.int64)
    truth[0, :2, :2] = 1
    pred = truth.copy()
    pred[0, 0, 0] = 0  # 3 of 4 voxels found
    pred[3, 3, 3] = 2  # a class the truth does not hold
    dice = dice_per_class(pred, truth, 8)
    assert dice[0] == pytest.approx(6 / 7) and dice[1] == 0.0 and np.isnan(dice[2:]).all()
    dist = centroid_errors(pred, truth, np.array([2.0, 1.0, 1.0]), 8)
    assert dist[0] == pytest.approx(np.linalg.norm([0, 1 / 6, 1 / 6])) and np.isnan(dist[1:]).all()


def test_an_external_pair_is_remapped_and_reoriented(tmp_path: Path) -> None:
    image, label = _pair(tmp_path)
    cfg = _cfg(image, label)
    (case,) = external_cases(cfg.seg.external)
    ct, classes = read_case(case, cfg)
    assert ct.orientation == "IPL" and classes.shape == ct.shape
    assert set(np.unique(classes)) == {0, 1, 2, 3}
    # canonical: D runs head to feet, so C1 (50) comes first along D
    centres = [np.argwhere(classes == c)[:, 0].mean() for c in (1, 2, 3)]
    assert centres == sorted(centres)
    cut, cut_labels = crop_to_labels(ct, classes, 3.0)
    assert cut_labels.sum() == classes.sum() and cut.shape == cut_labels.shape and cut.shape[0] < ct.shape[0]
    idx = np.argwhere(cut_labels == 2).mean(0)
    np.testing.assert_allclose(cut.voxel_to_world(idx), ct.voxel_to_world(np.argwhere(classes == 2).mean(0)))


def test_missing_files_and_bad_pairs_csv_are_named(tmp_path: Path) -> None:
    image, label = _pair(tmp_path)
    with pytest.raises(InputError, match="nope.nii.gz.*file not found"):
        external_cases(_cfg(image, tmp_path / "nope.nii.gz").seg.external)
    bad = tmp_path / "pairs.csv"
    bad.write_text("ct,seg\na,b\n")
    cfg = load_config("cervical", [], ["route=seg3d", f"seg.external=[{{pairs: '{bad}'}}]"])
    with pytest.raises(InputError, match="pairs.csv: pairs CSV needs the columns image,label"):
        external_cases(cfg.seg.external)
    good = tmp_path / "good.csv"
    good.write_text(f"image,label\n{image.name},{label.name}\n")
    cfg = load_config("cervical", [], ["route=seg3d", f"seg.external=[{{pairs: '{good}'}}]"])
    assert [c.image for c in external_cases(cfg.seg.external)] == [image]
    with pytest.raises(ConfigError, match="image and label go together"):
        load_config("cervical", [], ["route=seg3d", f"seg.external=[{{image: '{image}'}}]"])
    with pytest.raises(ConfigError, match="either image and label, or pairs"):
        load_config("cervical", [], ["route=seg3d", "seg.external=[{name: none}]"])


@pytest.mark.parametrize("grid", ["fixed", "isotropic"])
def test_training_items_keep_image_and_mask_together(tmp_path: Path, grid: str) -> None:
    image, label = _pair(tmp_path)
    cfg = _cfg(image, label, f"seg.grid={grid}", "seg.patch=[8, 16, 16]", "seg.spacing_mm=1.5",
               "seg.fg_ratio=1.0", "seg.augment.affine_prob=1.0", "seg.augment.flip_prob=1.0")
    ds = SegDataset(external_cases(cfg.seg.external), cfg, train=True, seed=1)
    item = ds[0]
    want = (16, 16, 16) if grid == "fixed" else (8, 16, 16)
    assert item["image"].shape == (1, *want) and item["mask"].shape == (1, *want)
    assert item["mask"].dtype == torch.int64 and set(item["mask"].unique().tolist()) <= {0, 1, 2, 3}
    assert item["mask"].max() > 0  # a patch centred on a vertebra voxel
    # bright voxels are where the labels are (the transforms moved both alike)
    inside = item["image"][0][item["mask"][0] > 0]
    assert inside.mean() > item["image"][0][item["mask"][0] == 0].mean() + 0.3
    again = SegDataset(external_cases(cfg.seg.external), cfg, train=True, seed=1)[0]
    torch.testing.assert_close(again["image"], item["image"])  # seeded


def test_whole_volumes_of_different_sizes_are_padded_together() -> None:
    items = [{"image": torch.ones(1, d, 4, 5), "mask": torch.ones(1, d, 4, 5, dtype=torch.int64),
              "spacing": torch.ones(3), "shape": torch.tensor([d, 4, 5]), "id": str(d)} for d in (3, 6)]
    batch = pad_collate(items)
    assert batch["image"].shape == (2, 1, 6, 4, 5) and batch["mask"][0, 0, 3:].sum() == 0
    assert batch["shape"].tolist() == [[3, 4, 5], [6, 4, 5]] and batch["id"] == ["3", "6"]


def test_the_stage_scores_held_out_volumes_per_vertebra(tmp_path: Path) -> None:
    image, label = _pair(tmp_path)
    cfg = _cfg(image, label, "seg.model.name=test_vertebra_seg3d_unet")
    stage = SegStage(cfg, tmp_path / "run")
    model = stage.build_model().eval()
    assert model.head[-1].out_channels == 8
    ds = SegDataset(external_cases(cfg.seg.external), cfg, train=False)
    batch = pad_collate([ds[0]])
    out = stage.forward(model, batch)  # eval: sliding windows over the whole volume
    assert out["mask"].shape == (1, 8, 16, 16, 16)
    assert torch.isfinite(stage.loss(out, batch)["loss"])
    perfect = {"mask": torch.nn.functional.one_hot(batch["mask"][:, 0], 8).permute(0, 4, 1, 2, 3).float()}
    rows = stage.predictions(perfect, batch)
    scores = stage.evaluate(rows)
    assert scores["dice_C1"] == scores["dice_C3"] == 1.0 and scores["dice_mean"] == 1.0
    assert scores["dice_error"] == 0.0 and scores["centroid_mm_max"] == 0.0


class _ExternalOnly(SegStage):
    """The stage trained on its ``seg.external`` pairs alone (no RSNA dataset)."""

    def datasets(self, fold: int | None):
        return SegDataset(external_cases(self.section.external), self.cfg, train=True, seed=0), None


def _overfit_and_segment_back(tmp_path: Path, ext: str, size: str, epochs: int, channels: str) -> np.ndarray:
    """Train a small U-Net on one real pair through the training path, then segment the pair back on its CT's
    grid (sliding windows, labels mapped back); returns the Dice of each vertebra the labels hold."""
    from spinelab.tasks.cervical.seg3d.inputs import seg_input
    from spinelab.tasks.cervical.seg3d.seg_stage import sliding_window_logits
    from spinelab.train.run import train_stage

    cfg = load_config("cervical", [], [
        "route=seg3d", f"seg.external=[{ext}]", f"seg.size={size}", "seg.model.name=test_vertebra_seg3d_unet",
        f"seg.model.kwargs={{channels: {channels}, strides: [2, 2, 2]}}", f"seg.train.epochs={epochs}",
        "seg.train.batch_size=1", "seg.samples_per_volume=4", "seg.train.ema=null", "seg.train.optim.lr=3e-3",
        "seg.train.optim.warmup_frac=0", "seg.augment.affine_prob=0", "seg.augment.dropout_prob=0",
        "seg.augment.noise_prob=0", "trainer.accelerator=cpu", "seg.train.keep=model"])
    stage = _ExternalOnly(cfg, tmp_path / "run")
    result = train_stage(stage, trainer_cfg=cfg.trainer, fold=None, progress=False)
    model = stage.build_model()
    model.load_state_dict(torch.load(result["dir"] / "model.pt", weights_only=True))
    (case,) = external_cases(cfg.seg.external)
    ct, truth = read_case(case, cfg)
    si = seg_input(ct, cfg.seg)
    with torch.inference_mode():
        logits = sliding_window_logits(model.eval(), torch.from_numpy(si.image)[None], cfg.seg)["mask"]
    pred = si.labels_to_volume(logits.argmax(1)[0].numpy())
    assert pred.shape == truth.shape
    present = [c for c in range(1, 8) if (truth == c).any()]
    return dice_per_class(pred, truth, 8)[[c - 1 for c in present]]


@pytest.mark.slow
@pytest.mark.realdata
def test_overfit_on_a_real_totalsegmentator_ct_segments_it_back(realdata: Path, tmp_path: Path) -> None:
    # A real abdominal CT (RAS, 3 mm) with TotalSegmentator v2 `total` labels: T12..L5 stand in for C1..C6
    # (`total:T12`), the scan cut to the spine plus 15 mm (`crop_mm`) as a whole-body case would be.
    ts = realdata / "totalsegmentator"
    ext = (f"{{name: ts, image: '{ts / 'example_ct.nii.gz'}', label: '{ts / 'example_ct_spine_total.nii.gz'}', "
           "label_scheme: 'total:T12', crop_mm: 15}")
    # six look-alike levels: the wider U-Net tells them apart within the budget (the narrow one swaps some)
    dice = _overfit_and_segment_back(tmp_path, ext, "[64, 32, 32]", epochs=40, channels="[16, 32, 64, 128]")
    assert len(dice) == 6 and dice.mean() > 0.8, dice


@pytest.mark.slow
@pytest.mark.realdata
def test_overfit_on_the_real_tptbox_crop_segments_it_back(realdata: Path, tmp_path: Path) -> None:
    # A real CT crop stored PIR (1.5 mm) with VerSe-scheme labels 21..23 = L2..L4 standing in for C1..C3.
    tpt = realdata / "tptbox"
    ext = (f"{{name: tpt, image: '{tpt / 'sub-ct_label-22_ct.nii.gz'}', "
           f"label: '{tpt / 'sub-ct_seg-vert_label-22_msk.nii.gz'}', label_scheme: 'verse:L2'}}")
    dice = _overfit_and_segment_back(tmp_path, ext, "[32, 48, 48]", epochs=30, channels="[8, 16, 32, 64]")
    assert len(dice) == 3 and dice.mean() > 0.8, dice


@pytest.mark.parametrize("grid", ["fixed", "isotropic"])
def test_a_synthetic_study_mask_sits_on_its_bone_on_the_network_grid(tiny_cervical_dataset: Path, tmp_path: Path,
                                                                     grid: str) -> None:
    # The dataset path (segmentations/*.nii -> derived/masks on the CT grid -> the network grid) must keep the
    # mask on the vertebrae: a flip or shift on any axis would move it off the bright bone.
    from spinelab.data.cervical_labels import find_segmentations
    from spinelab.tasks.cervical.seg3d.pipeline import write_masks
    from spinelab.tasks.cervical.seg3d.seg_stage import case_arrays, dataset_cases

    cfg = load_config("cervical", [], [
        "route=seg3d", f"data.dataset_dir={tiny_cervical_dataset}", f"data.derived_dir={tmp_path / 'derived'}",
        f"data.cache_dir={tmp_path / 'cache'}", f"seg.grid={grid}", "seg.size=[32, 32, 32]", "seg.spacing_mm=3.0"])
    assert write_masks(cfg, progress=False)["failed"] == []
    (case, *_) = dataset_cases(cfg, sorted(find_segmentations(tiny_cervical_dataset)))
    arrays = case_arrays(case, cfg)
    image, mask = arrays["image"][0], arrays["mask"][0]
    assert set(np.unique(mask)) == set(range(8))
    on_bone = image[mask > 0].mean()
    for axis in range(3):
        for shift in (-2, 2):
            assert on_bone > image[np.roll(mask, shift, axis) > 0].mean() + 0.03, (axis, shift)
    # canonical: D runs head to feet, so C1 .. C7 follow one another along D
    centres = [np.argwhere(mask == c)[:, 0].mean() for c in range(1, 8)]
    assert centres == sorted(centres)
