"""Packaged recipes: found by path, by task-relative name or by short name; a file on disk wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from spinelab.config.load import load_config
from spinelab.configs import list_recipes, recipe_path, resolve_recipe, resolve_recipes
from spinelab.errors import ConfigError


def test_every_packaged_recipe_resolves_and_validates() -> None:
    for name in list_recipes():
        task = name.split("/")[0]
        assert load_config(task, [recipe_path(name)]).task == task


def test_names_resolve_to_the_packaged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    want = recipe_path("cervical/demo.yaml")
    assert want.is_file() and want.parent.parent.name == "configs"
    for name in ("demo", "demo.yaml", "cervical/demo", "cervical/demo.yaml", "configs/cervical/demo.yaml",
                 tmp_path / "old_checkout" / "configs" / "cervical" / "demo.yaml"):
        assert resolve_recipe("cervical", name) == want, name
    assert resolve_recipe("lumbar", "demo") == recipe_path("lumbar/demo.yaml")
    local = tmp_path / "demo"
    local.write_text("experiment: local\n")
    assert resolve_recipes("cervical", ["demo", "cervical/tiny"]) == [Path("demo"), recipe_path("cervical/tiny")]


def test_unknown_name_lists_the_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"nope: no such config file or packaged recipe; recipes: .*cervical/tiny"):
        resolve_recipe("cervical", "nope")
