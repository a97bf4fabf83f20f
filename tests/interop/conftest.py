"""A tiny synthetic RSNA 2022 dataset with every study segmented, its nnU-Net export, and nnU-Net's own planning
of that export (session-wide: nnU-Net's process start and planning are the slow part)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def seg_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 training studies at 48 px, all with segmentations."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    return generate_cervical_dataset(tmp_path_factory.mktemp("nn") / "ds", studies=4, test_studies=0, size=48, seed=3,
                                     workers=1, seg_fraction=1.0, slices=(24, 28), progress=False)


@pytest.fixture(scope="session")
def vertebra_export(seg_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> object:
    from spinelab.interop.nnunet import export_nnunet

    return export_nnunet(seg_dataset, tmp_path_factory.mktemp("nnunet") / "nnUNet_raw", k=2, dataset_id=11,
                         name="Tiny", progress=False)


def nnunet_installed() -> bool:
    """nnunetv2 importable; under CI=true its absence is a failure (CI installs the extra), elsewhere a skip."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs with spinelab[nnunet] (make nnunet): nnunetv2 is not installed")
        return False
    return True


def nnunet_env(raw: Path) -> dict[str, str]:
    """nnU-Net's three folders beside the raw one, one thread, one data-augmentation worker, no compile."""
    return {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(raw.parent / "nnUNet_preprocessed"),
            "nnUNet_results": str(raw.parent / "nnUNet_results"), "nnUNet_n_proc_DA": "1", "nnUNet_compile": "f",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture(scope="session")
def nnunet_planned(vertebra_export: object) -> object:
    """``nnUNetv2_plan_and_preprocess -d 11 -c 3d_fullres --verify_dataset_integrity --no_pp`` run on the export
    (the check and the plans; preprocessing is left to the training test); the completed process."""
    if not nnunet_installed():
        pytest.skip("nnunetv2 is not installed (pip install 'spinelab[nnunet]')")
    raw = vertebra_export.folder.parent
    code = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
            "plan_and_preprocess_entry as main; sys.argv = ['nnUNetv2_plan_and_preprocess'] + sys.argv[1:]; main()")
    return subprocess.run([sys.executable, "-c", code, "-d", str(vertebra_export.dataset_id), "-c", "3d_fullres",
                           "--verify_dataset_integrity", "--no_pp", "-npfp", "1"],
                          env=nnunet_env(raw), capture_output=True, text=True, timeout=600)
