"""The two RSNA 2022 architectures: a slice localiser and a per-vertebra fracture classifier.

Both expose ``forward_features`` and ``forward_head`` (timm's contract) and return dicts of logits so the
losses and the predictor can name what they use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spinelab.models.backbones import create_backbone
from spinelab.models.heads import AttentionPool, SliceSequenceEncoder

__all__ = ["SliceLocalizer", "FractureClassifier", "FrameClassifier"]


class SliceLocalizer(nn.Module):
    """2.5D CNN + BiGRU over slices -> per slice: C1-C7 ratios, C1-C7 union box, box presence.

    Input ``x`` ``(B, T, C, H, W)`` (T slices, each a C-slice stack), ``pos`` ``(B, T)`` slice position in
    [0, 1] along the study. Output dict: ``ratio`` logits ``(B, T, 7)``, ``box`` ``(B, T, 4)`` as
    normalised (x0, y0, x1, y1) after a sigmoid, ``has_box`` logits ``(B, T)``.
    """

    def __init__(self, *, backbone: str = "resnet18", in_chans: int = 3, hidden: int = 128,
                 pretrained_path: str | Path | None = None, drop_rate: float = 0.1, n_vertebrae: int = 7):
        super().__init__()
        cnn = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path)
        self.encoder = SliceSequenceEncoder(cnn, hidden=hidden, drop_rate=drop_rate)
        self.n_vertebrae = n_vertebrae
        self.head = nn.Linear(self.encoder.out_features, n_vertebrae + 5)

    def forward_features(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(x, pos)

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(feats)
        n = self.n_vertebrae
        return {"ratio": out[..., :n], "box": torch.sigmoid(out[..., n:n + 4]), "has_box": out[..., n + 4]}

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x, pos))


class FractureClassifier(nn.Module):
    """Per-vertebra slice sequences -> vertebra fracture logits, per-step logits and a patient-level logit.

    Input ``x`` ``(B, V, S, C, H, W)``: V vertebrae (7), S steps of C-slice stacks each; ``mask`` ``(B, V)``
    marks vertebrae that were found. Each vertebra goes through CNN -> BiGRU; a per-step head scores every
    step (trained on slice-level fracture targets when there are boxes) and attention pooling gives the
    vertebra embedding, to which a learned vertebra-identity embedding is added. ``overall="learned"``
    pools the seven embeddings with attention for ``patient_overall``, ``"noisy_or"`` combines the
    vertebra probabilities instead. Output dict: ``vertebra`` logits ``(B, V)``, ``step`` logits
    ``(B, V, S)``, ``overall`` logit ``(B,)``.
    """

    def __init__(self, *, backbone: str = "resnet18", in_chans: int = 3, hidden: int = 128,
                 pretrained_path: str | Path | None = None, drop_rate: float = 0.1, n_vertebrae: int = 7,
                 overall: str = "learned", prior: float = 0.1):
        super().__init__()
        if overall not in ("learned", "noisy_or"):
            raise ValueError(f"overall must be 'learned' or 'noisy_or', got {overall!r}")
        cnn = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path)
        self.encoder = SliceSequenceEncoder(cnn, hidden=hidden, drop_rate=drop_rate)
        f = self.encoder.out_features
        self.pool = AttentionPool(f)
        self.vertebra_embedding = nn.Parameter(torch.zeros(n_vertebrae, f))
        self.vertebra_head = nn.Linear(f, 1)
        self.step_head = nn.Linear(f, 1)
        # Start the rare-positive heads at the prior rate: from a 0.5 start the first epochs are spent
        # only learning the base rate, which with a few hundred training studies is most of the training.
        bias = float(torch.logit(torch.tensor(prior)))
        nn.init.constant_(self.vertebra_head.bias, bias)
        nn.init.constant_(self.step_head.bias, bias)
        # One logit offset per vertebra level: fracture rates differ by level (C2 and C7 most often), and a
        # shared head bias leaves the level embedding to learn that, slowly. Zero until ``set_prior``.
        self.vertebra_bias = nn.Parameter(torch.zeros(n_vertebrae))
        self.overall_mode = overall
        self.overall_pool = AttentionPool(f)
        self.overall_head = nn.Linear(f, 1)

    def set_prior(self, rates: Sequence[float]) -> None:
        """Start the outputs at the training rates: ``rates`` is C1..C7 then patient_overall (clipped to
        1-99 %), so the first steps learn what tells fractures apart instead of the per-level base rate."""
        logits = torch.logit(torch.tensor([float(r) for r in rates]).clamp(0.01, 0.99))
        n = self.vertebra_bias.numel()
        if logits.numel() != n + 1:
            raise ValueError(f"set_prior needs {n + 1} rates (C1..C{n}, patient_overall), got {logits.numel()}")
        with torch.no_grad():
            self.vertebra_head.bias.zero_()
            self.vertebra_bias.copy_(logits[:n])
            self.overall_head.bias.fill_(float(logits[n]))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module.load_state_dict``; weights from spinelab 0.1 have no ``step_head``, which only
        training uses, so it keeps its initial values instead of failing the load; weights from before the
        per-level offsets have no ``vertebra_bias``, which is then zero (their outputs are unchanged)."""
        if "step_head.weight" not in state_dict:
            state_dict = {**state_dict, **{f"step_head.{k}": v for k, v in self.step_head.state_dict().items()}}
        if "vertebra_bias" not in state_dict:
            state_dict = {**state_dict, "vertebra_bias": torch.zeros_like(self.vertebra_bias)}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward_features(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, V, S, C, H, W)`` -> per-step sequence features ``(B, V, S, F)``."""
        b, v = x.shape[:2]
        seq = self.encoder(x.flatten(0, 1), None if pos is None else pos.flatten(0, 1))
        return seq.view(b, v, *seq.shape[1:])

    def forward_head(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, v = feats.shape[:2]
        step = self.step_head(feats).squeeze(-1)
        emb = self.pool(feats.flatten(0, 1)).view(b, v, -1) + self.vertebra_embedding[:v]
        vert = self.vertebra_head(emb).squeeze(-1) + self.vertebra_bias[:v]
        if self.overall_mode == "noisy_or":
            # log(1 - prod(1 - p)) as a logit: sum of log(1-p) is the log probability of "no fracture".
            log_none = torch.nn.functional.logsigmoid(-vert)
            if mask is not None:
                log_none = log_none * mask
            log_none = log_none.sum(-1).clamp(max=-1e-6)
            overall = torch.log(-torch.expm1(log_none)) - log_none
        else:
            overall = self.overall_head(self.overall_pool(emb, mask)).squeeze(-1)
        return {"vertebra": vert, "step": step, "overall": overall}

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x, pos), mask)


class FrameClassifier(nn.Module):
    """One stage-2 step image (a slice triplet of one vertebra) -> fracture logit (2nd place's 2D stage).

    Trained on single steps with balanced positives before the sequence model, whose CNN then starts from
    ``backbone``. Input ``(B, C, H, W)``; output dict ``step`` logits ``(B,)``.
    """

    def __init__(self, *, backbone: str = "resnet18", in_chans: int = 3, hidden: int | None = None,
                 pretrained_path: str | Path | None = None, drop_rate: float = 0.1, prior: float = 0.5):
        super().__init__()
        del hidden  # accepted so every cervical model takes the same config fields; nothing to size here
        self.backbone = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.backbone.num_features, 1)
        nn.init.constant_(self.head.bias, float(torch.logit(torch.tensor(prior))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"step": self.head(self.dropout(feats)).squeeze(-1)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

