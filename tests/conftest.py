"""Shared fixtures: the real-data folders (read in place), small volumes with known geometry, and tiny trained
runs (one training per test session, shared by the prediction, package and service tests)."""

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


@pytest.fixture(scope="session")
def tiny_cervical_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 + 2 study synthetic RSNA 2022 dataset at 64 px."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    out = tmp_path_factory.mktemp("tiny_cervical") / "data"
    return generate_cervical_dataset(out, studies=6, test_studies=2, size=64, seed=3, workers=1,
                                     seg_fraction=0.6, slices=(28, 36), progress=False)


@pytest.fixture(scope="session")
def tiny_cervical_run(tiny_cervical_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cervical run folder (fold 0, one epoch per stage) of the tiny recipe: about 10 s on a CPU."""
    from spinelab import api
    from spinelab.config.load import load_config

    cfg = load_config("cervical", [REPO_ROOT / "src/spinelab/configs/cervical/tiny.yaml"],
                      [f"data.dataset_dir={tiny_cervical_dataset}", "stage1.train.epochs=1",
                       "stage2.train.epochs=1", "trainer.accelerator=cpu"])
    return api.train(cfg, run_dir=tmp_path_factory.mktemp("tiny_runs") / "cervical", fold="0", progress=False)


@pytest.fixture(scope="session")
def tiny_lumbar_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 + 2 study synthetic RSNA 2024 dataset at 64 px."""
    from spinelab.data.synthetic.lumbar import generate_lumbar_dataset

    return generate_lumbar_dataset(tmp_path_factory.mktemp("tiny_lumbar") / "ds", studies=6, test_studies=2,
                                   size=64, seed=5, workers=1, progress=False)


@pytest.fixture(scope="session")
def tiny_lumbar_run(tiny_lumbar_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lumbar run folder (fold 0, one epoch per stage) of the tiny recipe."""
    from spinelab import api
    from spinelab.config.load import load_config

    cfg = load_config("lumbar", [REPO_ROOT / "src/spinelab/configs/lumbar/tiny.yaml"],
                      [f"data.dataset_dir={tiny_lumbar_dataset}", f"data.cache_dir={tiny_lumbar_dataset}_cache",
                       "stage1.train.epochs=1", "stage2.train.epochs=1"])
    return api.train(cfg, run_dir=tmp_path_factory.mktemp("tiny_runs") / "lumbar", fold="0", progress=False)
