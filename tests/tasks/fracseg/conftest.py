"""Session-wide synthetic data and one tiny trained run of the ``cervical/fracseg`` route."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "src/spinelab/configs/cervical/fracseg_tiny.yaml"


def tiny_overrides(dataset: Path) -> list[str]:
    """The tiny recipe on ``dataset``: 2 folds, one epoch per stage, on the CPU."""
    return [f"data.dataset_dir={dataset}", "data.folds=2", "trainer.accelerator=cpu", "seg.train.epochs=1",
            "fracture_seg.train.epochs=1"]


@pytest.fixture(scope="session")
def fracseg_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 + 2 synthetic RSNA 2022 studies at 64 px, every training study segmented (so every boxed study gets
    a pseudo-mask)."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    out = tmp_path_factory.mktemp("fracseg_data") / "data"
    return generate_cervical_dataset(out, studies=8, test_studies=2, size=64, seed=3, workers=1,
                                     seg_fraction=1.0, slices=(28, 36), progress=False)


@pytest.fixture(scope="session")
def fracseg_run(fracseg_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe trained on fold 0 through ``spinelab.train`` (seg, fracture_seg, labels_r2,
    fracture_seg_r2; one epoch each): about 15 s of CPU."""
    from spinelab import api
    from spinelab.config.load import load_config

    cfg = load_config("cervical", [TINY], tiny_overrides(fracseg_dataset))
    return api.train(cfg, run_dir=tmp_path_factory.mktemp("fracseg_runs") / "run", fold="0", progress=False)
