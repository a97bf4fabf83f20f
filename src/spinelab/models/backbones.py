"""2D timm backbones that never download: random init or a local weights file, loaded by timm's own loader.

``name`` is any timm architecture, with or without a pretrained tag (``convnext_tiny``,
``convnext_tiny.fb_in22k``); the tag picks timm's pretrained config (mean/std, classifier name), never a
download. Hub names (``hf-hub:...``) are refused. With ``pretrained_path`` the file goes through
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path))``: timm reads ``.pth``
(``weights_only``) and ``.safetensors``, drops the classifier, and adapts the stem convolution of 3-channel
weights to ``in_chans`` (2.5D stacks of 3 slices x n windows). An optional ``pretrained_sha256`` is checked
before anything is read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import timm
from torch import nn

from spinelab.errors import ConfigError, InputError
from spinelab.io.files import file_sha256

__all__ = ["create_backbone", "check_backbone_name", "verify_weights", "file_sha256"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_backbone_name(name: str) -> None:
    """Refuse names timm does not know (architecture or pretrained tag) and hub names that would download.

    Raises:
        ConfigError: naming the backbone and what is wrong.
    """
    from timm.models import split_model_name_tag

    if ":" in name:
        raise ConfigError(f"backbone {name!r}: hub names would download weights and spinelab never downloads; "
                          "give the architecture name and model.pretrained_path")
    arch, tag = split_model_name_tag(name)
    if arch not in timm.list_models():
        raise ConfigError(f"unknown timm backbone {name!r}")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        known = ", ".join(t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")) or "none"
        raise ConfigError(f"unknown pretrained tag {tag!r} for timm backbone {arch!r} (known tags: {known})")


def verify_weights(path: str | Path, sha256: str | None = None) -> Path:
    """Check that a weights file exists and, when ``sha256`` is given, that it is the expected file.

    Raises:
        InputError: the file is missing or unreadable, or its checksum differs (naming the file).
        ConfigError: ``sha256`` is not 64 hex digits.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "backbone weights not found (model.pretrained_path); spinelab never downloads "
                               "weights: fetch them once (README, Configs) or set model.pretrained_path to null")
    if sha256 is None:
        return path
    expected = sha256.strip().lower()
    if not _SHA256.match(expected):
        raise ConfigError(f"model.pretrained_sha256 must be 64 hex digits, got {sha256!r}")
    try:
        actual = file_sha256(path)
    except OSError as err:
        raise InputError(path, f"cannot read backbone weights ({err.strerror or err})") from None
    if actual != expected:
        raise InputError(path, f"SHA-256 {actual} differs from model.pretrained_sha256 {expected}: "
                               "a different or corrupt weights file")
    return path


def create_backbone(name: str, *, in_chans: int = 3, pretrained_path: str | Path | None = None,
                    pretrained_sha256: str | None = None, drop_rate: float = 0.0, **timm_kwargs: Any) -> nn.Module:
    """A timm backbone without classifier: ``model(x) -> (B, model.num_features)`` (or the feature maps with
    ``features_only=True`` in ``timm_kwargs``).

    Args:
        name: timm architecture, optionally tagged (``resnet18``, ``convnext_tiny.fb_in22k``, ...).
        in_chans: input channels (3 for a slice triplet).
        pretrained_path: local ``.pth`` / ``.safetensors`` weights for ``name``; ``None`` = random init.
        pretrained_sha256: expected SHA-256 of ``pretrained_path`` (checked before loading).
        drop_rate: dropout before the (removed) classifier.
        timm_kwargs: more ``timm.create_model`` arguments (``features_only``, ...).

    Raises:
        ConfigError: unknown architecture or tag, a hub name, a checksum without a file, a malformed checksum.
        InputError: the weights file is missing, differs from its checksum, or does not fit the backbone.
    """
    check_backbone_name(name)
    if not timm_kwargs.get("features_only"):
        timm_kwargs.setdefault("num_classes", 0)
    if pretrained_path is None:
        if pretrained_sha256 is not None:
            raise ConfigError("model.pretrained_sha256 is set but model.pretrained_path is not")
        return timm.create_model(name, pretrained=False, in_chans=in_chans, drop_rate=drop_rate, **timm_kwargs)
    path = verify_weights(pretrained_path, pretrained_sha256)
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                 in_chans=in_chans, drop_rate=drop_rate, **timm_kwargs)
    except Exception as err:  # torch, safetensors and timm raise many types for a file that does not fit
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(path, f"cannot load these weights into timm backbone {name!r} "
                               f"({type(err).__name__}: {first[:300]})") from None
