"""Stage-1 glue: per-vertebra slice ranges and the study crop box from per-slice predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spinelab.config.load import load_config
from spinelab.io.volume import Volume
from spinelab.registry import VERTEBRAE
from spinelab.tasks.cervical.localization import summarize_localization


def _volume(depth: int, *, head_at_index_0: bool, spacing: float = 1.0) -> Volume:
    aff = np.diag([spacing, 0.5, 0.5, 1.0])
    if head_at_index_0:
        aff[2, 0] = -spacing  # D runs towards the feet
    return Volume(np.zeros((depth, 100, 80), np.int16), aff)


def _profiles(depth: int, centres: list[int], width: float, height: float) -> np.ndarray:
    idx = np.arange(depth)[:, None]
    return height * np.exp(-0.5 * ((idx - np.array(centres)[None]) / width) ** 2)


@pytest.fixture
def cfg():
    return load_config("cervical")


def _pred(ratio: np.ndarray, box=(0.2, 0.3, 0.6, 0.7), has=None) -> dict:
    depth = len(ratio)
    return {"ratio": ratio, "box": np.tile(np.array(box), (depth, 1)),
            "has_box": np.ones(depth) if has is None else has}


def test_confident_peaks_give_tight_ordered_ranges(cfg) -> None:
    vol = _volume(80, head_at_index_0=True)
    centres = [8, 18, 28, 38, 48, 58, 68]
    out = summarize_localization(_pred(_profiles(80, centres, 2.0, 1.0)), vol, cfg)
    assert out["missing"] == [] and out["warnings"] == []
    for c, v in zip(centres, VERTEBRAE, strict=True):
        start, end = out["ranges"][v]
        assert start <= c <= end and end - start <= 8


def test_blurred_model_still_finds_vertebrae_around_their_peaks(cfg) -> None:
    vol = _volume(80, head_at_index_0=True)
    centres = [8, 18, 28, 38, 48, 58, 68]
    out = summarize_localization(_pred(_profiles(80, centres, 4.0, 0.25)), vol, cfg)  # peaks below 0.3
    assert out["missing"] == []
    for c, v in zip(centres, VERTEBRAE, strict=True):
        assert out["ranges"][v][0] <= c <= out["ranges"][v][1]


def test_nothing_found_splits_study_in_anatomical_order(cfg) -> None:
    vol = _volume(70, head_at_index_0=True)  # canonical: index 0 is the head
    out = summarize_localization(_pred(np.zeros((70, 7)), has=np.zeros(70)), vol, cfg)
    assert out["missing"] == list(VERTEBRAE) and any("not found" in w for w in out["warnings"])
    starts = [out["ranges"][v][0] for v in VERTEBRAE]
    assert starts == sorted(starts) and len(set(starts)) == 7  # C1 first: cranial
    assert starts[0] > 0 and out["ranges"]["C7"][1] < 69  # the middle 80 % of the study
    assert any("whole image" in w for w in out["warnings"])
    assert out["box"] == [0.0, 0.0, 80.0, 100.0]  # the whole image (squaring is clipped to its edges)


def test_one_missing_vertebra_is_placed_next_to_its_neighbour(cfg) -> None:
    vol = _volume(80, head_at_index_0=True)
    ratio = _profiles(80, [8, 18, 28, 38, 48, 58, 68], 2.0, 1.0)
    ratio[:, 3] = 0  # C4 not seen
    out = summarize_localization(_pred(ratio), vol, cfg)
    assert out["missing"] == ["C4"]
    c3_end = out["ranges"]["C3"][1]
    assert out["ranges"]["C4"][0] == c3_end + 1  # directly caudal to C3


def test_box_is_square_with_margin_and_inside_the_image(cfg) -> None:
    vol = _volume(40, head_at_index_0=True)
    out = summarize_localization(_pred(_profiles(40, [5, 10, 15, 20, 25, 30, 35], 1.5, 1.0),
                                       box=(0.25, 0.2, 0.5, 0.4)), vol, cfg)
    x0, y0, x1, y1 = out["box"]
    assert x1 - x0 == pytest.approx(y1 - y0)  # square
    assert x1 - x0 == pytest.approx(max(0.25 * 80, 0.2 * 100) * (1 + 2 * cfg.stage1.crop_margin))
    assert x0 >= 0 and x1 <= 80 and y0 >= 0 and y1 <= 100


@pytest.mark.parametrize("col_dir", [1.0, -1.0], ids=["columns-to-left", "columns-to-right"])
def test_training_items_run_head_to_feet_whatever_the_stored_order(cfg, col_dir: float) -> None:
    """A series stored feet first (as ``read_series`` gives standard axial CT): the model still sees the head
    first, and the targets and boxes follow the slices and the in-plane flip."""
    import pandas as pd

    from spinelab.tasks.cervical.localization import LocalizerDataset
    from spinelab.tasks.cervical.studies import prepare_cervical_volume

    depth = 40
    aff = np.diag([1.0, 0.5, 0.5, 1.0])
    aff[0, 2] = 0.5 * col_dir
    aff[:3, 0] = [0, 0, 2.0]  # stored D towards the head
    arr = np.full((depth, 32, 32), -1000, np.int16)
    arr[-8:, 4:12, 2:10] = 1000  # bone in the 8 most cranial slices, at the stored top-left
    stored = Volume(arr, aff)
    rows = pd.DataFrame({"StudyInstanceUID": "s", "index": np.arange(depth), "C1": 0.0,
                         "nx0": np.nan, "ny0": np.nan, "nx1": np.nan, "ny1": np.nan})
    rows.loc[depth - 8:, ["C1", "nx0", "ny0", "nx1", "ny1"]] = [1.0, 2 / 32, 4 / 32, 10 / 32, 12 / 32]
    for v in VERTEBRAE[1:]:
        rows[v] = 0.0

    class _Studies:
        slice_labels = rows

        def volume(self, uid: str) -> Volume:
            return prepare_cervical_volume(stored)

    cfg = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"seq_len": 10, "image_size": 32})})
    item = LocalizerDataset(_Studies(), ["s"], cfg, train=False)[0]
    ratio, image, box = item["ratio"].numpy(), item["image"].numpy(), item["box"].numpy()
    assert np.all(np.diff(item["pos"].numpy()) > 0) and item["pos"][0] == 0
    assert ratio[:2, 0].tolist() == [1.0, 1.0] and ratio[3:, 0].max() == 0  # C1 at the head end
    assert image[0].max() > 0.5 and image[-1].max() < 0.1  # 1000 HU is 0.83 in the default window
    expect = [2 / 32, 4 / 32, 10 / 32, 12 / 32] if col_dir > 0 else [22 / 32, 4 / 32, 30 / 32, 12 / 32]
    np.testing.assert_allclose(box[0], expect)
    ys, xs = np.nonzero(image[0, 1] > 0.5)  # the box frames the bone that the model sees
    assert xs.min() == round(expect[0] * 32) and xs.max() + 1 == round(expect[2] * 32)


def test_stage1_warns_when_given_a_volume_that_skipped_the_canonical_orientation(cfg, caplog) -> None:
    import logging

    import torch

    from spinelab.tasks.cervical.localization import localize
    from spinelab.tasks.cervical.studies import prepare_cervical_volume

    class _Flat(torch.nn.Module):
        def forward(self, x, pos):
            b, t = x.shape[:2]
            return {"ratio": torch.zeros(b, t, 7), "box": torch.full((b, t, 4), 0.5), "has_box": torch.zeros(b, t)}

    cfg = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"seq_len": 4, "image_size": 16})})
    aff = np.eye(4)
    aff[:3, :3] = [[0, 0, 0.5], [0, 0.5, 0], [2.0, 0, 0]]  # feet first, as read_series gives a standard axial CT
    stored = Volume(np.zeros((6, 20, 20), np.int16), aff)
    with caplog.at_level(logging.WARNING, logger="spinelab"):
        out = localize(prepare_cervical_volume(stored), [_Flat()], cfg, tta=False)
    assert out["ratio"].shape == (6, 7) and not caplog.records
    with caplog.at_level(logging.WARNING, logger="spinelab"):
        localize(stored, [_Flat()], cfg, tta=False)
    assert any("prepare_cervical_volume" in r.getMessage() for r in caplog.records)


class _Recorder(torch.nn.Module):
    """A stage-1 model that keeps what it was given and predicts nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append((x.numpy().copy(), pos.numpy().copy()))
        b, t = x.shape[:2]
        return {"ratio": torch.zeros(b, t, 7), "box": torch.full((b, t, 4), 0.5), "has_box": torch.zeros(b, t)}


def test_training_and_inference_build_the_same_stage1_input(tiny_cervical_run: Path) -> None:
    """The training item (augmentation off, volume from the training table) is what ``localize`` gives the
    model for the same study read as a user's input."""
    from spinelab.config.load import read_run_config
    from spinelab.infer.studies import read_study_volume
    from spinelab.tasks.cervical.localization import LocalizerDataset, localize
    from spinelab.tasks.cervical.studies import CervicalStudies, prepare_cervical_volume

    cfg = read_run_config(tiny_cervical_run)
    studies = CervicalStudies(cfg)
    uid = studies.segmented_ids()[0]
    item = LocalizerDataset(studies, [uid], cfg, train=True, augment=False)[0]
    volume = prepare_cervical_volume(read_study_volume(Path(cfg.data.dataset_dir) / "train_images" / uid))
    recorder = _Recorder()
    localize(volume, [recorder], cfg, tta=False)
    assert len(recorder.seen) == max(1, cfg.stage1.infer_offsets)
    images, pos = recorder.seen[0]  # offset 0 is the training grid
    np.testing.assert_array_equal(images[0], item["image"].numpy())
    np.testing.assert_array_equal(pos[0], item["pos"].numpy())
    assert not np.array_equal(recorder.seen[1][0], images)  # the other offsets sample other slices


def test_training_items_repeat_with_the_seed_and_differ_without(tiny_cervical_run: Path) -> None:
    from spinelab.config.load import read_run_config
    from spinelab.tasks.cervical.localization import LocalizerDataset
    from spinelab.tasks.cervical.studies import CervicalStudies

    cfg = read_run_config(tiny_cervical_run)
    studies = CervicalStudies(cfg)
    ids = studies.segmented_ids()[:2]

    def items(seed: int) -> list[np.ndarray]:
        ds = LocalizerDataset(studies, ids, cfg, train=True, seed=seed)
        return [np.concatenate([ds[i]["image"].numpy().ravel(), ds[i]["index"].numpy().ravel()])
                for i in range(len(ds))]

    first, again, other = items(7), items(7), items(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_stage1_retrained_with_the_same_seed_has_the_same_weights(tiny_cervical_dataset: Path,
                                                                  tmp_path: Path) -> None:
    """Augmentation on (jitter, flips, affine), one epoch: a rerun draws the same batches, hence equal weights;
    another seed draws others."""
    from spinelab import api
    from spinelab.config.load import load_config

    repo = Path(__file__).resolve().parents[2]

    def weights(name: str, seed: int) -> dict[str, torch.Tensor]:
        cfg = load_config("cervical", [repo / "src/spinelab/configs/cervical/tiny.yaml"],
                          [f"data.dataset_dir={tiny_cervical_dataset}", "stage1.train.epochs=1",
                           f"stage1.train.seed={seed}", "trainer.accelerator=cpu"])
        run = api.train(cfg, run_dir=tmp_path / name, fold="0", stage="stage1", progress=False)
        return torch.load(run / "stage1" / "fold_0" / "model.pt", weights_only=True)

    first, again, other = weights("a", 1), weights("b", 1), weights("c", 2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
