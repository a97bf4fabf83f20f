"""``FracsegConfig``: the tiny recipe loads as the fracseg route; bad grids, rounds and patches are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from spinelab.config.fracseg import MAX_ROUNDS, FracsegConfig, round_name
from spinelab.config.load import load_config
from spinelab.errors import ConfigError
from spinelab.tasks.catalog import get_route
from spinelab.tasks.route import resolve

REPO = Path(__file__).resolve().parents[2]


def test_tiny_recipe_is_the_fracseg_route_with_one_stage_per_round() -> None:
    cfg = load_config("cervical", [REPO / "src/spinelab/configs/cervical/fracseg_tiny.yaml"], ["rounds=3"])
    assert isinstance(cfg, FracsegConfig) and cfg.route == "fracseg" and cfg.rounds == 3
    training = resolve(get_route("cervical", "fracseg").training)
    assert training.stage_names == ["seg", *(round_name(k) for k in range(1, MAX_ROUNDS + 1)), "overall"]
    run_all = [s.name for s in training.steps if s.selected("all", cfg) and s.stages is not None]
    assert run_all == ["seg", "fracture_seg", "fracture_seg_r2", "fracture_seg_r3", "overall"]
    assert FracsegConfig().grid.spacing_mm == (0.8, 0.4, 0.4) and FracsegConfig().grid.margin_mm == 5.0


@pytest.mark.parametrize(("override", "message"), [
    ("grid.spacing_mm=[0.8, 0, 0.4]", "spacing_mm must be positive"),
    (f"rounds={MAX_ROUNDS + 1}", "rounds"),
    ("fracture_seg.patch=[0, 16, 16]", "patch must be positive"),
    ("threshold=1.0", "threshold"),
])
def test_bad_settings_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("cervical", [REPO / "src/spinelab/configs/cervical/fracseg_tiny.yaml"], [override])
