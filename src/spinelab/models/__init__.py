"""Models: one registry, ``create_model(name, **kwargs)``, timm 2D backbones, sequence/attention heads and
MONAI volume networks."""

from spinelab.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
