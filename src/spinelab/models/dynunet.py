"""``FractureDynUNet``: MONAI's ``DynUNet`` (the nnU-Net architecture), the 7th place's fracture segmenter.

The seed's nnU-Net v1 plan: 5 poolings, 32 features at full resolution doubling to 320, 3x3x3 kernels,
instance norm and leaky ReLU. With ``deep_supervision`` the training forward also returns the coarser heads'
logits (``deep``, upsampled to the input size by DynUNet, finest first) for the stage's weighted loss;
inference (``eval()``) always returns the full-resolution logits only. Output ``{"mask": (B, n_classes, D, H,
W)}``; every input size must be divisible by ``2 ** pools``. MONAI is imported when the network is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spinelab.errors import ConfigError

__all__ = ["FractureDynUNet"]


class FractureDynUNet(nn.Module):
    """Volume -> per-voxel fracture logits.

    Args:
        in_chans: input channels (one per HU window).
        n_classes: output classes (2: background, fracture).
        pools: downsamplings (stride-2 levels; the seed: 5).
        features: channels at full resolution, doubled per level up to ``max_features``.
        max_features: channel cap (nnU-Net's 320).
        deep_supervision: also return the ``deep_levels`` coarser heads while training.
        deep_levels: coarser heads used for deep supervision.
        drop_rate: dropout inside the blocks.
    """

    def __init__(self, *, in_chans: int = 1, n_classes: int = 2, pools: int = 5, features: int = 32,
                 max_features: int = 320, deep_supervision: bool = True, deep_levels: int = 2,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        from monai.networks.nets import DynUNet

        if pools < 1:
            raise ConfigError(f"model.kwargs.pools must be at least 1, got {pools}")
        if deep_supervision and not 1 <= deep_levels < pools:
            raise ConfigError(f"model.kwargs.deep_levels must be 1 .. pools - 1 ({pools - 1}), got {deep_levels}")
        self.pools, self.n_classes = int(pools), int(n_classes)
        self.deep_supervision = bool(deep_supervision)
        filters = [min(features * 2 ** i, max_features) for i in range(pools + 1)]
        self.body = DynUNet(spatial_dims=3, in_channels=in_chans, out_channels=n_classes,
                            kernel_size=[3] * (pools + 1), strides=[1] + [2] * pools,
                            upsample_kernel_size=[2] * pools, filters=filters, dropout=drop_rate or None,
                            norm_name=("INSTANCE", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01}),
                            deep_supervision=self.deep_supervision,
                            deep_supr_num=deep_levels if deep_supervision else 1,
                            res_block=False)

    @property
    def divisor(self) -> int:
        """Every input size must be a multiple of this."""
        return 2 ** self.pools

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> full-resolution decoder features ``(B, features, D, H, W)`` (while training with
        deep supervision, the coarser heads' logits are kept for ``forward_head``)."""
        return self.body.skip_layers(x)

    def forward_head(self, feats: torch.Tensor) -> dict[str, Any]:
        out = self.body.output_block(feats)
        if self.training and self.deep_supervision:
            # (B, deep_levels, C, D, H, W), each head upsampled to the input size as DynUNet does.
            deep = torch.stack([nn.functional.interpolate(h, out.shape[2:]) for h in self.body.heads], dim=1)
            return {"mask": out, "deep": deep}
        return {"mask": out}

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return self.forward_head(self.forward_features(x))
