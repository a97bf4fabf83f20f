"""Packages of the fixed-run fixtures (no training: the quantised tiny runs of tests/fixtures/fixed_runs), the
test studies they were predicted on, and one ONNX export per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tasks.fixed_runs import cervical_test_input, lumbar_test_input, materialize


@pytest.fixture(scope="session")
def cervical_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixed cervical slices run (fold 0) as a run folder."""
    return materialize("cervical", tmp_path_factory.mktemp("deploy_runs") / "cervical")


@pytest.fixture(scope="session")
def lumbar_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixed lumbar points run (fold 0) as a run folder."""
    return materialize("lumbar", tmp_path_factory.mktemp("deploy_runs") / "lumbar")


@pytest.fixture(scope="session")
def cervical_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two cervical test studies (``test_images``) the fixed run's expected submission was predicted on."""
    return cervical_test_input(tmp_path_factory.mktemp("deploy_data") / "cervical") / "test_images"


@pytest.fixture(scope="session")
def lumbar_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny lumbar dataset of the fixed run."""
    return lumbar_test_input(tmp_path_factory.mktemp("deploy_data") / "lumbar")


@pytest.fixture(scope="session")
def cervical_package(cervical_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``spinelab export model`` of the cervical run (do not modify: copy it with ``copy_package``)."""
    from spinelab.deploy.package import export_model

    return export_model(cervical_run, tmp_path_factory.mktemp("deploy_pkgs") / "cervical", licence="CC-BY-4.0")


@pytest.fixture(scope="session")
def onnx_package(cervical_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cervical package with every 2D network exported to ONNX (``--all-networks``), checks recorded."""
    from spinelab.deploy.onnx_export import export_onnx

    pkg = shutil.copytree(cervical_package, tmp_path_factory.mktemp("deploy_pkgs") / "cervical_onnx")
    export_onnx(pkg, only_faster=False)
    return Path(pkg)


def copy_package(package: Path, dest: Path) -> Path:
    """A copy of a package to tamper with (file times kept, so it verifies as the original)."""
    return Path(shutil.copytree(package, dest))
