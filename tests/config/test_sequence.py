"""The ``cervical/sequence`` config: the route key picks it, its recipes, the seeds and their backbones."""

from __future__ import annotations

import pytest

from spinelab.config.load import load_config
from spinelab.config.sequence import SequenceConfig
from spinelab.configs import recipe_path
from spinelab.errors import ConfigError
from spinelab.tasks.catalog import route_of
from spinelab.tasks.cervical.sequence.pipeline import apply_seeds, parse_seeds
from spinelab.tasks.route import resolve


def test_the_route_key_selects_the_sequence_config_and_its_stages() -> None:
    cfg = load_config("cervical", overrides=["route=sequence"])
    assert isinstance(cfg, SequenceConfig) and cfg.study.max_steps == 192 and cfg.slices.seeds == [0]
    assert resolve(route_of(cfg).training).stage_names == ["stage1", "frames", "slices", "study"]
    assert cfg.stage1.model.name == "cervical_slice_localizer"  # the slice route's stage 1, same section


def test_the_packaged_recipes() -> None:
    tiny = load_config("cervical", [recipe_path("cervical/sequence_tiny")])
    assert tiny.route == "sequence" and tiny.slices.model.name == "test_sequence_slice_model"
    seed = load_config("cervical", [recipe_path("cervical/sequence_3rd")])
    assert seed.study.max_steps == 192 and seed.slices.backbones == ["resnest50d", "seresnext50_32x4d"]
    seed.slices.seeds = [0, 1, 2]
    assert [seed.slices.backbone_of(i) for i in range(3)] == ["resnest50d", "seresnext50_32x4d", "resnest50d"]


def test_seeds_from_the_command_line() -> None:
    assert parse_seeds("0,1,2") == [0, 1, 2]
    cfg = apply_seeds(load_config("cervical", overrides=["route=sequence"]), "3,5")
    assert cfg.slices.seeds == [3, 5]
    for bad in ("a,b", "1,1", "", "-1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="cervical/sequence"):
        apply_seeds(load_config("cervical"), "0,1")


@pytest.mark.parametrize(("override", "match"), [
    ("slices.span=2", "slices.span must be odd"),
    ("slices.seeds=[1, 1]", "distinct"),
    ("study.max_steps=1", "max_steps"),
])
def test_bad_values_are_one_config_error(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("cervical", overrides=["route=sequence", override])
