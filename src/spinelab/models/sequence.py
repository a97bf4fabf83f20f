"""The 3rd-place RSNA 2022 networks (route ``cervical/sequence``): a windowed slice model and a study head.

``SliceWindowNet``: a timm CNN per 2.5D slice, a bidirectional GRU over a window of consecutive slices, and per
slice 7 vertebra-ratio and 7 fracture logits. ``embed`` gives the CNN's per-slice features alone: the study
stage freezes the CNN and trains ``StudyHead`` on those features, cached once per study.

``StudyHead``: per-slice embeddings of a whole study ``(B, T, F)`` with a mask of the valid steps -> a projection,
a bidirectional GRU over the valid steps (packed, so padding never enters the backward direction), then per target
its own attention pooling concatenated with the max-pooling of the valid steps (the seed's concat(max, attention))
-> 7 vertebra logits and ``patient_overall``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from spinelab.models.backbones import create_backbone
from spinelab.models.heads import SliceSequenceEncoder

__all__ = ["SliceWindowNet", "StudyHead"]


class SliceWindowNet(nn.Module):
    """``(B, T, C, H, W)`` windows -> ``ratio`` and ``fracture`` logits ``(B, T, 7)``.

    ``embed(x)`` is the CNN alone, ``(B, T, C, H, W) -> (B, T, F)``; ``forward_head(feats)`` runs the GRU and the
    heads on such features, so a whole study's CNN pass can be windowed afterwards at inference.
    """

    def __init__(self, *, backbone: str = "resnet18", in_chans: int = 3, hidden: int = 128,
                 pretrained_path: str | Path | None = None, drop_rate: float = 0.1, n_vertebrae: int = 7,
                 prior: float = 0.05):
        super().__init__()
        cnn = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path)
        self.encoder = SliceSequenceEncoder(cnn, hidden=hidden, pos_dim=0, drop_rate=drop_rate)
        self.n_vertebrae = n_vertebrae
        self.ratio_head = nn.Linear(self.encoder.out_features, n_vertebrae)
        self.fracture_head = nn.Linear(self.encoder.out_features, n_vertebrae)
        # rare positives: start at the prior rate rather than spending the first epochs learning it
        nn.init.constant_(self.fracture_head.bias, float(torch.logit(torch.tensor(prior))))

    @property
    def num_features(self) -> int:
        """Size of one slice's embedding."""
        return int(self.encoder.backbone.num_features)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice CNN features ``(B, T, F)`` (what the study stage caches)."""
        return self.encoder.image_features(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        out, _ = self.encoder.gru(self.encoder.dropout(feats))
        return {"ratio": self.ratio_head(out), "fracture": self.fracture_head(out)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.embed(x))


class StudyHead(nn.Module):
    """``(B, T, F)`` embeddings + ``(B, T)`` bool mask -> ``vertebra`` ``(B, 7)`` and ``overall`` ``(B,)`` logits."""

    def __init__(self, *, in_features: int = 512, hidden: int = 128, drop_rate: float = 0.1,
                 n_vertebrae: int = 7, prior: float = 0.1):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_features), nn.Dropout(drop_rate), nn.Linear(in_features, hidden),
                                  nn.GELU())
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        n = n_vertebrae + 1
        self.n_vertebrae = n_vertebrae
        self.score = nn.Sequential(nn.Linear(2 * hidden, 64), nn.Tanh(), nn.Linear(64, n))
        self.weight = nn.Parameter(torch.randn(n, 4 * hidden) * (4 * hidden) ** -0.5)
        self.bias = nn.Parameter(torch.full((n,), float(torch.logit(torch.tensor(prior)))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step projection ``(B, T, hidden)`` of the embeddings."""
        return self.proj(x)

    def forward_head(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, t = h.shape[:2]
        mask = torch.ones(b, t, dtype=torch.bool, device=h.device) if mask is None else mask.bool()
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        scores = self.score(out).masked_fill(~mask[..., None], torch.finfo(out.dtype).min)
        attn = torch.softmax(scores, dim=1)  # (B, T, 8): one pooling per target
        pooled = torch.einsum("btn,btf->bnf", attn, out)
        top = out.masked_fill(~mask[..., None], torch.finfo(out.dtype).min).amax(dim=1)  # (B, 2H)
        pooled = torch.cat([pooled, top[:, None].expand_as(pooled)], dim=-1)
        logits = (pooled * self.weight).sum(-1) + self.bias
        return {"vertebra": logits[:, :self.n_vertebrae], "overall": logits[:, self.n_vertebrae],
                "attention": attn}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x), mask)
