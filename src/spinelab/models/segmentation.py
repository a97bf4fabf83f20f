"""Volume (3D) segmentation networks, each with timm's ``forward_features`` / ``forward_head`` split.

* ``SegUNet``: MONAI's ``UNet``.
* ``SegResNet3d``: MONAI's ``SegResNet`` (the 7th place's nnU-Net stand-in: residual encoder, light decoder).
* ``TimmUNet3d``: the 1st place's shape: a timm 2D encoder (``resnet18d`` ...) converted to 3D, its kernels
  repeated along the new axis (``inflate_2d_to_3d``), and a 4-block U-Net decoder; a 2D ImageNet checkpoint
  (``pretrained_path``) is loaded by timm into the 2D encoder first, then inflated.

All output ``{"mask": logits (B, n_classes, D, H, W)}`` at the input's resolution. MONAI is imported when a
network is built, not with this module: importing it costs seconds (it pulls in ``monai.data`` and
``monai.apps``), and the 2D predictors that fill the registry never need it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spinelab.errors import ConfigError

_NORMS = {"instance": lambda c: nn.InstanceNorm3d(c, affine=True), "batch": nn.BatchNorm3d}

__all__ = ["SegUNet", "SegResNet3d", "TimmUNet3d", "inflate_2d_to_3d"]


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


def _head(channels: int, n_classes: int, norm: nn.Module) -> nn.Sequential:
    """Norm, activation and a 1x1x1 convolution to class logits (``forward_head`` of the 3D networks)."""
    return nn.Sequential(norm, nn.PReLU(), nn.Conv3d(channels, n_classes, kernel_size=1))


class SegResNet3d(nn.Module):
    """MONAI ``SegResNet`` without its final convolution as the body; a norm-act-1x1 head gives the logits.

    Input ``(B, in_chans, D, H, W)``, every size divisible by ``2 ** (len(blocks_down) - 1)``.

    Args:
        in_chans: input channels.
        n_classes: output classes (8: background and C1-C7; 9 with T1).
        init_filters: channels at full resolution (doubled at each level).
        blocks_down: residual blocks per encoder level.
        blocks_up: residual blocks per decoder level (one fewer than ``blocks_down``).
        drop_rate: dropout after the first convolution.
    """

    def __init__(self, *, in_chans: int = 1, n_classes: int = 8, init_filters: int = 16,
                 blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
                 drop_rate: float = 0.0):
        super().__init__()
        from monai.networks.nets import SegResNet

        if len(blocks_up) != len(blocks_down) - 1:
            raise ConfigError(f"model.kwargs: SegResNet needs one decoder level fewer than encoder levels (got "
                              f"blocks_down {list(blocks_down)}, blocks_up {list(blocks_up)})")
        self.n_classes = n_classes
        self.num_features = int(init_filters)
        self.body = SegResNet(spatial_dims=3, init_filters=init_filters, in_channels=in_chans,
                              out_channels=n_classes, dropout_prob=drop_rate or None, blocks_down=tuple(blocks_down),
                              blocks_up=tuple(blocks_up), use_conv_final=False)
        groups = 8 if init_filters % 8 == 0 else 1
        self.head = _head(self.num_features, n_classes, nn.GroupNorm(groups, self.num_features))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> full-resolution features ``(B, init_filters, D, H, W)``."""
        return self.body(x)

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.head(feats)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


def _triple(v: Any) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else (v[0], *v)  # (k, k) -> (k, k, k): the new axis takes the first


def _inflate_conv(conv: nn.Conv2d) -> nn.Conv3d:
    """A Conv2d as a Conv3d whose kernel is the 2D one repeated along depth and divided by the depth, so a
    volume that is constant along depth gives the 2D response (I3D's inflation)."""
    if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
        raise ConfigError(f"cannot inflate {type(conv).__name__} with padding {conv.padding!r} / "
                          f"{conv.padding_mode!r} to 3D")
    k = conv.kernel_size[0]
    out = nn.Conv3d(conv.in_channels, conv.out_channels, kernel_size=_triple(conv.kernel_size),
                    stride=_triple(conv.stride), padding=_triple(conv.padding), dilation=_triple(conv.dilation),
                    groups=conv.groups, bias=conv.bias is not None)
    with torch.no_grad():
        out.weight.copy_(conv.weight.unsqueeze(2).repeat(1, 1, k, 1, 1) / k)
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out


def _inflate_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    out = nn.BatchNorm3d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    out.load_state_dict(bn.state_dict())
    return out


def _inflate_pool(pool: nn.Module) -> nn.Module:
    if isinstance(pool, nn.MaxPool2d):
        return nn.MaxPool3d(_triple(pool.kernel_size), _triple(pool.stride), _triple(pool.padding),
                            _triple(pool.dilation), ceil_mode=pool.ceil_mode)
    if isinstance(pool, nn.AvgPool2d):
        return nn.AvgPool3d(_triple(pool.kernel_size), _triple(pool.stride), _triple(pool.padding),
                            ceil_mode=pool.ceil_mode, count_include_pad=pool.count_include_pad)
    return nn.AdaptiveAvgPool3d(1) if isinstance(pool, nn.AdaptiveAvgPool2d) else nn.AdaptiveMaxPool3d(1)


_INFLATE: dict[type, Callable[[Any], nn.Module]] = {
    nn.Conv2d: _inflate_conv, nn.BatchNorm2d: _inflate_bn, nn.MaxPool2d: _inflate_pool, nn.AvgPool2d: _inflate_pool,
    nn.AdaptiveAvgPool2d: _inflate_pool, nn.AdaptiveMaxPool2d: _inflate_pool,
}
#: 2D layers other than these (with 2D-only arithmetic) are refused rather than silently mis-converted
_DIMENSIONLESS = (nn.ReLU, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Sequential, nn.Sigmoid,
                  nn.Hardswish, nn.Hardsigmoid, nn.ModuleList, nn.ModuleDict)


def inflate_2d_to_3d(module: nn.Module) -> nn.Module:
    """``module`` with every Conv2d, BatchNorm2d and 2D pooling replaced by its 3D twin (in place; weights
    inflated, see ``_inflate_conv``); other containers and element-wise layers are kept.

    Raises:
        ConfigError: a layer with 2D-only arithmetic that has no 3D twin here (naming it).
    """
    for name, child in list(module.named_children()):
        kind = type(child)
        if kind in _INFLATE:
            setattr(module, name, _INFLATE[kind](child))
        elif kind.__module__.startswith("torch.nn") and not isinstance(child, _DIMENSIONLESS):
            raise ConfigError(f"cannot inflate layer {name!r} ({kind.__name__}) of this timm encoder to 3D")
        else:
            if any(isinstance(child, k) and kind is not k for k in _INFLATE):
                raise ConfigError(f"cannot inflate layer {name!r} ({kind.__name__}, a subclass of a 2D layer) to 3D")
            inflate_2d_to_3d(child)
    return module


class _DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip, two 3x3x3 convolutions with norm and ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, norm: str):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in in (in_ch + skip_ch, out_ch):
            layers += [nn.Conv3d(c_in, out_ch, 3, padding=1, bias=False), _NORMS[norm](out_ch), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=skip.shape[2:], mode="nearest")
        return self.conv(torch.cat([x, skip], dim=1))


class TimmUNet3d(nn.Module):
    """A timm 2D encoder inflated to 3D with a 4-block U-Net decoder (the RSNA 2022 1st place's network).

    The encoder is ``timm.create_model(backbone, features_only=True)`` (five feature maps, strides 2..32),
    built through ``models.backbones.create_backbone`` (no download; ``pretrained_path`` is a 2D timm
    checkpoint, checked against ``pretrained_sha256``, loaded by timm, then inflated). The decoder climbs from
    stride 32 to stride 2 over four blocks with skips; the features are then upsampled to the input size
    (``forward_features``), and the head is norm, PReLU and a 1x1x1 convolution. Input sizes must be divisible
    by 32 (the encoder's total stride).

    Args:
        backbone: timm architecture (``resnet18d`` as the 1st place's re-run; any whose layers inflate).
        in_chans: input channels.
        n_classes: output classes.
        pretrained_path: local 2D timm weights for ``backbone``.
        pretrained_sha256: expected SHA-256 of ``pretrained_path``.
        decoder_channels: channels of the four decoder blocks, deep to shallow.
        norm: decoder norm, ``instance`` (small 3D batches) or ``batch``.
        drop_rate: dropout before the head.
    """

    def __init__(self, *, backbone: str = "resnet18d", in_chans: int = 1, n_classes: int = 8,
                 pretrained_path: str | Path | None = None, pretrained_sha256: str | None = None,
                 decoder_channels: Sequence[int] = (256, 128, 64, 32), norm: str = "instance", drop_rate: float = 0.0):
        super().__init__()
        from spinelab.models.backbones import create_backbone

        if len(decoder_channels) != 4:
            raise ConfigError(f"model.kwargs.decoder_channels must list 4 channel counts, got {list(decoder_channels)}")
        if norm not in _NORMS:
            raise ConfigError(f"model.kwargs.norm must be one of {sorted(_NORMS)}, got {norm!r}")
        encoder = create_backbone(backbone, in_chans=in_chans, pretrained_path=pretrained_path,
                                  pretrained_sha256=pretrained_sha256, features_only=True)
        channels = list(encoder.feature_info.channels())
        if len(channels) != 5:
            raise ConfigError(f"backbone {backbone!r} gives {len(channels)} feature maps; the U-Net needs 5")
        self.encoder = inflate_2d_to_3d(encoder)
        self.n_classes = n_classes
        ins = [channels[4], *decoder_channels[:3]]
        self.decoder = nn.ModuleList(_DecoderBlock(i, s, o, norm)
                                     for i, s, o in zip(ins, channels[3::-1], decoder_channels, strict=True))
        self.num_features = int(decoder_channels[-1])
        self.drop = nn.Dropout3d(drop_rate) if drop_rate else nn.Identity()
        self.head = _head(self.num_features, n_classes, _NORMS[norm](self.num_features))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> full-resolution decoder features ``(B, decoder_channels[-1], D, H, W)``."""
        feats = self.encoder(x)
        y = feats[4]
        for block, skip in zip(self.decoder, feats[3::-1], strict=True):
            y = block(y, skip)
        return nn.functional.interpolate(y, size=x.shape[2:], mode="trilinear", align_corners=False)

    def forward_head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.head(self.drop(feats))}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))
