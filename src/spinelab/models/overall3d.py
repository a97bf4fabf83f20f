"""The 7th place's post-processing classifier: a small 3D CNN on the fracture probability and the vertebra labels.

``OverallNet3d``: ``len(channels)`` stages of two 3x3x3 convolutions with instance norm and LeakyReLU, each but
the first halving the grid by a strided convolution (the seed: 16/32/64/128), global average pooling
(``forward_features``) and linear heads (``forward_head``): ``overall`` ``(B,)`` patient logits and, with
``vertebrae``, ``vertebra`` ``(B, 7)`` logits. Any input size works (the pooling is global).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spinelab.models.registry import register_model

__all__ = ["OverallNet3d", "fracture_overall3d", "test_fracture_overall3d"]


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.01, inplace=True))


class OverallNet3d(nn.Module):
    """Patient (and optionally per-vertebra) fracture logits from ``(B, in_chans, D, H, W)``.

    Args:
        in_chans: input channels (2: fracture probability, vertebra labels / 7).
        channels: features per stage.
        vertebrae: add the ``vertebra`` head (7 logits).
        dropout: before the heads.
    """

    def __init__(self, in_chans: int = 2, channels: Sequence[int] = (16, 32, 64, 128), vertebrae: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        chans = [int(c) for c in channels]
        stages, c_in = [], in_chans
        for i, c in enumerate(chans):
            stages.append(_block(c_in, c, 1 if i == 0 else 2))
            c_in = c
        self.body = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.drop = nn.Dropout(dropout)
        self.overall = nn.Linear(c_in, 1)
        self.vertebra = nn.Linear(c_in, 7) if vertebrae else None
        self.num_features = c_in

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> pooled features ``(B, channels[-1])``."""
        return self.pool(self.body(x)).flatten(1)

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.drop(feats)
        out = {"overall": self.overall(f)[:, 0]}
        if self.vertebra is not None:
            out["vertebra"] = self.vertebra(f)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


@register_model(takes=OverallNet3d)
def fracture_overall3d(**kwargs: Any) -> nn.Module:
    """The seed's post-processing classifier (16/32/64/128 features, instance norm, global pooling)."""
    return OverallNet3d(**kwargs)


@register_model(takes=OverallNet3d)
def test_fracture_overall3d(**kwargs: Any) -> nn.Module:
    """A tiny variant for CPU tests (4/8 features)."""
    return OverallNet3d(**{"channels": (4, 8), **kwargs})
