"""bench/gpu_recipes.py: the GPU benchmark's code path runs (tiny recipes on the CPU) and sizes the seed's volumes
from the recipes, so a session with a GPU can run it as it is."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from spinelab.infer.runtime import Runtime

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("gpu_recipes", BENCH / "gpu_recipes.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_recipes_train_and_infer_every_stage() -> None:
    rows = _load().main(["--tiny", "--steps", "1", "--device", "cpu"])
    assert [(r["recipe"], r["stage"]) for r in rows] == [
        ("cervical/fracseg_7th", "fracture_seg"), ("cervical/fracseg_7th", "overall"), ("cervical/fracseg_7th", "seg"),
        ("cervical/seg3d_1st", "seg"), ("cervical/rsna3rd_effnet", "stage1"), ("cervical/rsna3rd_effnet", "stage2"),
        ("cervical/trantuan_convnext", "stage1"), ("cervical/trantuan_convnext", "stage2"),
        ("lumbar/seed_like", "stage1_sag_t2"), ("lumbar/seed_like", "stage2")]
    for r in rows:
        assert r["step_s"] > 0 and r["infer_s"] > 0 and r["samples_s"] > 0
        assert r["train_gib"] is None  # peak memory only on a GPU


def test_seed_recipes_are_timed_at_the_seeds_sizes(tmp_path: Path) -> None:
    g = _load()
    cases = {c.stage.name: c for c in g.recipe_cases("cervical/fracseg_7th", "cervical/fracseg_7th", tmp_path)}
    assert cases["fracture_seg"].shape == "96x192x192 x 2"
    assert cases["overall"].shape == "96x96x96 x 4"
    assert cases["seg"].shape == "160x128x128 x 2"
    assert cases["fracture_seg"].stage.build_model().body.filters[:2] == [32, 64]
    rt = Runtime(device="cpu")
    # the C1-C7 box plus 5 mm on each side, on the seed's 0.8 / 0.4 / 0.4 mm grid
    assert cases["fracture_seg"].infer(None, rt)[0] == "crop 150x175x225"
    assert cases["seg"].infer(None, rt)[0] == "isotropic 160x167x167"


def test_slice_recipes_are_timed_at_512_px(tmp_path: Path) -> None:
    g = _load()
    cases = {c.stage.name: c for c in g.recipe_cases("cervical/rsna3rd_effnet", "cervical/rsna3rd_effnet", tmp_path)}
    assert cases["stage1"].shape == "32 x 512px x 4"
    assert cases["stage2"].shape == "7x8 x 384px x 2"
    batch = cases["stage1"].batch(torch.device("cpu"))
    assert tuple(batch["image"].shape) == (4, 32, 3, 512, 512)
    lumbar = {c.stage.name: c for c in g.recipe_cases("lumbar/seed_like", "lumbar/seed_like", tmp_path)}
    assert lumbar["stage2"].shape == "25x2 x 128px x 8"
