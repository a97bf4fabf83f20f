"""The 1st-place RSNA 2022 classifiers (Qishen Ha), on per-vertebra crops with a mask channel.

Both run a 2D timm CNN on every crop (``span`` CT slices plus the vertebra's mask, 6 channels) and a
bidirectional GRU over the 15 crops of a vertebra (``heads.SliceSequenceEncoder``):

* type 1 (``VertebraSequenceNet``, stage ``vertebra``): one vertebra per sample; per-slice logits and a
  vertebra logit (attention pooling over the slices);
* type 2 (``PatientSequenceNet``, stage ``patient``): all seven vertebrae of a study per sample; two sequence
  heads, one giving each vertebra's logit, the other a second GRU over all 7 x 15 steps giving
  ``patient_overall``.

Both expose ``forward_features`` / ``forward_head`` (timm's contract) and return dicts of logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spinelab.models.backbones import create_backbone
from spinelab.models.heads import AttentionPool, SliceSequenceEncoder

__all__ = ["VertebraSequenceNet", "PatientSequenceNet"]


def _prior_bias(layer: nn.Linear, prior: float) -> None:
    """Start a rare-positive head at the prior rate (from 0.5 the first epochs only learn the base rate)."""
    nn.init.constant_(layer.bias, float(torch.logit(torch.tensor(prior))))


class VertebraSequenceNet(nn.Module):
    """Type 1: one vertebra's crop sequence -> per-slice logits and a vertebra logit.

    Input ``x`` ``(B, T, C, H, W)`` (T crops of C channels, the last one the mask). Output dict: ``slice``
    logits ``(B, T)``, ``vertebra`` logit ``(B,)``.

    Args:
        backbone: timm architecture of the per-crop CNN.
        in_chans: channels per crop (``span + 1``).
        hidden: GRU hidden size per direction.
        pretrained_path: local ImageNet weights for ``backbone`` (its stem is adapted to ``in_chans``).
        drop_rate: dropout on the per-crop features.
        prior: starting probability of both heads.
    """

    def __init__(self, *, backbone: str = "resnet18", in_chans: int = 6, hidden: int = 128,
                 pretrained_path: str | Path | None = None, drop_rate: float = 0.1, prior: float = 0.1):
        super().__init__()
        cnn = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path)
        self.encoder = SliceSequenceEncoder(cnn, hidden=hidden, drop_rate=drop_rate)
        f = self.encoder.out_features
        self.pool = AttentionPool(f)
        self.slice_head = nn.Linear(f, 1)
        self.vertebra_head = nn.Linear(f, 1)
        _prior_bias(self.slice_head, prior)
        _prior_bias(self.vertebra_head, prior)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C, H, W)`` -> per-slice sequence features ``(B, T, F)``."""
        return self.encoder(x)

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"slice": self.slice_head(feats).squeeze(-1),
                "vertebra": self.vertebra_head(self.pool(feats)).squeeze(-1)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


class PatientSequenceNet(nn.Module):
    """Type 2: a study's seven crop sequences -> per-vertebra logits and a ``patient_overall`` logit.

    Input ``x`` ``(B, V, T, C, H, W)``; ``mask`` ``(B, V)`` marks the vertebrae the segmentation found (the
    others stay out of the patient head's pooling). The vertebra head pools each vertebra's T steps and adds a
    learned vertebra-identity embedding; the patient head runs a second bidirectional GRU over all V x T steps
    in head-to-feet order. Output dict: ``vertebra`` logits ``(B, V)``, ``overall`` logit ``(B,)``.

    Args: as ``VertebraSequenceNet``, plus ``n_vertebrae`` (7).
    """

    def __init__(self, *, backbone: str = "resnet18", in_chans: int = 6, hidden: int = 128,
                 pretrained_path: str | Path | None = None, drop_rate: float = 0.1, prior: float = 0.1,
                 n_vertebrae: int = 7):
        super().__init__()
        cnn = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path)
        self.encoder = SliceSequenceEncoder(cnn, hidden=hidden, drop_rate=drop_rate)
        f = self.encoder.out_features
        self.pool = AttentionPool(f)
        self.vertebra_embedding = nn.Parameter(torch.zeros(n_vertebrae, f))
        self.vertebra_head = nn.Linear(f, 1)
        self.study_gru = nn.GRU(f, hidden, batch_first=True, bidirectional=True)
        self.overall_pool = AttentionPool(2 * hidden)
        self.overall_head = nn.Linear(2 * hidden, 1)
        _prior_bias(self.vertebra_head, prior)
        _prior_bias(self.overall_head, min(0.5, 3 * prior))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, V, T, C, H, W)`` -> per-step features ``(B, V, T, F)``."""
        b, v = x.shape[:2]
        seq = self.encoder(x.flatten(0, 1))
        return seq.view(b, v, *seq.shape[1:])

    def forward_head(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, v, t = feats.shape[:3]
        emb = self.pool(feats.flatten(0, 1)).view(b, v, -1) + self.vertebra_embedding[:v]
        vert = self.vertebra_head(emb).squeeze(-1)
        study, _ = self.study_gru(feats.flatten(1, 2))  # (B, V*T, 2h), head to feet
        steps = None if mask is None else mask.bool()[:, :, None].expand(b, v, t).flatten(1)
        if steps is not None:
            steps = steps | ~steps.any(-1, keepdim=True)  # nothing found: pool over everything
        overall = self.overall_head(self.overall_pool(study, steps)).squeeze(-1)
        return {"vertebra": vert, "overall": overall}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x), mask)
