"""Volume (3D) networks: a MONAI U-Net with timm's ``forward_features`` / ``forward_head`` split.

MONAI is imported when a network is built, not with this module: importing it costs seconds (it pulls in
``monai.data`` and ``monai.apps``), and the 2D predictors that fill the registry never need it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spinelab.errors import ConfigError

__all__ = ["SegUNet"]


class SegUNet(nn.Module):
    """Volume -> per-voxel class logits (a 3D vertebra segmentation; ``spatial_dims=2`` gives the 2D twin).

    A MONAI ``UNet`` whose last layer gives ``channels[0]`` feature maps at full resolution is the body
    (``forward_features``); instance norm, PReLU and a 1x1 convolution to ``n_classes`` are the head
    (``forward_head``), so a later stage can reuse the features or swap the head. Input ``x``
    ``(B, in_chans, D, H, W)`` with every spatial size divisible by the product of ``strides``; output dict
    ``mask`` logits ``(B, n_classes, D, H, W)``.

    Args:
        spatial_dims: 3 for volumes, 2 for images.
        in_chans: input channels (1 for a CT in HU, more for several windows).
        n_classes: output classes (default 8: background and C1-C7).
        channels: feature channels per level, shallow to deep.
        strides: downsampling per level transition (one fewer than ``channels``).
        num_res_units: residual units per block (0: plain convolutions).
        kernel_size: convolution kernel size.
        drop_rate: dropout inside the U-Net blocks.
        norm: MONAI norm name (``instance``, ``batch``, ...).
    """

    def __init__(self, *, spatial_dims: int = 3, in_chans: int = 1, n_classes: int = 8,
                 channels: Sequence[int] = (16, 32, 64, 128, 256), strides: Sequence[int] = (2, 2, 2, 2),
                 num_res_units: int = 2, kernel_size: int = 3, drop_rate: float = 0.0, norm: str = "instance"):
        super().__init__()
        from monai.networks.nets import UNet

        if spatial_dims not in (2, 3):
            raise ConfigError(f"model.kwargs.spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise ConfigError(f"model.kwargs: a U-Net needs at least 2 channels and one stride fewer than channels "
                              f"(got channels {list(channels)}, strides {list(strides)})")
        self.spatial_dims = spatial_dims
        self.n_classes = n_classes
        self.num_features = int(channels[0])
        self.body = UNet(spatial_dims=spatial_dims, in_channels=in_chans, out_channels=self.num_features,
                         channels=tuple(channels), strides=tuple(strides), kernel_size=kernel_size,
                         num_res_units=num_res_units, dropout=drop_rate, norm=norm)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm_layer = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        self.head = nn.Sequential(norm_layer(self.num_features, affine=True), nn.PReLU(),
                                  conv(self.num_features, n_classes, kernel_size=1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> full-resolution features ``(B, channels[0], *spatial)``."""
        return self.body(x)

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.head(feats)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))
