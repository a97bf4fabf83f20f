"""Packaging: compatible ranges in pyproject.toml, CI's exact versions in constraints.txt (equal to what is
installed), every dependency used and every import declared, recipes shipped inside the package."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import spinelab
from spinelab.configs import list_recipes

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Declared runtime dependencies that no spinelab module imports by name, and why they are needed.
USED_WITHOUT_IMPORT = {
    "torchvision": "timm imports it; installed as a pair with torch",
    "pylibjpeg": "pydicom's decoder plugin for JPEG, JPEG-LS and JPEG 2000 pixel data",
    "tensorboard": "Lightning's TensorBoardLogger (train/run.py) writes through it",
    "python-multipart": "FastAPI parses the service's uploads (serve/app.py, File and Form) with it",
}
# Distribution name -> the module name it installs, where they differ.
MODULE_OF = {"iterative-stratification": "iterstrat", "python-gdcm": "gdcm", "pyyaml": "yaml",
             "opencv-python-headless": "cv2",
             "scikit-learn": "sklearn", "simpleitk": "SimpleITK"}


EXTRA_MARK = "# --- extra nnunet"
RAY_MARK = "# --- extra ray"


def _constraints(block: str = "main") -> dict[str, str]:
    """The pins of spinelab[dev]'s tree (``main``), of the ray extra's block (``ray``, from its mark to the
    nnunet mark) or of the nnunet extra's block (``nnunet``, after its mark: the last block)."""
    text = (REPO / "constraints.txt").read_text()
    assert text.index(RAY_MARK) < text.index(EXTRA_MARK)  # `make nnunet` reads from its mark to the end
    head, nnunet = text.split(EXTRA_MARK, 1)
    main, ray = head.split(RAY_MARK, 1)
    chosen = {"main": main, "ray": ray.split("\n", 1)[1], "nnunet": nnunet.split("\n", 1)[1]}[block]
    pins = {}
    for line in chosen.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _requirements(extra: str | None = None) -> list[Requirement]:
    items = PYPROJECT["project"]["optional-dependencies"][extra] if extra else PYPROJECT["project"]["dependencies"]
    return [Requirement(r) for r in items]


def _installed_tree() -> dict[str, str]:
    """Every installed distribution that spinelab[dev]'s requirements pull in (extras and markers honoured)."""
    tree: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    stack = _requirements() + _requirements("dev")
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        dist = md.distribution(req.name)
        tree[canonicalize_name(dist.metadata["Name"])] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                stack.append(sub)
    return tree


def _third_party_imports() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "src" / "spinelab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "spinelab"}


def test_constraints_pin_exactly_the_installed_dependency_tree() -> None:
    pins, tree = _constraints(), _installed_tree()
    assert len(pins) > 20
    assert set(pins) == set(tree), "constraints.txt and the dependency tree name different packages"
    assert {n: v for n, v in pins.items() if tree[n] != v} == {}, "pins that differ from what is installed"


def test_every_requirement_is_a_range_that_holds_its_pinned_version() -> None:
    pins = _constraints()
    for req in _requirements() + _requirements("dev"):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req} does not allow the pinned {pins[name]}"
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: a range, not an exact pin"


def test_every_dependency_is_imported_and_every_import_is_declared() -> None:
    imports = _third_party_imports()
    declared = {}
    for req in _requirements():
        name = canonicalize_name(req.name)
        declared[MODULE_OF.get(name, name.replace("-", "_"))] = name
    unused = {mod for mod, name in declared.items() if mod not in imports and name not in USED_WITHOUT_IMPORT}
    assert unused == set()
    optional = {canonicalize_name(r.name).replace("-", "_") for r in _requirements("nnunet") + _requirements("ray")}
    assert imports - set(declared) - optional == set(), "imported by spinelab but not a runtime dependency"


def test_make_setup_applies_the_constraints_and_reinstalls_when_they_change() -> None:
    makefile = (REPO / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.M)
    assert stamp and {"pyproject.toml", "constraints.txt"} <= set(stamp.group(1).split())
    installs = [line for line in makefile.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert "torch==" not in makefile  # one home for the torch pair's versions: constraints.txt


def test_version_entry_point_and_shipped_recipes() -> None:
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "spinelab.__version__"}
    assert PYPROJECT["project"]["scripts"]["spinelab"] == "spinelab.cli:main"
    assert "configs/*/*.yaml" in PYPROJECT["tool"]["setuptools"]["package-data"]["spinelab"]
    on_disk = sorted(p.relative_to(REPO / "src/spinelab/configs").as_posix()
                     for p in (REPO / "src/spinelab/configs").glob("*/*.yaml"))
    assert list_recipes() == on_disk and len(on_disk) >= 8
    assert not (REPO / "configs").exists()  # one home for the recipes
    assert spinelab.__version__ == md.version("spinelab")  # the installed metadata reads the same attribute


def test_the_nnunet_extra_is_pinned_in_its_own_block_and_installable_without_the_main_tree() -> None:
    main, extra = _constraints(), _constraints("nnunet")
    assert "nnunetv2" in extra and set(main).isdisjoint(extra)
    (req,) = _requirements("nnunet")
    assert canonicalize_name(req.name) == "nnunetv2" and req.specifier.contains(extra["nnunetv2"])
    makefile = (REPO / "Makefile").read_text()
    assert EXTRA_MARK.replace("#", "\\#") in makefile and "make nnunet" in (REPO / ".ci" / "run").read_text()
    try:
        md.distribution("nnunetv2")
    except md.PackageNotFoundError:
        if os.environ.get("CI") == "true":
            raise AssertionError("CI runs with spinelab[nnunet] (make nnunet); nnunetv2 is not installed") from None
        return
    needed: set[str] = set()
    stack = [Requirement(f"nnunetv2=={extra['nnunetv2']}")]
    while stack:  # nnunetv2's tree: every package it pulls in is pinned in one of the two blocks
        name = canonicalize_name(stack.pop().name)
        if name in needed or name in main or name == "argparse":
            continue
        needed.add(name)
        stack += [r for r in map(Requirement, md.distribution(name).requires or []) if r.marker is None]
    assert needed - set(extra) - {"timm"} == set()
    assert {n: v for n, v in extra.items() if md.version(n) != v} == {}, "extra pins that differ from what is installed"


def test_the_ray_extra_is_pinned_in_its_own_block_before_the_nnunet_one() -> None:
    main, extra = _constraints(), _constraints("ray")
    assert "ray" in extra and set(main).isdisjoint(extra)
    (req,) = _requirements("ray")
    assert canonicalize_name(req.name) == "ray" and req.specifier.contains(extra["ray"])
    makefile = (REPO / "Makefile").read_text()
    assert RAY_MARK.replace("#", "\\#") in makefile and "make nnunet ray test" in (REPO / ".ci" / "run").read_text()
    nnunet = _constraints("nnunet")
    assert {n: v for n, v in extra.items() if n in nnunet and nnunet[n] != v} == {}, "the blocks pin one version"
    importers = [p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "spinelab").rglob("*.py")
                 if re.search(r"^\s*(import ray|from ray)\b", p.read_text(), re.M)]
    assert importers == ["spinelab/ray_engine.py"]  # nothing else imports ray
    try:
        md.distribution("ray")
    except md.PackageNotFoundError:
        if os.environ.get("CI") == "true":
            raise AssertionError("CI runs with spinelab[ray] (make ray); ray is not installed") from None
        return
    needed: set[str] = set()
    stack = [Requirement(f"ray=={extra['ray']}")]
    while stack:  # ray's tree: every package it pulls in beyond the main tree is pinned in the ray block
        name = canonicalize_name(stack.pop().name)
        if name in needed or name in main:
            continue
        needed.add(name)
        stack += [r for r in map(Requirement, md.distribution(name).requires or []) if r.marker is None]
    assert needed == set(extra)
    assert {n: v for n, v in extra.items() if md.version(n) != v} == {}, "extra pins that differ from what is installed"
