"""A model package's ``manifest.json``: what it holds (SHA-256 and size of every file), who made it, and the
format number that says how to read it; ``verify_package`` checks all of it before anything is loaded.

A package is laid out as a run folder with only what inference reads (``config.yaml``, the chosen folds'
``model.pt``, the prior and the route's fitted files), so every predictor reads it unchanged; the manifest is
what makes it a package. Verification refuses, each with the file named: a listed file that is missing, of
another size (truncated) or another SHA-256 (modified), and a file that the manifest does not list (a
``model.pt`` planted in a new fold folder would otherwise be ensembled). It imports neither torch nor the
training code, so the service and ``predict`` pay only the hashing, once per process and file version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spinelab.errors import InputError
from spinelab.io.files import file_sha256

__all__ = ["PACKAGE_FORMAT", "MANIFEST_FILE", "PACKAGE_KIND", "is_package", "read_manifest", "verify_package",
           "list_files", "hash_files"]

#: Layout version of the packages this spinelab writes and the newest it reads. 1: spinelab 0.x packages.
PACKAGE_FORMAT = 1
MANIFEST_FILE = "manifest.json"
PACKAGE_KIND = "spinelab-model-package"
_VERIFIED: dict[tuple[str, tuple[tuple[str, int, int], ...]], dict[str, Any]] = {}


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a model package (a folder with a package ``manifest.json``), not a bare run folder.

    A run folder has no manifest at its top (``predict`` writes ``manifest.json`` into prediction folders,
    which hold no ``config.yaml``), so the kind field is checked only when the file parses.
    """
    manifest = Path(path) / MANIFEST_FILE
    if not manifest.is_file() or not (Path(path) / "config.yaml").is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("kind") == PACKAGE_KIND
    except (OSError, ValueError, AttributeError):
        return True  # a damaged manifest beside a config: let verify_package name the problem


def list_files(root: str | Path) -> list[str]:
    """Every file under ``root`` (POSIX paths relative to it, sorted), the manifest excepted."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_FILE)


def hash_files(root: str | Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"sha256": hex, "bytes": size}}`` of the files ``names`` under ``root``."""
    root = Path(root)
    return {n: {"sha256": file_sha256(root / n), "bytes": (root / n).stat().st_size} for n in names}


def read_manifest(package: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a package, its format checked (not its files: ``verify_package``).

    Raises:
        InputError: no manifest, one that is not JSON or not a package's, or a format newer than this
            spinelab reads.
    """
    path = Path(package) / MANIFEST_FILE
    if not path.is_file():
        raise InputError(path, "not found: not a model package (write one with `spinelab export model`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable package manifest ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or data.get("kind") != PACKAGE_KIND:
        raise InputError(path, f"not a spinelab package manifest (kind must be {PACKAGE_KIND!r})")
    number = data.get("format")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise InputError(path, f"package format must be a positive integer, got {number!r}")
    if number > PACKAGE_FORMAT:
        raise InputError(path, f"package format {number} is newer than this spinelab reads ({PACKAGE_FORMAT}; "
                               f"the package was made by spinelab {data.get('spinelab', '?')}): upgrade spinelab")
    if not isinstance(data.get("files"), dict):
        raise InputError(path, "the manifest lists no files")
    return data


def verify_package(package: str | Path) -> dict[str, Any]:
    """Check every file of a package against its manifest; returns the manifest.

    Hashing is done once per process for each version of the files (same names, sizes and modification
    times), so loading a package in several steps (route, runtime, predictor) hashes it once.

    Raises:
        InputError: naming the file: a listed file missing, truncated or of another size, modified (another
            SHA-256), or a file the manifest does not list; or the manifest problems of ``read_manifest``.
    """
    root = Path(package)
    manifest_path = root / MANIFEST_FILE
    present = list_files(root)
    stats = tuple((n, (root / n).stat().st_size, (root / n).stat().st_mtime_ns) for n in present)
    mstat = manifest_path.stat() if manifest_path.is_file() else None
    key = (str(root.resolve()), ((MANIFEST_FILE, mstat.st_size, mstat.st_mtime_ns) if mstat else ("", 0, 0),
                                 *stats))
    if key in _VERIFIED:
        return _VERIFIED[key]
    data = read_manifest(root)
    listed: dict[str, Any] = data["files"]
    extra = sorted(set(present) - set(listed))
    if extra:
        raise InputError(root / extra[0], "not listed in the package's manifest.json: the package was changed "
                                          "after export (remove the file or export the package again)")
    sizes = {n: s for n, s, _ in stats}
    for name, entry in listed.items():
        path = root / name
        if name not in sizes:
            raise InputError(path, "listed in manifest.json but missing from the package")
        try:
            want_size, want_sha = int(entry["bytes"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            raise InputError(manifest_path, f"entry of {name} has no bytes / sha256") from None
        if sizes[name] != want_size:
            raise InputError(path, f"{sizes[name]} bytes, the manifest says {want_size}: truncated or replaced")
        if file_sha256(path) != want_sha:
            raise InputError(path, "SHA-256 differs from manifest.json: the file was modified after export")
    _VERIFIED[key] = data
    return data
