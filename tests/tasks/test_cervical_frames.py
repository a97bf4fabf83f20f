"""Frame pre-training of the stage-2 CNN: balanced single-step items, held-out steps, its metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spinelab.config.load import load_config
from spinelab.errors import ConfigError
from spinelab.tasks.cervical.frames import FrameDataset, FrameStage

SUMMARY = {"ranges": {f"C{i}": [10 * (i - 1), 10 * (i - 1) + 8] for i in range(1, 8)},
           "box": [0.0, 0.0, 64.0, 64.0], "missing": ["C7"]}


class _Studies:
    """Two studies whose slices show a bone disc: "a" intact, "b" with C2 fractured and boxed on slices 12-13."""

    def __init__(self) -> None:
        from spinelab.io.volume import Volume

        yy, xx = np.mgrid[0:64, 0:64]
        disc = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 15**2, 700, 40).astype(np.int16)
        self._volume = Volume(np.repeat(disc[None], 70, axis=0), np.diag([1.0, 0.5, 0.5, 1.0]))
        self.fracture_slices = {"b": {"C2": {12, 13}}}

    def volume(self, uid: str):
        return self._volume

    def targets(self, uid: str) -> np.ndarray:
        out = np.zeros(8, np.float32)
        if uid == "b":
            out[[1, 7]] = 1.0
        return out


def _dataset(*overrides: str, train: bool = True) -> FrameDataset:
    cfg = load_config("cervical", overrides=["stage2.n_slices=6", "stage2.image_size=32", "stage2.range_jitter=0",
                                             "frames.frames_per_epoch=12", *overrides])
    return FrameDataset(_Studies(), ["a", "b"], cfg, {"a": SUMMARY, "b": SUMMARY}, train=train)


def test_pools_hold_boxed_fractures_and_found_intact_vertebrae() -> None:
    ds = _dataset()
    assert ds.positive == [("b", 1)]
    assert len(ds.intact) == 6 + 5 and ("a", 6) not in ds.intact  # C7 was not found; C2 of "b" is fractured


@pytest.mark.parametrize(("shares", "expected"), [(("1.0", "0.0"), 1.0), (("0.0", "1.0"), 1.0),
                                                  (("0.0", "0.0"), 0.0)])
def test_training_items_follow_the_shares(shares: tuple[str, str], expected: float) -> None:
    ds = _dataset(f"frames.positive_share={shares[0]}", f"frames.fake_share={shares[1]}")
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 12
    assert all(it["image"].shape == (3, 32, 32) for it in items)
    assert all(float(it["target"]) == expected for it in items)


def test_validation_covers_every_step_of_found_vertebrae_in_order() -> None:
    ds = _dataset(train=False)
    assert len(ds) == 2 * 6 * 2  # two studies, C1-C6 found, two steps each
    targets = {(it["uid"], it["vertebra"], it["step"]): float(it["target"]) for it in (ds[i] for i in range(len(ds)))}
    # "b"'s C2 spans slices 10-18: 6 evenly spaced slices 10 12 13 | 15 16 18, so one step shows the boxes.
    _, slices, _ = ds._step("b", 1, None)
    boxed = [int(bool({12, 13} & set(step.tolist()))) for step in slices]
    assert sorted(boxed) == [0, 1]
    assert [targets[("b", 1, s)] for s in range(2)] == boxed
    assert sum(targets.values()) == 1.0


def test_shares_above_one_are_refused() -> None:
    with pytest.raises(ConfigError, match="positive_share"):
        load_config("cervical", overrides=["frames.positive_share=0.7", "frames.fake_share=0.6"])


def test_metrics_score_steps_and_vertebrae_by_their_highest_step(tmp_path) -> None:
    cfg = load_config("cervical", overrides=[f"data.dataset_dir={tmp_path}"])
    rows = pd.DataFrame({"StudyInstanceUID": ["a"] * 4 + ["b"] * 4, "vertebra": [0, 0, 1, 1] * 2,
                         "step": [0, 1] * 4, "prob": [0.1, 0.2, 0.3, 0.1, 0.9, 0.2, 0.4, 0.1],
                         "true": [0, 0, 0, 0, 1, 0, -1, -1], "fractured": [0, 0, 0, 0, 1, 1, 1, 1]})
    scores = FrameStage(cfg, tmp_path / "run").evaluate(rows)
    assert scores["auc_step"] == pytest.approx(1.0)  # the unknown steps (-1) are left out
    assert scores["auc_vertebra_max_step"] == pytest.approx(1.0)  # maxima 0.2, 0.3 vs 0.9, 0.4



def test_frame_items_are_stage2_step_images(tiny_cervical_run) -> None:
    """A held-out frame item is the step image that ``fracture_inputs`` builds for the same study."""
    from pathlib import Path

    from spinelab.config.load import read_run_config
    from spinelab.infer.studies import read_study_volume
    from spinelab.tasks.cervical.fracture import fracture_inputs, read_localization
    from spinelab.tasks.cervical.studies import CervicalStudies, prepare_cervical_volume

    cfg = read_run_config(tiny_cervical_run)
    loc = read_localization(tiny_cervical_run)
    uid = sorted(loc)[0]
    ds = FrameDataset(CervicalStudies(cfg), [uid], cfg, loc, train=False)
    volume = prepare_cervical_volume(read_study_volume(Path(cfg.data.dataset_dir) / "train_images" / uid))
    images = fracture_inputs(volume, loc[uid], cfg).images
    for k in (0, len(ds) - 1):
        item = ds[k]
        # One step resized alone vs all steps in one torch call: the same function, float32 rounding apart.
        np.testing.assert_allclose(item["image"].numpy(), images[item["vertebra"], item["step"]], rtol=0, atol=1e-6)


def test_frame_training_items_repeat_with_the_seed() -> None:
    cfg = load_config("cervical", overrides=["stage2.n_slices=6", "stage2.image_size=32", "stage2.range_jitter=0.2",
                                             "frames.frames_per_epoch=6"])

    def items(seed: int) -> list[np.ndarray]:
        ds = FrameDataset(_Studies(), ["a", "b"], cfg, {"a": SUMMARY, "b": SUMMARY}, train=True, seed=seed)
        return [ds[i]["image"].numpy() for i in range(len(ds))]

    first, again, other = items(1), items(1), items(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_a_stage_told_to_validate_after_its_last_epoch_validates_once(tiny_cervical_run, tmp_path) -> None:
    """``train.validation: last_epoch``: one validation, after the last epoch, and the scores still hold it."""
    import csv
    import json
    import shutil

    from spinelab import api
    from spinelab.config.load import load_config

    run = tmp_path / "run"
    shutil.copytree(tiny_cervical_run, run, ignore=shutil.ignore_patterns("frames", "stage2"))
    cfg = load_config("cervical", [run / "config.yaml"], ["frames.enabled=true", "frames.frames_per_epoch=16",
                                        "frames.train={epochs: 3, batch_size: 8, ema: null, validation: last_epoch}",
                                        "trainer.accelerator=cpu"])
    api.train(cfg, run_dir=run, fold="0", stage="frames", progress=False)
    rows = list(csv.DictReader((run / "frames/fold_0/logs/version_0/metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows if r.get("val/auc_step")] == [2]
    assert "auc_step" in json.loads((run / "frames/fold_0/scores.json").read_text())
