"""Shared fixtures: the real-data folders (read in place) and small volumes with known geometry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir(env: str, default: Path, what: str) -> Path:
    """Return a ``../shared`` folder; fail under CI (never skip) when it is missing."""
    path = Path(os.environ.get(env, default))
    if not path.is_dir():
        message = f"{what} not found at {path} (set {env})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def realdata() -> Path:
    """``../shared/realdata`` (or ``$SPINELAB_REALDATA``)."""
    return _shared_dir("SPINELAB_REALDATA", REPO_ROOT.parent / "shared" / "realdata", "real data")


@pytest.fixture(scope="session")
def rsna_labels() -> Path:
    """``../shared/rsna-labels`` (or ``$SPINELAB_RSNA_LABELS``)."""
    return _shared_dir("SPINELAB_RSNA_LABELS", REPO_ROOT.parent / "shared" / "rsna-labels", "RSNA label files")


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """A non-identity (D, H, W) -> LPS affine: axial slices running feet to head, 0.7 mm pixels, 1.5 mm slices."""
    aff = np.eye(4)
    aff[:3, 0] = [0.0, 0.0, 1.5]  # D: towards the head
    aff[:3, 1] = [0.0, 0.7, 0.0]  # H: towards posterior
    aff[:3, 2] = [0.7, 0.0, 0.0]  # W: towards patient left
    aff[:3, 3] = [-80.0, -60.0, -200.0]
    return aff


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
