"""Sequence and pooling heads shared by both pipelines.

``SliceSequenceEncoder`` runs a 2D backbone on every image of a sequence and a bidirectional GRU over
the sequence with a slice-position embedding (the 3rd-place RSNA 2022 design). ``AttentionPool`` reduces
a sequence to one vector with learned weights (the 2nd-place design).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SliceSequenceEncoder", "AttentionPool", "sinusoidal_embedding"]


def sinusoidal_embedding(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Embed positions in [0, 1] as ``(…, dim)`` sines and cosines (slice position within the study)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=pos.device, dtype=torch.float32) * (-math.log(100.0) / half))
    angles = pos.float().unsqueeze(-1) * freqs * math.pi * 8
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class SliceSequenceEncoder(nn.Module):
    """``(B, T, C, H, W)`` images + ``(B, T)`` positions -> ``(B, T, 2*hidden)`` context features.

    Args:
        backbone: a module mapping ``(N, C, H, W)`` to ``(N, F)`` with attribute ``num_features``.
        hidden: GRU hidden size per direction.
        pos_dim: size of the slice-position embedding (0 disables it).
        drop_rate: dropout on the per-image features.
    """

    def __init__(self, backbone: nn.Module, *, hidden: int = 128, pos_dim: int = 16, drop_rate: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.pos_dim = pos_dim
        self.dropout = nn.Dropout(drop_rate)
        self.gru = nn.GRU(backbone.num_features + pos_dim, hidden, batch_first=True, bidirectional=True)
        self.out_features = 2 * hidden

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image backbone features, ``(B, T, C, H, W) -> (B, T, F)``."""
        b, t = x.shape[:2]
        feats = self.backbone(x.flatten(0, 1))
        return feats.view(b, t, -1)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.dropout(self.image_features(x))
        if self.pos_dim:
            if pos is None:
                pos = torch.linspace(0, 1, x.shape[1], device=x.device).expand(x.shape[0], -1)
            feats = torch.cat([feats, sinusoidal_embedding(pos, self.pos_dim).to(feats.dtype)], dim=-1)
        out, _ = self.gru(feats)
        return out


class AttentionPool(nn.Module):
    """``(B, T, F)`` -> ``(B, F)``: softmax-weighted mean with a small MLP scoring each step."""

    def __init__(self, features: int, hidden: int = 64):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.score(x).squeeze(-1)
        if mask is not None:
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=-1)
        return (weights.unsqueeze(-1) * x).sum(dim=1)
