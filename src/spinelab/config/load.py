"""Build a validated config from YAML files (applied in order) and dotted ``key=value`` overrides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from spinelab.errors import ConfigError

__all__ = ["load_config", "apply_overrides", "config_class", "save_config", "read_run_config", "read_yaml"]


def config_class(task: str, route: str | None = None) -> Any:
    """The schema class of a task's route (its default route when ``route`` is ``None``), from the catalog."""
    from spinelab.tasks.catalog import get_route
    from spinelab.tasks.route import resolve

    return resolve(get_route(task, route).config)


def load_config(task: str, files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Any:
    """Merge YAML files in order, then apply ``a.b.c=value`` overrides, then validate.

    Args:
        task: a task of the catalog (``"cervical"``, ``"lumbar"``); the merged ``route:`` key picks the
            route's config class (the task's default route when absent).
        files: YAML files; later files override earlier ones key by key.
        overrides: strings like ``stage1.train.epochs=3``; values are parsed as YAML scalars/lists.

    Returns:
        The validated config object.

    Raises:
        ConfigError: a missing file, bad YAML, an unknown key or a value of the wrong type.
    """
    merged: dict[str, Any] = {}
    for f in files:
        path = Path(f)
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        if data.get("task", task) != task:
            raise ConfigError(f"{path}: config is for task {data['task']!r}, not {task!r}")
        _deep_merge(merged, data)
    merged = apply_overrides(merged, overrides)
    merged.setdefault("task", task)
    route = merged.get("route")
    cls = config_class(task, None if route is None else str(route))
    try:
        return cls.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation(err)) from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return ``data`` with each ``dotted.key=value`` override applied (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. stage1.train.epochs=3)")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().lstrip("-").split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return data


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from spinelab.io.atomic import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def read_run_config(run_dir: str | Path) -> Any:
    """The config of a run folder (``spinelab.train.run_folder.read_run_config``: read once, migrated)."""
    from spinelab.train.run_folder import read_run_config as read

    return read(run_dir)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file with the safe loader (a ``!!python/...`` tag is refused, never constructed).

    Raises:
        ConfigError: one line naming the file and, when known, the line of the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if "python/" in str(problem):
            problem = f"{problem}; Python tags are refused (safe loader)"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _format_validation(err: ValidationError) -> str:
    lines = ["invalid config:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)
