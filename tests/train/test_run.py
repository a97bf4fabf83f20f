"""The shared training loop: loss falls, files land in the run folder, killed runs resume, EMA, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from spinelab.config.schema import TrainerConfig
from spinelab.train.module import warmup_cosine
from spinelab.train.run import fold_dir, load_stage_models, read_training_log, train_stage, trained_folds
from tests.train.boring import BoringStage

REPO = Path(__file__).resolve().parents[2]
CPU = TrainerConfig(accelerator="cpu", devices=1, log_every_n_steps=1)


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, 100, 10, 0.01) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.01) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 10, 0.01) == pytest.approx(0.01)
    values = [warmup_cosine(s, 100, 10, 0.01) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_loss_falls_and_run_folder_is_complete(tmp_path: Path) -> None:
    stage = BoringStage(tmp_path, epochs=4)
    result = train_stage(stage, trainer_cfg=CPU, fold=0, progress=False)
    out = fold_dir(tmp_path, "boring", 0)
    assert result["dir"] == out
    for name in ("checkpoint_best.ckpt", "checkpoint_last.ckpt", "model.pt", "oof.csv", "scores.json",
                 "logs/version_0/metrics.csv"):
        assert (out / name).is_file(), name
    log = read_training_log(out)
    per_epoch = log.dropna(subset=["train/loss_epoch"])["train/loss_epoch"].to_numpy()
    assert len(per_epoch) == 4 and per_epoch[-1] < 0.5 * per_epoch[0]
    oof = pd.read_csv(out / "oof.csv")
    assert len(oof) == 16 and set(oof.columns) == {"id", "pred", "true"}
    scores = json.loads((out / "scores.json").read_text())
    assert scores["mae"] == pytest.approx((oof.pred - oof.true).abs().mean(), rel=1e-5)
    assert trained_folds(tmp_path, "boring") == [0]
    (model,) = load_stage_models(stage)
    assert not model.training and torch.equal(model.weight, torch.load(out / "model.pt")["weight"])


def test_killed_run_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    steps_per_epoch = 64 // 8
    killed = BoringStage(tmp_path, epochs=3, fail_at_step=steps_per_epoch + 3)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_stage(killed, trainer_cfg=CPU, fold=None, progress=False)
    last = fold_dir(tmp_path, "boring", None) / "checkpoint_last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=False)["epoch"] == 0  # only the first epoch finished
    resumed = BoringStage(tmp_path, epochs=3)
    result = train_stage(resumed, trainer_cfg=CPU, fold=None, resume=True, progress=False)
    assert result["scores"]["global_step"] == 3 * steps_per_epoch
    assert result["scores"]["epochs"] == 3
    log = read_training_log(fold_dir(tmp_path, "boring", None))
    assert log["epoch"].min() == 0 and log["epoch"].max() == 2


def test_resuming_past_fewer_epochs_is_one_clear_error(tmp_path: Path) -> None:
    from spinelab.errors import InputError

    with pytest.raises(RuntimeError, match="simulated kill"):
        train_stage(BoringStage(tmp_path, epochs=4, fail_at_step=2 * 8 + 3), trainer_cfg=CPU, fold=None,
                    progress=False)
    with pytest.raises(InputError, match=r"checkpoint_last.ckpt.*finished 2 epochs, more than train.epochs=1"):
        train_stage(BoringStage(tmp_path, epochs=1), trainer_cfg=CPU, fold=None, resume=True, progress=False)
    # as many epochs as finished, or more, resumes
    result = train_stage(BoringStage(tmp_path, epochs=3), trainer_cfg=CPU, fold=None, resume=True, progress=False)
    assert result["scores"]["epochs"] == 3


def test_last_checkpoint_follows_every_epoch_when_the_best_stays(tmp_path: Path) -> None:
    """Lightning refreshes save_last only with a new best; a resume must not go back to the best epoch."""
    steps_per_epoch = 64 // 8
    killed = BoringStage(tmp_path, epochs=4, monitor="val/constant", fail_at_step=2 * steps_per_epoch + 3)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_stage(killed, trainer_cfg=CPU, fold=0, progress=False)
    out = fold_dir(tmp_path, "boring", 0)
    assert torch.load(out / "checkpoint_best.ckpt", weights_only=False)["epoch"] == 0
    assert torch.load(out / "checkpoint_last.ckpt", weights_only=False)["epoch"] == 1  # two epochs finished
    resumed = train_stage(BoringStage(tmp_path, epochs=4, monitor="val/constant"), trainer_cfg=CPU, fold=0,
                          resume=True, progress=False)
    log = read_training_log(out)
    trained = log.dropna(subset=["train/loss_epoch"])
    assert trained["epoch"].tolist() == [0, 1, 2, 3]  # no epoch trained twice
    assert resumed["scores"]["best_checkpoint"] == "checkpoint_best.ckpt"


def test_stage_without_monitor_keeps_its_last_epoch(tmp_path: Path) -> None:
    result = train_stage(BoringStage(tmp_path, epochs=2, monitor=None), trainer_cfg=CPU, fold=0, progress=False)
    out = fold_dir(tmp_path, "boring", 0)
    assert result["scores"]["best_checkpoint"] == "checkpoint_last.ckpt"
    assert not (out / "checkpoint_best.ckpt").exists() and (out / "oof.csv").is_file()
    last = torch.load(out / "checkpoint_last.ckpt", weights_only=False)["state_dict"]["model.weight"]
    assert torch.equal(torch.load(out / "model.pt")["weight"], last)


def test_killed_ema_run_resumes_with_safe_loading(tmp_path: Path) -> None:
    """The EMA callback's state is plain tensors too, so weights_only=True resumes it."""
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_stage(BoringStage(tmp_path, epochs=2, ema=0.5, fail_at_step=8 + 3), trainer_cfg=CPU, fold=0,
                    progress=False)
    result = train_stage(BoringStage(tmp_path, epochs=2, ema=0.5), trainer_cfg=CPU, fold=0, resume=True,
                         progress=False)
    assert result["scores"]["global_step"] == 2 * 8


def test_ema_weights_are_saved(tmp_path: Path) -> None:
    plain = train_stage(BoringStage(tmp_path / "plain", epochs=2), trainer_cfg=CPU, fold=0, progress=False)
    ema = train_stage(BoringStage(tmp_path / "ema", epochs=2, ema=0.5), trainer_cfg=CPU, fold=0, progress=False)
    w_plain = torch.load(plain["dir"] / "model.pt")["weight"]
    w_ema = torch.load(ema["dir"] / "model.pt")["weight"]
    assert not torch.allclose(w_plain, w_ema)  # the averaged weights differ from the last iterate


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    """Two gloo processes train a few steps of the tiny cervical stage 1 through the real CLI path."""
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from pathlib import Path\n"
        "from spinelab.config.schema import TrainerConfig\n"
        "from spinelab.train.run import train_stage\n"
        "from tests.train.boring import BoringStage\n"
        "cfg = TrainerConfig(accelerator='cpu', devices=2, strategy='ddp', log_every_n_steps=1)\n"
        f"r = train_stage(BoringStage(Path({str(tmp_path)!r}), epochs=2), trainer_cfg=cfg, fold=0, progress=False)\n"
        "import torch.distributed as dist\n"
        "print('WORLD', dist.get_world_size() if dist.is_initialized() else 1, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("WORLD 2") == 2  # both ranks ran in one process group of two
    scores = json.loads((fold_dir(tmp_path, "boring", 0) / "scores.json").read_text())
    # 64 samples, batch 8, 2 ranks: 4 steps per epoch per rank
    assert scores["global_step"] == 2 * 4


class _Planted:
    """Unpickling this calls ``open(marker, "w")``: the file appears only if the pickle runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_resume_refuses_a_planted_checkpoint(tmp_path: Path) -> None:
    from spinelab.errors import InputError

    out = fold_dir(tmp_path, "boring", 0)
    out.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "epoch": 0, "payload": _Planted(marker)}, out / "checkpoint_last.ckpt")
    with pytest.raises(InputError, match="checkpoint_last.ckpt: checkpoint refused") as err:
        train_stage(BoringStage(tmp_path, epochs=2), trainer_cfg=CPU, fold=0, resume=True, progress=False)
    assert "\n" not in str(err.value) and not marker.exists()
    assert not (out / "model.pt").exists()
    torch.load(out / "checkpoint_last.ckpt", weights_only=False)  # the plant is real: an unsafe load runs it
    assert marker.exists()


def test_resume_refuses_a_truncated_checkpoint(tmp_path: Path) -> None:
    from spinelab.errors import InputError

    train_stage(BoringStage(tmp_path, epochs=3, fail_at_step=10 ** 6, limit_train_batches=1), trainer_cfg=CPU,
                fold=0, progress=False)
    last = fold_dir(tmp_path, "boring", 0) / "checkpoint_last.ckpt"
    (fold_dir(tmp_path, "boring", 0) / "scores.json").unlink()  # as if killed: not finished
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(InputError, match="checkpoint_last.ckpt: checkpoint cannot be read"):
        train_stage(BoringStage(tmp_path, epochs=3), trainer_cfg=CPU, fold=0, resume=True, progress=False)


@pytest.mark.parametrize(("keep", "left"), [
    ("all", ["checkpoint_best.ckpt", "checkpoint_last.ckpt"]), ("last", ["checkpoint_last.ckpt"]),
    ("best", ["checkpoint_best.ckpt"]), ("model", [])])
def test_keep_leaves_only_the_chosen_checkpoints(tmp_path: Path, keep: str, left: list[str]) -> None:
    result = train_stage(BoringStage(tmp_path, epochs=2, keep=keep), trainer_cfg=CPU, fold=0, progress=False)
    out = result["dir"]
    assert sorted(p.name for p in out.glob("*.ckpt")) == left == result["scores"]["checkpoints_kept"]
    assert (out / "model.pt").is_file() and (out / "oof.csv").is_file()
    assert result["scores"]["best_epoch"] in (0, 1)  # the curves mark it even when no checkpoint is kept


def test_keep_best_without_validation_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    result = train_stage(BoringStage(tmp_path, epochs=1, keep="best"), trainer_cfg=CPU, fold=None, progress=False)
    assert [p.name for p in result["dir"].glob("*.ckpt")] == ["checkpoint_last.ckpt"]


def test_resume_of_a_finished_fold_changes_nothing(tmp_path: Path) -> None:
    first = train_stage(BoringStage(tmp_path, epochs=2, keep="model"), trainer_cfg=CPU, fold=0, progress=False)
    weights = (first["dir"] / "model.pt").read_bytes()
    logs = sorted((first["dir"] / "logs").iterdir())
    again = train_stage(BoringStage(tmp_path, epochs=2, keep="model"), trainer_cfg=CPU, fold=0, resume=True,
                        progress=False)
    assert again["scores"] == first["scores"] and (first["dir"] / "model.pt").read_bytes() == weights
    assert sorted((first["dir"] / "logs").iterdir()) == logs  # no second training part was started


def test_scores_carry_schema_version_and_weight_hash(tmp_path: Path) -> None:
    from spinelab.train.run import model_sha256

    result = train_stage(BoringStage(tmp_path, epochs=1), trainer_cfg=CPU, fold=0, progress=False)
    scores = json.loads((result["dir"] / "scores.json").read_text())
    assert scores["schema_version"] == 1
    assert scores["model_sha256"] == model_sha256(result["dir"] / "model.pt")
