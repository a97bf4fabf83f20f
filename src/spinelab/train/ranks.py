"""The processes of a multi-process (DDP) training: which one writes the run folder, and how the others wait.

Lightning runs one process per device (``--devices N --strategy ddp --num-nodes M``), started by torchrun, by
SLURM's ``srun`` or by Lightning itself. Every process runs ``spinelab train`` from the top, so the data
preparation (cache, folds, labels, ``config.yaml``, ``targets.json``), the between-stage steps (stage-1
localisation of every study) and the CV scores would be done, and written, once per process. Here the
process group is started before any of that (``connect``, through Lightning Fabric, so the Trainer finds it
and reuses it), and each such step runs on global rank 0 alone while the others wait for its result
(``on_rank_zero``): only rank 0 writes the run folder. Lightning itself writes checkpoints and logs from
rank 0 only.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["process_count", "connect", "is_distributed", "is_global_zero", "on_rank_zero", "barrier"]

T = TypeVar("T")
#: How long the other processes wait for rank 0 in one step (a cache build of a large dataset takes hours:
#: build it first with ``spinelab cache build``).
WAIT_FOR_RANK_ZERO = dt.timedelta(hours=12)
#: Strategies whose processes start the whole command again (not by ``multiprocessing`` spawn or fork).
_SCRIPT_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false",
                      "ddp_static_graph")


def process_count(trainer_cfg: Any) -> int:
    """How many training processes this launch has: what torchrun or srun started, else devices x nodes."""
    if os.environ.get("WORLD_SIZE", "").isdigit():  # torchrun, or a process Lightning started
        return int(os.environ["WORLD_SIZE"])
    if os.environ.get("SLURM_NTASKS", "").isdigit() and _slurm_launched():
        return int(os.environ["SLURM_NTASKS"])
    return _devices(trainer_cfg) * int(trainer_cfg.num_nodes)


def _slurm_launched() -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def _devices(trainer_cfg: Any) -> int:
    devices = trainer_cfg.devices
    if isinstance(devices, int):
        return max(devices, 1) if devices != -1 else _visible_gpus(trainer_cfg)
    text = str(devices).strip()
    if text.lstrip("-").isdigit():
        n = int(text)
        return _visible_gpus(trainer_cfg) if n == -1 else max(n, 1)
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return _visible_gpus(trainer_cfg) if text == "auto" else 1


def _visible_gpus(trainer_cfg: Any) -> int:
    if trainer_cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return max(torch.cuda.device_count(), 1)
    return 1


def connect(trainer_cfg: Any) -> bool:
    """Start the process group now when this launch trains with several DDP processes (Lightning's own launcher
    starts the other processes here, not at the first ``fit``); ``True`` when the processes are connected.

    Spawn- and fork-based strategies (``ddp_spawn``, ``ddp_notebook``) and one process are left to Lightning.
    """
    if is_distributed():
        return True
    strategy = str(trainer_cfg.strategy)
    if strategy not in (*_SCRIPT_STRATEGIES, "auto") or process_count(trainer_cfg) <= 1:
        return False
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    # The others wait in a collective while rank 0 prepares the data or localises every study: allow hours.
    Fabric(accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices, num_nodes=trainer_cfg.num_nodes,
           strategy=DDPStrategy(timeout=WAIT_FOR_RANK_ZERO)).launch()
    return is_distributed()


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_global_zero() -> bool:
    """Whether this is the process that writes (global rank 0); from the launcher's variables before the group
    exists (torchrun ``RANK``, srun ``SLURM_PROCID``, Lightning's ``NODE_RANK`` and ``LOCAL_RANK``)."""
    if is_distributed():
        return dist.get_rank() == 0
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if "SLURM_PROCID" in os.environ and _slurm_launched():
        return int(os.environ["SLURM_PROCID"]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def on_rank_zero(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` on global rank 0; every other process waits and gets its (pickled) result,
    or a ``SpinelabError`` with rank 0's message when it raised there. In one process: just the call."""
    if not is_distributed():
        return function(*args, **kwargs)
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", function(*args, **kwargs))
        except Exception as err:
            box[0] = ("error", f"{type(err).__name__}: {err}")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        from spinelab.errors import SpinelabError

        raise SpinelabError(f"rank 0 stopped: {value}")
    return value


def disconnect() -> None:
    """Wait for every process, then end the process group. A group left to the interpreter's exit can abort
    it ("terminate called without an active exception") while gloo's threads are torn down, seen when a
    ``--resume`` run had nothing left to train."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (nothing to wait for in one process)."""
    if is_distributed():
        dist.barrier()
