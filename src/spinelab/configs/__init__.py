"""The recipes that ship with spinelab (``cervical/*.yaml``, ``lumbar/*.yaml``), found with importlib.resources.

A recipe is named as ``-c`` takes it: a file on disk wins; otherwise ``cervical/demo.yaml``, ``cervical/demo``
or, for the task at hand, ``demo`` name the packaged ``cervical/demo.yaml`` (a missing path ending in
``configs/cervical/demo.yaml``, as in commands written for an older source checkout, does too). The files
are read in place, so the package must be installed as files (a wheel or an editable install), not a zip.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from spinelab.errors import ConfigError

__all__ = ["recipe_path", "resolve_recipe", "resolve_recipes", "list_recipes"]


def _root() -> Path:
    return Path(str(files(__name__)))


def list_recipes() -> list[str]:
    """Every packaged recipe as ``task/name.yaml``."""
    root = _root()
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.yaml"))


def recipe_path(name: str) -> Path:
    """The packaged recipe ``name`` (``cervical/tiny.yaml`` or ``cervical/tiny``).

    Raises:
        ConfigError: no such packaged recipe (the message lists them).
    """
    rel = name.removeprefix("configs/")
    if not rel.endswith((".yaml", ".yml")):
        rel += ".yaml"
    path = _root() / rel
    if not path.is_file():
        raise ConfigError(f"{name}: no such config file or packaged recipe; recipes: {', '.join(list_recipes())}")
    return path


def resolve_recipe(task: str, value: str | Path) -> Path:
    """A ``-c`` value as a path: an existing file as given, else the packaged recipe it names.

    ``demo`` means ``<task>/demo.yaml``; ``cervical/demo.yaml``, ``configs/cervical/demo.yaml`` and any
    missing ``.../configs/cervical/demo.yaml`` (a path into an older checkout, where the recipes lived in a
    top-level ``configs/``) are the packaged file when no such file exists.

    Raises:
        ConfigError: neither a file nor a packaged recipe.
    """
    path = Path(value)
    if path.is_file():
        return path
    parts = path.parts
    if len(parts) >= 3 and parts[-3] == "configs":  # .../configs/<task>/<name>.yaml of an older checkout
        return recipe_path("/".join(parts[-2:]))
    name = str(value)
    if "/" not in name:
        name = f"{task}/{name}"
    return recipe_path(name)


def resolve_recipes(task: str, values: Sequence[str | Path]) -> list[Path]:
    """``resolve_recipe`` for each ``-c`` value, in order."""
    return [resolve_recipe(task, v) for v in values]
