"""The model registry: ``register_model`` decorates a builder, ``create_model(name, **kwargs)`` calls it.

Like timm, ``None`` keyword arguments are dropped so that config fields left unset fall back to the
builder's defaults. The registry is filled by importing ``spinelab.models.zoo`` (an explicit import list).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from spinelab.errors import ConfigError

__all__ = ["register_model", "create_model", "list_models"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry key, e.g. ``"cervical_slice_localizer"``.
        **kwargs: builder arguments; ``None`` values are dropped.

    Raises:
        ConfigError: unknown name.
    """
    _ensure_zoo()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**{k: v for k, v in kwargs.items() if v is not None})


def list_models(prefix: str = "") -> list[str]:
    """Registered model names starting with ``prefix``."""
    _ensure_zoo()
    return sorted(n for n in _REGISTRY if n.startswith(prefix))


def _ensure_zoo() -> None:
    import spinelab.models.zoo  # noqa: F401  (fills the registry)
