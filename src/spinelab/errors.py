"""Typed errors for everything a user can get wrong.

Library code raises these; only ``cli.py`` turns them into exit codes and messages. Each error names the
file (or config key) and the problem, so a user never has to read a library traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SpinelabError", "InputError", "ConfigError", "GeometryError", "SeriesSelectionError",
           "describe_os_error"]


class SpinelabError(Exception):
    """Base class of every error spinelab raises on purpose."""


class InputError(SpinelabError):
    """A file or folder on disk is missing, unreadable or not what it should be.

    Args:
        path: the offending file or folder.
        problem: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SeriesSelectionError(InputError):
    """A folder holds several series and the request does not pick exactly one."""


class ConfigError(SpinelabError):
    """A config file or override is invalid (unknown key, wrong type, missing file)."""


class GeometryError(SpinelabError):
    """Image geometry is inconsistent (no affine, non-invertible, incompatible grids)."""


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError``: the path(s) it names, then the system's words for the problem."""
    reason = err.strerror or str(err) or type(err).__name__
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    if not paths:
        return reason
    return f"{' -> '.join(paths)}: {reason}"
