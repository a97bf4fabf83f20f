"""Stage 2 pieces: box-derived per-step targets, the box table reader, and the combined loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spinelab.config.load import load_config
from spinelab.models.cervical import FractureClassifier
from spinelab.registry import CERVICAL_TARGETS
from spinelab.tasks.cervical.fracture import FractureStage
from spinelab.tasks.cervical.studies import CervicalStudies, step_targets

REPO = Path(__file__).resolve().parents[2]

# 7 vertebrae x 2 steps x 3 slices; vertebra i covers slices 10*i .. 10*i + 5
SLICES = np.array([[[10 * i, 10 * i + 1, 10 * i + 2], [10 * i + 3, 10 * i + 4, 10 * i + 5]] for i in range(7)])


def _labels(*fractured: int) -> np.ndarray:
    out = np.zeros(8, np.float32)
    out[list(fractured)] = 1.0
    out[7] = float(bool(fractured))
    return out


def test_intact_vertebrae_have_all_negative_steps() -> None:
    out = step_targets(SLICES, _labels(), None)
    assert out.shape == (7, 2) and not out.any()


def test_boxes_mark_only_the_steps_that_show_the_fracture() -> None:
    # C2 (index 1) fractured, its box on slice 14 (second step); C1 intact although a box touches slice 1.
    out = step_targets(SLICES, _labels(1), {"C2": {14}, "C1": {1}})
    assert out[1].tolist() == [0.0, 1.0]
    assert out[0].tolist() == [0.0, 0.0]


def test_fractured_vertebra_without_boxes_is_unknown() -> None:
    out = step_targets(SLICES, _labels(1, 5), {"C2": {11}})
    assert out[1].tolist() == [1.0, 0.0]
    assert out[5].tolist() == [-1.0, -1.0]
    assert step_targets(SLICES, _labels(5), None)[5].tolist() == [-1.0, -1.0]


def test_unattributed_boxes_count_for_fractured_vertebrae() -> None:
    out = step_targets(SLICES, _labels(3), {"": {30, 52}})
    assert out[3].tolist() == [1.0, 0.0]
    assert not out[5].any()  # slice 52 is in C6's range but C6 is intact


def test_fracture_slices_are_read_per_study_and_vertebra(tmp_path: Path) -> None:
    derived = tmp_path / "derived"
    derived.mkdir()
    pd.DataFrame({"StudyInstanceUID": ["a", "a", "a", "b"], "slice_number": [5, 6, 7, 1], "index": [4, 5, 6, 0],
                  "vertebra": ["C2", "C2", "", "C7"]}).to_csv(derived / "fracture_boxes.csv", index=False)
    cfg = load_config("cervical", overrides=[f"data.dataset_dir={tmp_path}"])
    got = CervicalStudies(cfg).fracture_slices
    assert got == {"a": {"C2": {4, 5}, "": {6}}, "b": {"C7": {0}}}


def test_missing_box_table_means_no_boxes(tmp_path: Path) -> None:
    cfg = load_config("cervical", overrides=[f"data.dataset_dir={tmp_path}"])
    assert CervicalStudies(cfg).fracture_slices == {}


@pytest.fixture
def stage(tmp_path: Path) -> FractureStage:
    cfg = load_config("cervical", overrides=[f"data.dataset_dir={tmp_path}", "stage2.step_loss_weight=2.0"])
    return FractureStage(cfg, tmp_path / "run")


def _batch(step_target: torch.Tensor) -> dict:
    return {"target": torch.from_numpy(_labels(1))[None], "mask": torch.ones(1, 7, dtype=torch.bool),
            "step_target": step_target}


def test_loss_adds_weighted_step_term_and_ignores_unknown_steps(stage: FractureStage) -> None:
    step_logits = torch.zeros(1, 7, 2, requires_grad=True)
    outputs = {"vertebra": torch.zeros(1, 7), "overall": torch.zeros(1), "step": step_logits}
    target = torch.zeros(1, 7, 2)
    target[0, 1] = torch.tensor([1.0, 0.0])
    target[0, 4] = -1.0
    losses = stage.loss(outputs, _batch(target))
    assert torch.isclose(losses["step_loss"], torch.tensor(np.log(2.0), dtype=torch.float32))
    assert torch.isclose(losses["loss"], losses["study_loss"] + 2.0 * losses["step_loss"])
    losses["loss"].backward()
    assert step_logits.grad[0, 4].abs().sum() == 0  # unknown steps carry no gradient
    assert step_logits.grad[0, 1, 0] < 0 < step_logits.grad[0, 1, 1]


def test_loss_without_step_targets_is_the_competition_loss(stage: FractureStage) -> None:
    outputs = {"vertebra": torch.zeros(1, 7), "overall": torch.zeros(1), "step": torch.zeros(1, 7, 2)}
    batch = _batch(torch.zeros(1, 7, 2))
    del batch["step_target"]
    losses = stage.loss(outputs, batch)
    assert torch.equal(losses["loss"], losses["study_loss"]) and "step_loss" not in losses
    assert stage.monitor == "val/study_loss"


def test_classifier_scores_every_step_and_starts_at_the_prior() -> None:
    model = FractureClassifier(backbone="resnet18", hidden=16, prior=0.1).eval()
    out = model(torch.rand(2, 7, 3, 3, 32, 32))
    assert out["step"].shape == (2, 7, 3) and out["vertebra"].shape == (2, 7) and out["overall"].shape == (2,)
    assert model.vertebra_head.bias.item() == pytest.approx(np.log(0.1 / 0.9), rel=1e-5)


def test_weights_without_step_head_still_load() -> None:
    model = FractureClassifier(backbone="resnet18", hidden=16)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("step_head.")}
    fresh = FractureClassifier(backbone="resnet18", hidden=16)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.vertebra_head.weight, model.vertebra_head.weight)
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict({k: v for k, v in old.items() if not k.startswith("vertebra_head.")})



def test_painted_vertebrae_leave_the_study_loss_and_the_patient_pooling(stage: FractureStage) -> None:
    from spinelab.tasks.cervical.fracture import competition_bce, fake_fracture_ignore

    fake = torch.zeros(2, 7, dtype=torch.bool)
    fake[:, 3] = True
    target = torch.zeros(2, 8)
    target[1, 0] = target[1, 7] = 1.0  # study 1 really has a C1 fracture
    ignore = fake_fracture_ignore(fake)
    assert ignore[:, 3].all() and ignore.sum() == 2  # patient_overall keeps its real label
    # An ignored entry does not move the loss, however wrong its logit.
    logits = torch.zeros(2, 8)
    wrong = logits.clone()
    wrong[:, 3] = 20.0
    assert torch.isclose(competition_bce(logits, target, ignore), competition_bce(wrong, target, ignore))
    assert not torch.isclose(competition_bce(logits, target), competition_bce(wrong, target))
    # The patient head pools over found vertebrae that were not painted.
    seen = {}

    def model(image, mask):
        seen["mask"] = mask
        return {}

    found = torch.ones(2, 7, dtype=torch.bool)
    found[0, 6] = False
    stage.forward(model, {"image": None, "mask": found, "fake": fake})
    assert seen["mask"].sum() == 14 - 2 - 1 and not seen["mask"][:, 3].any()


class _StubStudies:
    """Just what FractureDataset reads: one intact study whose every slice shows a bone disc."""

    def __init__(self) -> None:
        from spinelab.io.volume import Volume

        yy, xx = np.mgrid[0:64, 0:64]
        disc = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 15**2, 700, 40).astype(np.int16)
        self._volume = Volume(np.repeat(disc[None], 70, axis=0), np.diag([1.0, 0.5, 0.5, 1.0]))
        self.fracture_slices: dict = {}

    def volume(self, uid: str):
        return self._volume

    def targets(self, uid: str) -> np.ndarray:
        return np.zeros(8, np.float32)


def test_training_items_carry_painted_fractures_as_step_positives() -> None:
    from spinelab.tasks.cervical.fracture import FractureDataset

    cfg = load_config("cervical", overrides=["stage2.fake_fracture_prob=1.0", "stage2.n_slices=6",
                                             "stage2.image_size=32", "stage2.range_jitter=0"])
    summary = {"ranges": {f"C{i}": [10 * (i - 1), 10 * (i - 1) + 8] for i in range(1, 8)},
               "box": [0.0, 0.0, 64.0, 64.0], "missing": ["C7"]}
    train = FractureDataset(_StubStudies(), ["s"], cfg, {"s": summary}, train=True)[0]
    assert train["fake"][:6].all() and not train["fake"][6]  # C7 was not found: nothing to paint
    assert (train["step_target"][:6].sum(-1) >= 1).all() and train["step_target"][6].sum() == 0
    val = FractureDataset(_StubStudies(), ["s"], cfg, {"s": summary}, train=False)[0]
    assert not val["fake"].any() and val["step_target"].sum() == 0


def _tiny(tmp_path: Path, *overrides: str):
    return load_config("cervical", [REPO / "src/spinelab/configs" / "cervical" / "tiny.yaml"],
                       overrides=[f"data.dataset_dir={tmp_path}", *overrides])


def _save_stage1(cfg, run: Path, fold: int, seed: int) -> dict[str, torch.Tensor]:
    from spinelab.tasks.cervical.localization import LocalizerStage

    torch.manual_seed(seed)
    model = LocalizerStage(cfg, run).build_model()
    (run / "stage1" / f"fold_{fold}").mkdir(parents=True)
    torch.save(model.state_dict(), run / "stage1" / f"fold_{fold}" / "model.pt")
    return model.encoder.backbone.state_dict()


def test_stage2_cnn_starts_from_the_same_folds_stage1_backbone(tmp_path: Path) -> None:
    cfg, run = _tiny(tmp_path, "stage2.init_prior=false"), tmp_path / "run"
    fold0, fold1 = _save_stage1(cfg, run, 0, seed=0), _save_stage1(cfg, run, 1, seed=1)
    stage = FractureStage(cfg, run)
    model = stage.build_model()
    stage.initialize(model, 1)
    got = model.encoder.backbone.state_dict()
    assert all(torch.equal(got[k], fold1[k]) for k in fold1)
    assert not all(torch.equal(got[k], fold0[k]) for k in fold0 if k.endswith("weight"))


@pytest.mark.parametrize("override", ["stage2.init_from_stage1=false", "stage1.model.backbone=resnet18"])
def test_stage2_keeps_its_own_weights_when_init_is_off_or_the_backbones_differ(tmp_path: Path,
                                                                              override: str) -> None:
    cfg, run = _tiny(tmp_path, override, "stage2.init_prior=false"), tmp_path / "run"
    _save_stage1(cfg, run, 0, seed=0)
    stage = FractureStage(cfg, run)
    model = stage.build_model()
    before = {k: v.clone() for k, v in model.encoder.backbone.state_dict().items()}
    stage.initialize(model, 0)
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.backbone.state_dict().items())


def test_stage2_outputs_start_at_the_training_folds_rates(tmp_path: Path) -> None:
    ids = [f"1.2.{i}" for i in range(10)]
    labels = pd.DataFrame({"StudyInstanceUID": ids, **{t: 0 for t in CERVICAL_TARGETS}})
    labels.loc[:3, ["C2", "patient_overall"]] = 1  # studies 0-3 fractured at C2 ...
    labels.loc[8:, ["C7", "patient_overall"]] = 1  # ... and 8-9 at C7, which fold 0 holds out
    labels.to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"StudyInstanceUID": ids, "fold": [1, 1, 2, 2, 3, 3, 4, 4, 0, 0]}).to_csv(
        tmp_path / "folds.csv", index=False)
    stage = FractureStage(_tiny(tmp_path, "stage2.init_from_stage1=false"), tmp_path / "run")
    model = stage.build_model()
    stage.initialize(model, 0)
    rates = torch.sigmoid(model.vertebra_bias).tolist()
    assert rates == pytest.approx([0.01, 0.5, 0.01, 0.01, 0.01, 0.01, 0.01], abs=1e-6)  # 4 of 8, zero clipped
    assert torch.sigmoid(model.overall_head.bias).item() == pytest.approx(0.5, abs=1e-6)


def test_fracture_slices_follow_a_series_stored_feet_first() -> None:
    """Boxes are on the stored grid (``read_series`` sorts a standard axial CT feet first); the stage-2 step
    that shows the boxed slice is the step marked positive on the canonical grid."""
    from spinelab.io.volume import Volume
    from spinelab.tasks.cervical.fracture import FractureDataset
    from spinelab.tasks.cervical.studies import prepare_cervical_volume

    yy, xx = np.mgrid[0:64, 0:64]
    disc = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 15**2, 700, 40).astype(np.int16)
    arr = np.repeat(disc[None], 70, axis=0)
    arr[59, 30:34, 30:34] = 3000  # the fracture, on stored slice 59 = canonical slice 10
    aff = np.eye(4)
    aff[:3, :3] = [[0, 0, 0.5], [0, 0.5, 0], [1.0, 0, 0]]  # D towards the head, rows posterior, columns left

    class _Studies:
        fracture_slices = {"s": {"C2": {59}}}

        def volume(self, uid: str) -> Volume:
            return prepare_cervical_volume(Volume(arr, aff))

        def targets(self, uid: str) -> np.ndarray:
            return _labels(1)

    cfg = load_config("cervical", overrides=["stage2.n_slices=6", "stage2.image_size=32", "stage2.range_jitter=0"])
    summary = {"ranges": {f"C{i}": [10 * (i - 1), 10 * (i - 1) + 8] for i in range(1, 8)},
               "box": [0.0, 0.0, 64.0, 64.0], "missing": []}
    summary["ranges"]["C2"] = [6, 17]  # steps of slices (6, 8, 10) and (13, 15, 17)
    item = FractureDataset(_Studies(), ["s"], cfg, {"s": summary}, train=False)[0]
    assert item["step_target"][1].tolist() == [1.0, 0.0]
    assert item["image"][1, 0].max() == 1.0 and item["image"][1, 1].max() < 0.7  # the step that shows it


def test_training_and_inference_build_the_same_stage2_input(tiny_cervical_run: Path) -> None:
    """The training item (augmentation off) is ``fracture_inputs`` of the same study read as a user's input."""
    from spinelab.config.load import read_run_config
    from spinelab.infer.studies import read_study_volume
    from spinelab.tasks.cervical.fracture import FractureDataset, fracture_inputs, read_localization
    from spinelab.tasks.cervical.studies import CervicalStudies, prepare_cervical_volume

    cfg = read_run_config(tiny_cervical_run)
    loc = read_localization(tiny_cervical_run)
    studies = CervicalStudies(cfg)
    uid = sorted(loc)[0]
    item = FractureDataset(studies, [uid], cfg, loc, train=True, augment=False)[0]
    volume = prepare_cervical_volume(read_study_volume(Path(cfg.data.dataset_dir) / "train_images" / uid))
    images, found, _ = fracture_inputs(volume, loc[uid], cfg)
    np.testing.assert_array_equal(item["image"].numpy(), images)
    np.testing.assert_array_equal(item["mask"].numpy(), found)
    assert not item["fake"].any()


def test_stage2_training_items_repeat_with_the_seed() -> None:
    from spinelab.tasks.cervical.fracture import FractureDataset

    cfg = load_config("cervical", overrides=["stage2.fake_fracture_prob=0.5", "stage2.n_slices=6",
                                             "stage2.image_size=32", "stage2.range_jitter=0.2"])
    summary = {"ranges": {f"C{i}": [10 * (i - 1), 10 * (i - 1) + 8] for i in range(1, 8)},
               "box": [0.0, 0.0, 64.0, 64.0], "missing": []}

    def items(seed: int) -> list[np.ndarray]:
        ds = FractureDataset(_StubStudies(), ["s", "s"], cfg, {"s": summary}, train=True, seed=seed)
        return [ds[i]["image"].numpy() for i in range(len(ds))]

    first, again, other = items(3), items(3), items(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])  # the generator moves on from item to item
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
