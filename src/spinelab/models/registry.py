"""The model registry: ``register_model`` decorates a builder, ``create_model(name, **kwargs)`` calls it.

Like timm, ``None`` keyword arguments are dropped so that config fields left unset fall back to the
builder's defaults. What a builder takes is read from its signature; a builder written as ``**kwargs``
around a model class names that class with ``register_model(takes=Class)``, so the class's ``__init__``
is the signature that config keys are checked against. The registry is filled by importing
``spinelab.models.zoo`` (an explicit import list).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from spinelab.errors import ConfigError

__all__ = ["register_model", "create_model", "list_models", "model_arguments", "check_model_args",
           "accepted_args"]

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}
# name -> the keyword arguments the builder takes, or None when it takes any (a bare ``**kwargs``)
_ARGUMENTS: dict[str, frozenset[str] | None] = {}


def _parameters(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """Named keyword parameters of ``fn`` and whether it also has ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def register_model(fn: Builder | None = None, *, takes: Callable[..., Any] | None = None) -> Any:
    """Register ``fn`` under its function name (``@register_model`` or ``@register_model(takes=Class)``).

    Args:
        fn: the builder.
        takes: the callable that the builder's ``**kwargs`` go to (a model class); its parameters join the
            builder's own named ones as what config keys may set.
    """
    def add(builder: Builder) -> Builder:
        if builder.__name__ in _REGISTRY:
            raise ValueError(f"model {builder.__name__!r} registered twice")
        named, open_ = _parameters(builder)
        if open_ and takes is not None:
            more, open_ = _parameters(takes)
            named |= more
        _REGISTRY[builder.__name__] = builder
        _ARGUMENTS[builder.__name__] = None if open_ else frozenset(named)
        return builder

    return add if fn is None else add(fn)


def _builder(name: str) -> Builder:
    _ensure_zoo()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_arguments(name: str) -> frozenset[str] | None:
    """The keyword arguments model ``name`` takes (``None``: any keyword)."""
    _builder(name)
    return _ARGUMENTS[name]


def check_model_args(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse keys that model ``name`` does not take, before anything is built.

    Raises:
        ConfigError: naming the model, the key and what it takes; or an unknown model.
    """
    takes = model_arguments(name)
    if takes is None:
        return
    unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in takes)
    if unknown:
        raise ConfigError(f"model {name!r} takes no argument {unknown[0]!r} (it takes: {', '.join(sorted(takes))})")


def accepted_args(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The items of ``kwargs`` that model ``name`` takes (what a stage offers every model, such as
    ``in_chans``, reaches only the builders that have that argument)."""
    takes = model_arguments(name)
    return {k: v for k, v in kwargs.items() if takes is None or k in takes}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry key, e.g. ``"cervical_slice_localizer"``.
        **kwargs: builder arguments; ``None`` values are dropped.

    Raises:
        ConfigError: unknown name, or a key the builder does not take (naming both).
    """
    builder = _builder(name)
    check_model_args(name, kwargs)
    return builder(**{k: v for k, v in kwargs.items() if v is not None})


def list_models(prefix: str = "") -> list[str]:
    """Registered model names starting with ``prefix``."""
    _ensure_zoo()
    return sorted(n for n in _REGISTRY if n.startswith(prefix))


def _ensure_zoo() -> None:
    import spinelab.models.zoo  # noqa: F401  (fills the registry)
