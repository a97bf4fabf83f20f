"""The two RSNA 2024 architectures: a 2D point-heatmap network and an ROI grader with view fusion.

Both expose ``forward_features`` and ``forward_head`` (timm's contract) and return dicts of logits so the
losses and the predictor can name what they use.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spinelab.errors import ConfigError
from spinelab.models.backbones import create_backbone

__all__ = ["PointHeatmapNet", "RoiGrader"]


class PointHeatmapNet(nn.Module):
    """2.5D slice stack -> one heatmap per point (timm feature pyramid, top-down sum, 3x3 head).

    Input ``x`` ``(B, C, H, W)``; output dict ``heatmap`` logits ``(B, K, H / stride, W / stride)``.
    A spatial softmax over each map is the point's location distribution.
    """

    def __init__(self, *, backbone: str = "resnet18", in_chans: int = 3, n_points: int = 5, hidden: int = 64,
                 stride: int = 4, pretrained_path: str | Path | None = None, drop_rate: float = 0.0):
        super().__init__()
        self.encoder = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path,
                                       features_only=True)
        reductions = self.encoder.feature_info.reduction()
        if stride not in reductions:
            raise ConfigError(f"heatmap stride {stride} not available from {backbone} (strides {reductions})")
        self.keep = [i for i, r in enumerate(reductions) if r >= stride]
        chans = self.encoder.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(chans[i], hidden, 1) for i in self.keep)
        self.dropout = nn.Dropout2d(drop_rate)
        self.head = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, n_points, 1))
        self.stride = stride

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> the fused pyramid ``(B, hidden, H / stride, W / stride)``."""
        feats = self.encoder(x)
        top = None
        for lat, i in zip(reversed(self.lateral), reversed(self.keep), strict=True):
            f = lat(feats[i])
            top = f if top is None else f + F.interpolate(top, size=f.shape[-2:], mode="bilinear",
                                                          align_corners=False)
        return top

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"heatmap": self.head(self.dropout(feats))}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


class RoiGrader(nn.Module):
    """Crops around level points -> 3 grade logits per (condition, level), fusing sagittal and axial views.

    Input ``sag``, ``axial`` ``(B, N, C, S, S)`` crops of N items (25: 5 conditions x 5 levels), ``mask``
    ``(B, N, 2)`` which views exist, ``condition`` / ``level`` ``(B, N)`` indices. One CNN encodes every crop;
    masked features of both views, a condition and a level embedding feed an MLP; with ``condition_groups``
    (the group index of each condition) there is one MLP per group (spinal, foraminal, subarticular).
    Output dict: ``logits`` ``(B, N, 3)``.
    """

    def __init__(self, *, backbone: str = "resnet18", in_chans: int = 3, hidden: int = 128,
                 pretrained_path: str | Path | None = None, drop_rate: float = 0.1, n_conditions: int = 5,
                 n_levels: int = 5, n_grades: int = 3, condition_groups: list[int] | None = None):
        super().__init__()
        groups = list(condition_groups) if condition_groups else [0] * n_conditions
        if len(groups) != n_conditions:
            raise ConfigError(f"condition_groups needs {n_conditions} entries, got {len(groups)}")
        self.register_buffer("group_of_condition", torch.tensor(groups, dtype=torch.long), persistent=False)
        self.cnn = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path)
        f = self.cnn.num_features
        self.project = nn.ModuleList([nn.Linear(f, hidden), nn.Linear(f, hidden)])  # sagittal, axial
        self.condition_embedding = nn.Embedding(n_conditions, hidden)
        self.level_embedding = nn.Embedding(n_levels, hidden)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Dropout(drop_rate), nn.Linear(hidden, n_grades))
            for _ in range(max(groups) + 1))

    def forward_features(self, sag: torch.Tensor, axial: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Both views' crops -> per-item fused view features ``(B, N, hidden)`` (absent views masked out)."""
        b, n = sag.shape[:2]
        crops = torch.cat([sag.flatten(0, 1), axial.flatten(0, 1)])
        feats = self.cnn(crops)
        views = [proj(part).view(b, n, -1) * mask[..., i:i + 1].to(part.dtype)
                 for i, (proj, part) in enumerate(zip(self.project, feats.chunk(2), strict=True))]
        return views[0] + views[1]

    def forward_head(self, fused: torch.Tensor, condition: torch.Tensor, level: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """Fused features + condition and level indices -> grade ``logits`` ``(B, N, 3)``."""
        cond = self.condition_embedding(condition) + self.level_embedding(level)
        x = torch.cat([fused, cond, fused * cond], dim=-1)
        if len(self.heads) == 1:
            return {"logits": self.heads[0](x)}
        group = self.group_of_condition[condition]  # (B, N)
        logits = torch.stack([head(x) for head in self.heads], dim=-2)  # (B, N, G, 3)
        return {"logits": logits.gather(-2, group[..., None, None].expand(-1, -1, 1, logits.shape[-1]))[..., 0, :]}

    def forward(self, sag: torch.Tensor, axial: torch.Tensor, mask: torch.Tensor, condition: torch.Tensor,
                level: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(sag, axial, mask), condition, level)
