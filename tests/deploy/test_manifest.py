"""Package verification: every file hashed, each kind of damage refused with the file named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spinelab.deploy.manifest import MANIFEST_FILE, PACKAGE_FORMAT, is_package, read_manifest, verify_package
from spinelab.errors import InputError
from tests.deploy.conftest import copy_package


def test_a_fresh_package_verifies_and_lists_every_file(cervical_package: Path) -> None:
    data = verify_package(cervical_package)
    assert data["format"] == PACKAGE_FORMAT and data["task"] == "cervical" and data["route"] == "cervical/slices"
    on_disk = sorted(p.relative_to(cervical_package).as_posix() for p in cervical_package.rglob("*")
                     if p.is_file() and p.name != MANIFEST_FILE)
    assert sorted(data["files"]) == on_disk
    assert all(len(e["sha256"]) == 64 and e["bytes"] > 0 for e in data["files"].values())


def test_a_run_folder_and_a_prediction_folder_are_not_packages(cervical_run: Path, tmp_path: Path) -> None:
    assert is_package(cervical_run) is False
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"schema_version": 1, "studies": []}))  # predict's manifest
    assert is_package(tmp_path) is False


@pytest.mark.parametrize("damage", ["modified", "truncated", "missing", "extra"])
def test_damage_is_refused_naming_the_file(cervical_package: Path, tmp_path: Path, damage: str) -> None:
    pkg = copy_package(cervical_package, tmp_path / "pkg")
    weights = pkg / "stage2" / "fold_0" / "model.pt"
    target = weights
    if damage == "modified":
        data = bytearray(weights.read_bytes())
        data[-100] ^= 0xFF  # same size, one byte changed
        weights.write_bytes(bytes(data))
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "missing":
        weights.unlink()
    else:
        target = pkg / "stage2" / "fold_1" / "model.pt"  # a planted fold would be ensembled
        target.parent.mkdir()
        target.write_bytes(weights.read_bytes())
    with pytest.raises(InputError) as err:
        verify_package(pkg)
    assert err.value.path == target
    words = {"modified": "SHA-256 differs", "truncated": "truncated", "missing": "missing", "extra": "not listed"}
    assert words[damage] in err.value.problem


def test_a_newer_format_is_refused_with_the_versions(cervical_package: Path, tmp_path: Path) -> None:
    pkg = copy_package(cervical_package, tmp_path / "pkg")
    data = json.loads((pkg / MANIFEST_FILE).read_text())
    data.update(format=PACKAGE_FORMAT + 1, spinelab="9.0.0")
    (pkg / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"format {PACKAGE_FORMAT + 1} is newer.*9\.0\.0.*upgrade spinelab"):
        verify_package(pkg)


def test_a_damaged_manifest_is_refused(cervical_package: Path, tmp_path: Path) -> None:
    pkg = copy_package(cervical_package, tmp_path / "pkg")
    (pkg / MANIFEST_FILE).write_text("{not json")
    assert is_package(pkg)  # beside a config.yaml: reported, not mistaken for a run folder
    with pytest.raises(InputError, match="not a readable package manifest") as err:
        read_manifest(pkg)
    assert err.value.path == pkg / MANIFEST_FILE


def test_a_change_after_a_successful_check_is_still_caught(cervical_package: Path, tmp_path: Path) -> None:
    pkg = copy_package(cervical_package, tmp_path / "pkg")
    verify_package(pkg)  # cached for this version of the files
    (pkg / "prior.json").write_text((pkg / "prior.json").read_text().replace("0.", "0.9", 1))
    with pytest.raises(InputError) as err:
        verify_package(pkg)
    assert err.value.path == pkg / "prior.json"
