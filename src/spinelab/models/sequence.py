"""The 3rd-place RSNA 2022 networks (route ``cervical/sequence``): a windowed slice model and a study head.

``SliceWindowNet``: a timm CNN per 2.5D slice, a bidirectional GRU over a window of consecutive slices, and per
slice 7 vertebra-ratio and 7 fracture logits. ``embed`` gives the CNN's per-slice features alone: the study
stage freezes the CNN and trains ``StudyHead`` on those features, cached once per study.

``StudyHead``: per-slice embeddings of a whole study ``(B, T, F)`` with a mask of the valid steps -> a projection,
a bidirectional GRU over the valid steps (packed, so padding never enters the backward direction), then per target
its own attention pooling concatenated with the max-pooling of the valid steps (the seed's concat(max, attention))
-> 7 vertebra logits and ``patient_overall``. With ``curve_features`` (the slice model's own per-slice fracture and
ratio logits, appended to each step's embedding) the curves also enter the GRU, and each target's logit starts from
the slice model's evidence: a learned scale of the highest fracture logit of its vertebra over the valid steps (of
any vertebra for the patient), plus the attention branch, which starts at zero. Trained on ~80 study labels, a head
that must re-learn fractures from the embeddings alone ranked vertebrae worse than the slice model it sits on
(on the benchmark, one frozen slice model of vertebra AUC 0.919: 0.798 with embeddings alone, 0.937 with the
curves); starting from that ranking, it only has to calibrate and correct it.
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
    """``(B, T, F [+ C])`` steps + ``(B, T)`` bool mask -> ``vertebra`` ``(B, 7)`` and ``overall`` ``(B,)`` logits.

    Args:
        in_features: size of one slice's CNN embedding (the first ``in_features`` values of a step).
        curve_features: slice-model logits after the embedding in each step (0: none; 14: the 7 fracture logits,
            then the 7 ratio logits, as ``inputs.head_steps`` writes them).
    """

    def __init__(self, *, in_features: int = 512, hidden: int = 128, drop_rate: float = 0.1,
                 n_vertebrae: int = 7, prior: float = 0.1, curve_features: int = 0):
        super().__init__()
        if curve_features and curve_features < n_vertebrae:
            raise ValueError(f"curve_features: the {n_vertebrae} fracture logits at least, got {curve_features}")
        self.in_features, self.curve_features = in_features, curve_features
        self.proj = nn.Sequential(nn.LayerNorm(in_features), nn.Dropout(drop_rate), nn.Linear(in_features, hidden),
                                  nn.GELU())
        self.curve_proj = nn.Sequential(nn.Linear(curve_features, hidden), nn.GELU()) if curve_features else None
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        n = n_vertebrae + 1
        self.n_vertebrae = n_vertebrae
        self.score = nn.Sequential(nn.Linear(2 * hidden, 64), nn.Tanh(), nn.Linear(64, n))
        if curve_features:
            # the slice model's evidence carries the logit at first; the attention branch learns corrections
            self.weight = nn.Parameter(torch.zeros(n, 4 * hidden))
            self.evidence_scale = nn.Parameter(torch.ones(n))
            self.bias = nn.Parameter(torch.zeros(n))
        else:
            self.weight = nn.Parameter(torch.randn(n, 4 * hidden) * (4 * hidden) ** -0.5)
            self.bias = nn.Parameter(torch.full((n,), float(torch.logit(torch.tensor(prior)))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step projection ``(B, T, hidden)`` of the embeddings (and of the curves, when the head has them)."""
        h = self.proj(x[..., :self.in_features])
        if self.curve_proj is not None:
            h = h + self.curve_proj(x[..., self.in_features:self.in_features + self.curve_features])
        return h

    def evidence(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, 8)``: each vertebra's highest fracture logit over the valid steps, then the highest of those."""
        frac = x[..., self.in_features:self.in_features + self.n_vertebrae].float()
        top = frac.masked_fill(~mask[..., None], torch.finfo(frac.dtype).min).amax(dim=1)
        return torch.cat([top, top.amax(dim=1, keepdim=True)], dim=1)

    def forward_head(self, h: torch.Tensor, mask: torch.Tensor | None = None,
                     evidence: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits from the projected steps; ``evidence`` ``(B, 8)`` is added, scaled per target (heads with curves)."""
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
        if evidence is not None:
            logits = logits + self.evidence_scale * evidence.to(logits.dtype)
        return {"vertebra": logits[:, :self.n_vertebrae], "overall": logits[:, self.n_vertebrae],
                "attention": attn}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, t = x.shape[:2]
        mask = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        evidence = self.evidence(x, mask) if self.curve_features else None
        return self.forward_head(self.forward_features(x), mask, evidence)
