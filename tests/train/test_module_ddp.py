"""Validation metrics under two-process gloo DDP on CPU equal one process's ``Stage.evaluate`` exactly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tests.train.ddp_worker import VAL_PROB, VAL_TRUE, evaluate_rows

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _single_process() -> dict[str, float]:
    return evaluate_rows(pd.DataFrame({"id": range(len(VAL_PROB)), "prob": VAL_PROB, "true": VAL_TRUE}))


def test_the_fixture_separates_right_from_wrong() -> None:
    """An average of per-rank metrics, or rows counting the padding twice, give other numbers."""
    full = _single_process()
    shards = [evaluate_rows(pd.DataFrame({"prob": VAL_PROB[i], "true": VAL_TRUE[i]}))
              for i in ([0, 2, 4, 6], [1, 3, 5, 0])]
    assert np.mean([s["auc"] for s in shards]) != full["auc"]
    padded = evaluate_rows(pd.DataFrame({"prob": VAL_PROB[[*range(7), 0]], "true": VAL_TRUE[[*range(7), 0]]}))
    assert padded["auc"] != full["auc"] and padded["logloss"] != full["logloss"]


def test_ddp_validation_metrics_equal_single_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "OMP_NUM_THREADS": "1",
           "PL_DISABLE_FORK": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "tests.train.ddp_worker", str(tmp_path)]
    # its own process group: a hung run is killed with its workers
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    expected = _single_process()
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["world_size"] == 2
        logged = result["logged"]
        # Lightning keeps logged values as float32 tensors
        assert logged["val/auc"] == float(np.float32(expected["auc"]))
        assert logged["val/logloss"] == float(np.float32(expected["logloss"]))
        assert logged["val/n_rows"] == 7.0
        assert result["val_metrics"] == expected  # the Python floats: exactly


def test_one_sample_of_a_collated_batch_keeps_the_batch_axis() -> None:
    import torch

    from spinelab.train.module import _take

    batch = {"x": torch.arange(6).reshape(3, 2), "uid": ["a", "b", "c"], "meta": {"shape": torch.ones(3, 3)},
             "scalar": torch.tensor(7.0), "other": 5}
    one = _take(batch, 1, 3)
    assert one["x"].tolist() == [[2, 3]] and one["uid"] == ["b"] and one["meta"]["shape"].shape == (1, 3)
    assert one["scalar"].item() == 7.0 and one["other"] == 5  # not per sample: left as it is


def test_the_batches_indices_come_from_the_loaders_batch_sampler() -> None:
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from spinelab.train.module import _batch_indices
    from tests.train.ddp_worker import ValSet

    sampler = DistributedSampler(ValSet(), num_replicas=2, rank=1, shuffle=False)
    assert _batch_indices(DataLoader(ValSet(), batch_size=2, sampler=sampler)) == [[1, 3], [5, 0]]  # 0: padding
    assert _batch_indices([DataLoader(ValSet(), batch_size=4)]) == [[0, 1, 2, 3], [4, 5, 6]]
