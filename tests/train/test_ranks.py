"""Multi-process training: which process writes, how many there are, and a real two-process DDP run of
``spinelab train`` under torchrun on CPU (gloo) whose run folder rank 0 alone writes and which resumes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spinelab.config.schema import TrainerConfig
from spinelab.train import ranks

REPO = Path(__file__).resolve().parents[2]
_LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_NAME")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in _LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_process_count_follows_the_launcher_then_the_config(clean_env: pytest.MonkeyPatch) -> None:
    cfg = TrainerConfig(accelerator="cpu", devices="2", strategy="ddp", num_nodes=3)
    assert ranks.process_count(cfg) == 6
    assert ranks.process_count(TrainerConfig(accelerator="cpu", devices="0,1")) == 2
    assert ranks.process_count(TrainerConfig(accelerator="cpu")) == 1  # auto on CPU: one process
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_JOB_NAME", "train")
    assert ranks.process_count(cfg) == 8
    clean_env.setenv("WORLD_SIZE", "4")  # torchrun inside an allocation: torchrun's count
    assert ranks.process_count(cfg) == 4


@pytest.mark.parametrize(("env", "zero"), [({}, True), ({"RANK": "0"}, True), ({"RANK": "3"}, False),
                                           ({"LOCAL_RANK": "1"}, False), ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),
                                           ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_JOB_NAME": "t"}, False)])
def test_global_zero_from_the_launchers_variables(clean_env: pytest.MonkeyPatch, env: dict, zero: bool) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert ranks.is_global_zero() is zero


def test_one_process_runs_everything_itself(clean_env: pytest.MonkeyPatch) -> None:
    assert not ranks.connect(TrainerConfig(accelerator="cpu", devices=1, strategy="ddp"))
    assert not ranks.connect(TrainerConfig(accelerator="cpu", devices=2, strategy="ddp_spawn"))  # Lightning's
    assert ranks.on_rank_zero(lambda a, b=0: a + b, 1, b=2) == 3
    ranks.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "OMP_NUM_THREADS": "1",
           "COLUMNS": "300"}
    for key in _LAUNCH_VARS:
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "spinelab", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a hung run is killed with its workers
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_spinelab_train_under_torchrun_writes_one_run_folder_and_resumes(tmp_path: Path) -> None:
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    data = generate_cervical_dataset(tmp_path / "data", studies=6, test_studies=1, size=64, seed=3, workers=1,
                                     seg_fraction=0.6, slices=(28, 36), progress=False)
    run = tmp_path / "run"
    args = ["train", "cervical", "-c", "tiny", "-o", str(run), "--fold", "0", "--devices", "2", "--strategy", "ddp",
            "--num-nodes", "1", f"data.dataset_dir={data}", "data.folds=2", "stage1.train.epochs=1",
            "stage2.train.epochs=1", "trainer.accelerator=cpu"]
    first = _torchrun(args, tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.stdout.count(f"run folder: {run}") == 2  # both processes finish the command
    for name in ("config.yaml", "folds.csv", "targets.json", "prior.json", "provenance.json"):
        assert (run / name).is_file(), name
    stages = sorted(p.parent.parent.name for p in run.glob("*/fold_0/model.pt"))
    assert len(stages) >= 2
    for fold in run.glob("*/fold_0"):
        assert (fold / "scores.json").is_file() and (fold / "oof.csv").is_file()
        # one writer of the logs: one CSV log (with the gathered validation metrics) and one TensorBoard file
        (csv_log,) = (fold / "logs").rglob("metrics.csv")
        assert len(list((fold / "logs").rglob("events.out.tfevents.*"))) == 1
        assert any(c.startswith("val/") and c != "val/loss" for c in csv_log.read_text().splitlines()[0].split(","))
    leftovers = [p for p in run.rglob("*") if p.name.startswith(".") and p.is_file()]
    assert leftovers == []  # no temporaries of a writer that raced another
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("*/fold_0/*") if p.is_file()}

    again = _torchrun([*args, "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "already trained" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the finished folds are left as they are


def test_other_ranks_wait_for_rank_zero_and_never_run_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    sent: list[object] = []

    def broadcast(box: list, src: int) -> None:  # what rank 0 sends
        box[0] = sent[0]

    monkeypatch.setattr(ranks, "is_distributed", lambda: True)
    monkeypatch.setattr(ranks.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(ranks.dist, "broadcast_object_list", broadcast)
    sent[:] = [("ok", {"cfg": 1})]
    assert ranks.on_rank_zero(lambda: calls.append("ran")) == {"cfg": 1}
    assert calls == []  # the step (a write) ran on rank 0 only
    sent[:] = [("error", "InputError: /data: missing")]
    with pytest.raises(Exception, match="rank 0 stopped: InputError: /data: missing"):
        ranks.on_rank_zero(lambda: calls.append("ran"))
    assert calls == []
