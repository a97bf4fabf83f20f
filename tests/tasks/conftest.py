"""Session-wide trained runs for the prediction tests (one tiny training per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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

    cfg = load_config("cervical", [REPO / "src/spinelab/configs/cervical/tiny.yaml"],
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

    cfg = load_config("lumbar", [REPO / "src/spinelab/configs/lumbar/tiny.yaml"],
                      [f"data.dataset_dir={tiny_lumbar_dataset}", f"data.cache_dir={tiny_lumbar_dataset}_cache",
                       "stage1.train.epochs=1", "stage2.train.epochs=1"])
    return api.train(cfg, run_dir=tmp_path_factory.mktemp("tiny_runs") / "lumbar", fold="0", progress=False)
