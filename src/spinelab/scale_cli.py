"""The command-line options of scale-out (DDP nodes, the Ray engine), shared by ``train``, ``cache build`` and
``predict``; kept here so ``cli.py`` stays one line per option."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

__all__ = ["Engine", "EngineOption", "RayAddressOption", "NumNodesOption"]


class Engine(StrEnum):
    """Where per-study work runs: this machine's processes, or a Ray cluster (``spinelab[ray]``)."""

    local = "local"
    ray = "ray"


EngineOption = Annotated[Engine, typer.Option(
    help="local: processes on this machine; ray: Ray tasks on the cluster at --ray-address (spinelab[ray]).")]
RayAddressOption = Annotated[str | None, typer.Option(
    help="Ray cluster to join (auto, HOST:6379, ray://HOST:10001) [default: the running instance, else a new "
         "local one]")]
NumNodesOption = Annotated[int | None, typer.Option(
    min=1, help="Machines for Lightning DDP (= trainer.num_nodes), each with --devices processes.")]
