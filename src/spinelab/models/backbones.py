"""2D timm backbones that never download: random init or a local checkpoint file.

Slice stacks (2.5D) feed ``in_chans`` channels; timm adapts the stem convolution. A checkpoint's stem
is adapted the same way (``timm.models.adapt_input_conv``) so 3-channel ImageNet weights load into any
``in_chans``.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from spinelab.errors import ConfigError, InputError

__all__ = ["create_backbone", "load_backbone_weights"]


def create_backbone(name: str, *, in_chans: int = 3, pretrained_path: str | Path | None = None,
                    drop_rate: float = 0.0) -> nn.Module:
    """A timm feature extractor: ``model(x) -> (B, model.num_features)``.

    Args:
        name: any timm architecture name (``resnet18``, ``convnext_tiny``, ``tf_efficientnetv2_s``, ...).
        in_chans: input channels (3 for a slice triplet).
        pretrained_path: local timm/torch checkpoint for the backbone; ``None`` = random init.
        drop_rate: dropout before the (removed) classifier.

    Raises:
        ConfigError: unknown architecture.
        InputError: ``pretrained_path`` given but missing or unreadable.
    """
    if name not in timm.list_models():
        raise ConfigError(f"unknown timm backbone {name!r}")
    model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, drop_rate=drop_rate)
    if pretrained_path is not None:
        load_backbone_weights(model, pretrained_path, in_chans=in_chans)
    return model


def load_backbone_weights(model: nn.Module, path: str | Path, *, in_chans: int = 3) -> None:
    """Load a local checkpoint into ``model``, ignoring classifier keys and adapting the stem.

    Raises:
        InputError: the file is missing or is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "backbone checkpoint not found (model.pretrained_path); spinelab never "
                               "downloads weights: put a timm state dict at this path or set it to null")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files
        raise InputError(path, f"not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, "checkpoint does not hold a state dict")
    own = model.state_dict()
    stem_key = next((k for k, v in own.items() if v.ndim == 4), None)
    if stem_key and stem_key in state and state[stem_key].shape[1] != own[stem_key].shape[1]:
        from timm.models import adapt_input_conv

        state[stem_key] = adapt_input_conv(in_chans, state[stem_key])
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not kept:
        raise InputError(path, "no tensor in the checkpoint matches the backbone (wrong architecture?)")
    model.load_state_dict(kept, strict=False)
