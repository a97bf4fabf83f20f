"""Stage ``frames`` of the sequence route: balanced single slices, every held-out slice, the slice CNN starting
from it."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spinelab.config.load import load_config
from spinelab.io.volume import Volume
from spinelab.tasks.cervical.sequence.frames_stage import SliceFrameDataset
from spinelab.tasks.cervical.sequence.labels import labels_dir

TINY = Path(__file__).resolve().parents[4] / "src/spinelab/configs/cervical/sequence_tiny.yaml"
POSITIONS = list(range(10, 21, 2))  # z-range 10-20, every 2nd slice (sequence_tiny's slice_step)
LOC = {"box": [0.0, 0.0, 32.0, 32.0]}


def _cfg(*overrides: str):
    return load_config("cervical", [TINY], ["frames.frames_per_epoch=16", "slices.augment=false", *overrides])


def _run(tmp_path: Path) -> Path:
    """Slice labels of three studies: slice z's highest ratio is vertebra ``z // 4 - 2`` (C1 at 10-11, C2 at
    12-15, ...)."""
    out = labels_dir(tmp_path)
    out.mkdir()
    ratio = np.zeros((40, 7), np.float16)
    for z in range(40):
        ratio[z, min(max(z // 4 - 2, 0), 6)] = 1.0
    for uid in "abc":
        np.savez(out / f"{uid}.npz", ratio=ratio, fracture=np.zeros((40, 7), np.float16), z_range=np.array([10, 20]))
    return tmp_path


def _studies() -> SimpleNamespace:
    """A bone disc on every slice; "a" intact, "b" with C2 fractured and boxed on slices 12-13, "c" with C3
    fractured and no box."""
    yy, xx = np.mgrid[0:32, 0:32]
    disc = np.where((yy - 16) ** 2 + (xx - 16) ** 2 < 12**2, 700, 40).astype(np.int16)
    volume = Volume(np.repeat(disc[None], 40, axis=0), np.eye(4))
    labels = {"a": np.zeros(8, np.float32), "b": np.array([0, 1, 0, 0, 0, 0, 0, 1], np.float32),
              "c": np.array([0, 0, 1, 0, 0, 0, 0, 1], np.float32)}
    return SimpleNamespace(targets=lambda uid: labels[uid], volume=lambda uid: volume,
                           fracture_slices={"b": {"C2": {12, 13}}})


def _dataset(tmp_path: Path, *overrides: str, train: bool = True) -> SliceFrameDataset:
    return SliceFrameDataset(_studies(), list("abc"), _cfg(*overrides), _run(tmp_path),
                             {u: LOC for u in "abc"}, train=train)


def test_pools_hold_the_boxed_slices_and_the_slices_of_intact_studies(tmp_path) -> None:
    ds = _dataset(tmp_path)
    assert ds.positive == [("b", 12)]  # slice 13 is not a route slice (every 2nd)
    assert ds.intact == [("a", z) for z in POSITIONS]


def test_only_the_boxed_studies_volumes_are_read_to_build_the_pools(tmp_path) -> None:
    studies, read = _studies(), []
    volume = studies.volume

    def counted(uid: str) -> Volume:
        read.append(uid)
        return volume(uid)

    studies.volume = counted
    ds = SliceFrameDataset(studies, list("abc"), _cfg(), _run(tmp_path), {u: LOC for u in "abc"}, train=True)
    assert read == ["b"] and ds.positive == [("b", 12)]


@pytest.mark.parametrize(("shares", "expected"), [(("1.0", "0.0"), 1.0), (("0.0", "1.0"), 1.0),
                                                  (("0.0", "0.0"), 0.0)])
def test_training_items_follow_the_shares(tmp_path, shares: tuple[str, str], expected: float) -> None:
    ds = _dataset(tmp_path, f"frames.positive_share={shares[0]}", f"frames.fake_share={shares[1]}")
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 16 and all(it["image"].shape == (3, 32, 32) for it in items)
    assert all(float(it["target"]) == expected for it in items)
    clean = ds._image("a", 10)
    painted = [not np.allclose(it["image"].numpy(), clean) for it in items]
    assert all(p == (shares[1] == "1.0") for p in painted)  # a cleft only in the painted share


def test_validation_covers_every_route_slice_with_its_vertebra(tmp_path) -> None:
    ds = _dataset(tmp_path, train=False)
    items = [ds[i] for i in range(len(ds))]
    assert [(it["uid"], it["step"]) for it in items] == [(u, z) for u in "abc" for z in POSITIONS]
    target = {(it["uid"], it["step"]): float(it["target"]) for it in items}
    assert [target[("a", z)] for z in POSITIONS] == [0.0] * 6
    assert [target[("b", z)] for z in POSITIONS] == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # off the box: intact
    assert [target[("c", z)] for z in POSITIONS] == [-1.0] * 6  # fractured, which slices unknown
    assert [it["vertebra"] for it in items[:6]] == [0, 1, 1, 2, 2, 3]
    fractured = {(it["uid"], it["vertebra"]): float(it["fractured"]) for it in items}
    assert fractured[("b", 1)] == 1.0 and fractured[("c", 2)] == 1.0 and fractured[("c", 1)] == 0.0


def test_the_frames_stage_trains_and_each_seed_starts_from_it(tiny_sequence_run: Path, tmp_path) -> None:
    from typer.testing import CliRunner

    from spinelab.cli import app
    from spinelab.tasks.cervical.sequence.slice_stage import SliceSequenceStage
    from spinelab.train.run_folder import read_run_config

    run = tmp_path / "run"
    shutil.copytree(tiny_sequence_run, run)
    dataset = read_run_config(run).data.dataset_dir
    result = CliRunner().invoke(app, ["train", "cervical", "-c", "sequence_tiny", "-o", str(run), "--fold", "0",
                                      "--stage", "frames", f"data.dataset_dir={dataset}", "trainer.accelerator=cpu",
                                      "frames.enabled=true", "frames.model.name=test_cervical_frame_classifier",
                                      "frames.train.epochs=1", "frames.train.batch_size=4",
                                      "frames.frames_per_epoch=8"])
    assert result.exit_code == 0, result.output
    frame_weights = torch.load(run / "frames" / "fold_0" / "model.pt", weights_only=True)
    cfg = read_run_config(run)
    assert cfg.frames.enabled
    stage = SliceSequenceStage(cfg, run, 0)
    model = stage.build_model()
    stage.initialize(model, 0)
    ours = model.encoder.backbone.state_dict()
    assert ours and all(torch.equal(v, frame_weights[f"backbone.{k}"]) for k, v in ours.items())
