"""Flip test-time augmentation, once for every stage: each model on the input and on its left-right mirror.

What a mirror swaps back differs per output (a box's x edges, the left and right channels of a heatmap, the
left and right items and labels of a grader), so the caller passes ``unmirror``; ``mirror`` defaults to
flipping the last (column) axis of a tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["flip_outputs", "swap_channels"]

X = TypeVar("X")
Y = TypeVar("Y")


def _flip_columns(x: Any) -> Any:
    return x.flip(-1)


def flip_outputs(models: Sequence[torch.nn.Module], x: X, forward: Callable[[torch.nn.Module, X], Y], *,
                 tta: bool, mirror: Callable[[X], X] = _flip_columns,
                 unmirror: Callable[[Y], Y] | None = None) -> list[Y]:
    """``forward(model, x)`` for every model, then (with ``tta``) ``unmirror(forward(model, mirror(x)))``, in
    the order model 1, model 1 mirrored, model 2, ...; the caller averages them.

    Args:
        forward: one model on one input (the mirrored input too), returning what is averaged.
        mirror: the left-right mirror of an input (default: flip the last axis).
        unmirror: maps a mirrored input's output back to the unmirrored frame (default: unchanged, for
            outputs that a mirror does not change, e.g. fracture probabilities).
    """
    mirrored = mirror(x) if tta else None
    outs: list[Y] = []
    for model in models:
        outs.append(forward(model, x))
        if mirrored is not None:
            out = forward(model, mirrored)
            outs.append(unmirror(out) if unmirror is not None else out)
    return outs


def swap_channels(t: torch.Tensor, pairs: Sequence[tuple[int, int]], *, dim: int = 1) -> torch.Tensor:
    """``t`` with the channels of each ``(a, b)`` pair along ``dim`` swapped (left and right)."""
    order = list(range(t.shape[dim]))
    for a, b in pairs:
        order[a], order[b] = b, a
    return t.index_select(dim, torch.tensor(order, device=t.device))
