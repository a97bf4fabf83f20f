"""A small tmpfs for disk-full tests (mounting needs root, as in CI; elsewhere such tests skip)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "8k", *, readonly: bool = False) -> Iterator[Path]:
    """Mount a ``size`` tmpfs (read-only if asked) at ``where`` for the block; fail under ``CI=true`` when it
    cannot be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size},ro" if readonly else f"size={size}"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs at {where}: {mounted.stderr.strip()} (needs root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files (``.<name>.<random>.tmp<suffix>``) left anywhere under ``folder``."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]
