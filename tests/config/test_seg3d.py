"""The ``cervical/seg3d`` config: the route key picks it, the input grid, label schemes and external data."""

from __future__ import annotations

import pytest

from spinelab.config.load import load_config
from spinelab.config.seg3d import Seg3dConfig
from spinelab.configs import recipe_path
from spinelab.errors import ConfigError


def test_the_route_key_selects_the_seg3d_config_and_its_defaults() -> None:
    cfg = load_config("cervical", overrides=["route=seg3d"])
    assert isinstance(cfg, Seg3dConfig) and cfg.seg.grid == "fixed" and cfg.seg.roi == (128, 128, 128)
    assert cfg.seg.n_classes == 8 and cfg.seg.in_chans == 1 and cfg.seg.label_scheme == "rsna"
    t1 = load_config("cervical", overrides=["route=seg3d", "seg.include_t1=true", "seg.normalize=minmax",
                                            "seg.windows=[[400, 1800], [40, 400]]"])
    assert t1.seg.n_classes == 9 and t1.seg.in_chans == 1  # min-max: one channel whatever the windows


@pytest.mark.parametrize(("name", "grid", "roi", "model"), [
    ("cervical/seg3d_tiny", "fixed", (32, 32, 32), "test_vertebra_seg3d_unet"),
    ("cervical/seg3d_1st", "fixed", (128, 128, 128), "vertebra_seg3d_timm"),
    ("cervical/seg3d_7th", "isotropic", (160, 128, 128), "vertebra_seg3d_segresnet"),
])
def test_the_packaged_recipes(name: str, grid: str, roi: tuple, model: str) -> None:
    cfg = load_config("cervical", [recipe_path(name)])
    assert cfg.route == "seg3d" and cfg.seg.grid == grid and cfg.seg.roi == roi and cfg.seg.model.name == model
    if name.endswith("7th"):
        assert cfg.seg.spacing_mm == 1.5 and cfg.seg.n_classes == 9


@pytest.mark.parametrize(("override", "match"), [
    ("seg.size=[0, 8, 8]", "seg.size must be positive"),
    ("seg.windows=[]", "at least one"),
    ("seg.label_scheme=totalseg", "unknown label_scheme 'totalseg'"),
    ("seg.label_scheme={50: 8}", "outside 1..7"),
    ("seg.grid=cube", "seg.grid"),
])
def test_bad_values_are_one_config_error(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("cervical", overrides=["route=seg3d", override])
