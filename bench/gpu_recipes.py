"""Training throughput and memory of the seed-sized recipes, and their inference per study, on one device.

Made for a session with a GPU: one short run times every network at the seeds' sizes (512 px slices, the seeds'
backbones, the 3D recipes). Each row is one stage of a recipe: the stage's own model (``Stage.build_model``),
``forward`` and ``loss`` (the code ``spinelab train`` runs) on random batches of the recipe's input and batch
size, AdamW steps under the recipe's training precision. Then one study's inference: for the 3D stages on a
volume the size of a neck CT on the recipe's grid along the route's path (Gaussian sliding windows and the
left-right mirror: ``crop_probability`` on the fracture crop, ``grid_probabilities`` on the vertebra grid, the
functions ``spinelab segment`` calls); for the 2D stages one study's input in one forward pass (cervical
stage 1: ``infer_offsets`` sequences of ``seq_len`` slices; stage 2: the seven vertebrae's slices; lumbar: one
image per point model, the 25 crop pairs), no TTA.
Random weights and inputs: the time and memory are the networks', not a trained model's. Peak memory is
``torch.cuda.max_memory_allocated`` (GPU only). ``--tiny`` swaps in the tiny recipes, so the same code runs in
seconds on a CPU (the test does).

The nominal study: a C1-C7 box of 110 x 60 x 80 mm (z, y, x) and a neck CT of 240 x 250 x 250 mm.

    python bench/gpu_recipes.py [--recipes cervical/fracseg_7th,lumbar/seed_like,...] [--steps 20] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import machine_description, replace_block  # noqa: E402
from spinelab.config.load import load_config  # noqa: E402
from spinelab.configs import recipe_path  # noqa: E402
from spinelab.infer.runtime import Runtime  # noqa: E402
from spinelab.precision import inference_precision  # noqa: E402
from spinelab.tasks.cervical.fracseg.fracture_map import crop_probability  # noqa: E402
from spinelab.tasks.cervical.fracseg.fracture_stage import FractureSegStage  # noqa: E402
from spinelab.tasks.cervical.fracseg.overall_stage import OverallStage  # noqa: E402
from spinelab.tasks.cervical.fracture import FractureStage  # noqa: E402
from spinelab.tasks.cervical.localization import LocalizerStage  # noqa: E402
from spinelab.tasks.cervical.seg3d.seg_stage import SegStage  # noqa: E402
from spinelab.tasks.cervical.seg3d.segment import grid_probabilities  # noqa: E402
from spinelab.tasks.lumbar.grading import GradingStage  # noqa: E402
from spinelab.tasks.lumbar.points import SagT2PointStage  # noqa: E402
from spinelab.train.stage import Stage  # noqa: E402

#: the C1-C7 box (z, y, x) mm the fracture crop covers, before its margin, and the CT the vertebra grid covers
CERVICAL_BOX_MM = (110.0, 60.0, 80.0)
NECK_CT_MM = (240.0, 250.0, 250.0)
# fracseg_7th's seg section is seg3d_7th's, so seg3d_7th needs no row of its own
SEED_RECIPES = ("cervical/fracseg_7th,cervical/seg3d_1st,cervical/rsna3rd_effnet,cervical/trantuan_convnext,"
                "lumbar/seed_like")
TINY_RECIPES = {"cervical/fracseg_7th": "cervical/fracseg_tiny", "cervical/seg3d_7th": "cervical/seg3d_tiny",
                "cervical/seg3d_1st": "cervical/seg3d_tiny", "cervical/rsna3rd_effnet": "cervical/tiny",
                "cervical/trantuan_convnext": "cervical/tiny", "lumbar/seed_like": "lumbar/tiny"}


@dataclass
class Case:
    """One stage of one recipe: how to build it, a random training batch (``item``: one item's input, e.g.
    ``96x192x192``; ``batch_size`` of them), and one study's inference."""

    recipe: str
    stage: Stage
    item: str
    batch_size: int
    batch: Callable[[torch.device], dict[str, Any]]
    infer: Callable[[torch.nn.Module, Runtime], tuple[str, Callable[[], object]]]

    @property
    def shape(self) -> str:
        return f"{self.item} x {self.batch_size}"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _fracture_cases(recipe: str, cfg: Any, run: Path) -> list[Case]:
    seg_sec, ov = cfg.fracture_seg, cfg.overall
    b, c = seg_sec.train.batch_size, cfg.grid.in_chans
    margin = 2 * cfg.grid.margin_mm
    crop = tuple(int(round((mm + margin) / s)) for mm, s in zip(CERVICAL_BOX_MM, cfg.grid.spacing_mm, strict=True))

    def seg_batch(dev: torch.device) -> dict[str, Any]:
        return {"image": torch.rand(b, c, *seg_sec.patch, device=dev),
                "mask": torch.randint(0, 2, (b, 1, *seg_sec.patch), device=dev)}

    def seg_infer(model: torch.nn.Module, rt: Runtime) -> tuple[str, Callable[[], object]]:
        image = np.random.default_rng(0).random((c, *crop), dtype=np.float32)
        return f"crop {_dims(crop)}", lambda: crop_probability([model], image, seg_sec, rt, tta=True)

    bo = ov.train.batch_size

    def ov_batch(dev: torch.device) -> dict[str, Any]:
        return {"image": torch.rand(bo, 2, *ov.size, device=dev), "target": torch.randint(0, 2, (bo, 8), device=dev)}

    def ov_infer(model: torch.nn.Module, rt: Runtime) -> tuple[str, Callable[[], object]]:
        x = torch.rand(1, 2, *ov.size)
        return _dims(ov.size), lambda: rt.run(model, x)

    return [Case(recipe, FractureSegStage(cfg, run), _dims(seg_sec.patch), b, seg_batch, seg_infer),
            Case(recipe, OverallStage(cfg, run), _dims(ov.size), bo, ov_batch, ov_infer)]


def _vertebra_case(recipe: str, cfg: Any, run: Path) -> Case:
    sec = cfg.seg
    b, roi = sec.train.batch_size, tuple(sec.roi)
    grid = tuple(sec.size) if sec.grid == "fixed" else tuple(int(round(mm / sec.spacing_mm)) for mm in NECK_CT_MM)

    def batch(dev: torch.device) -> dict[str, Any]:
        return {"image": torch.rand(b, sec.in_chans, *roi, device=dev),
                "mask": torch.randint(0, sec.n_classes, (b, 1, *roi), device=dev)}

    def infer(model: torch.nn.Module, rt: Runtime) -> tuple[str, Callable[[], object]]:
        x = torch.rand(1, sec.in_chans, *grid)
        return f"{sec.grid} {_dims(grid)}", lambda: grid_probabilities([model], x, sec, rt, tta=True)

    return Case(recipe, SegStage(cfg, run), _dims(roi), b, batch, infer)


def _forward_once(stage: Stage, batch: Callable[[int, torch.device], dict[str, Any]], n: int, what: str
                  ) -> Callable[[torch.nn.Module, Runtime], tuple[str, Callable[[], object]]]:
    """One study's inference of a 2D stage: its input (``n`` items of ``batch``) in one eval forward pass."""

    def infer(model: torch.nn.Module, rt: Runtime) -> tuple[str, Callable[[], object]]:
        inputs = batch(n, torch.device("cpu"))
        prepared = rt.prepare(model)

        @torch.inference_mode()
        def call() -> object:
            with rt.autocast():
                return stage.forward(prepared, {k: v.to(rt.device) for k, v in inputs.items()})

        return what, call

    return infer


def _slice_cases(recipe: str, cfg: Any, run: Path) -> list[Case]:
    """The cervical slice route: stage 1 (slice sequences: vertebra ratios and boxes), stage 2 (per vertebra)."""
    s1, s2 = cfg.stage1, cfg.stage2
    c1, c2, t, steps = 3 * len(s1.windows), 3 * len(s2.windows), s1.seq_len, s2.n_slices // 3
    size1, size2 = s1.image_size, s2.image_size

    def batch1(n: int, dev: torch.device) -> dict[str, Any]:
        return {"image": torch.rand(n, t, c1, size1, size1, device=dev), "pos": torch.rand(n, t, device=dev),
                "ratio": torch.rand(n, t, 7, device=dev), "box": torch.rand(n, t, 4, device=dev),
                "box_mask": torch.rand(n, t, device=dev) > 0.5, "valid": torch.ones(n, t, device=dev)}

    def batch2(n: int, dev: torch.device) -> dict[str, Any]:
        return {"image": torch.rand(n, 7, steps, c2, size2, size2, device=dev),
                "mask": torch.ones(n, 7, dtype=torch.bool, device=dev),
                "target": torch.randint(0, 2, (n, 8), device=dev),
                "step_target": torch.randint(0, 2, (n, 7, steps), device=dev),
                "fake": torch.zeros(n, 7, dtype=torch.bool, device=dev)}

    st1, st2 = LocalizerStage(cfg, run), FractureStage(cfg, run)
    b1, b2 = s1.train.batch_size, s2.train.batch_size
    return [Case(recipe, st1, f"{t} x {size1}px", b1, lambda dev: batch1(b1, dev),
                 _forward_once(st1, batch1, s1.infer_offsets, f"{s1.infer_offsets} x {t} slices")),
            Case(recipe, st2, f"7x{steps} x {size2}px", b2, lambda dev: batch2(b2, dev),
                 _forward_once(st2, batch2, 1, f"7 x {steps} steps"))]


def _lumbar_cases(recipe: str, cfg: Any, run: Path) -> list[Case]:
    """The lumbar route: a stage-1 heatmap model (sagittal T2) and the stage-2 grader."""
    s1, s2 = cfg.stage1, cfg.stage2
    points = SagT2PointStage(cfg, run)
    n_points, size = len(points.point_names), s1.image_size

    def batch1(n: int, dev: torch.device) -> dict[str, Any]:
        return {"image": torch.rand(n, s1.in_slices, size, size, device=dev),
                "xy": torch.rand(n, n_points, 2, device=dev) * size,
                "valid": torch.ones(n, n_points, dtype=torch.bool, device=dev)}

    def batch2(n: int, dev: torch.device) -> dict[str, Any]:
        crop = (n, 25, s2.in_slices, s2.crop_size, s2.crop_size)
        return {"sag": torch.rand(*crop, device=dev), "axial": torch.rand(*crop, device=dev),
                "mask": torch.ones(n, 25, 2, dtype=torch.bool, device=dev),
                "condition": torch.arange(25, device=dev).repeat(n, 1) // 5,
                "level": torch.arange(25, device=dev).repeat(n, 1) % 5,
                "target": torch.randint(0, 3, (n, 25), device=dev)}

    grader = GradingStage(cfg, run)
    b1, b2 = s1.train.batch_size, s2.train.batch_size
    return [Case(recipe, points, f"{size}px", b1, lambda dev: batch1(b1, dev),
                 _forward_once(points, batch1, 1, "1 image")),
            Case(recipe, grader, f"25x2 x {s2.crop_size}px", b2, lambda dev: batch2(b2, dev),
                 _forward_once(grader, batch2, 1, "25 crop pairs"))]


def recipe_cases(recipe: str, file: str, run: Path) -> list[Case]:
    """The timed stages of ``recipe`` (``task/name``; read from ``file``: the recipe itself or, with
    ``--tiny``, a tiny one)."""
    task = recipe.split("/")[0]
    cfg = load_config(task, [recipe_path(f"{file}.yaml")])
    if task == "lumbar":
        return _lumbar_cases(recipe, cfg, run)
    if cfg.route == "fracseg":
        return _fracture_cases(recipe, cfg, run) + ([_vertebra_case(recipe, cfg, run)] if cfg.seg else [])
    if cfg.route == "slices":
        return _slice_cases(recipe, cfg, run)
    return [_vertebra_case(recipe, cfg, run)]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_gib(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def time_case(case: Case, dev: torch.device, precision: str, steps: int, warmup: int = 2) -> dict[str, Any]:
    """Training steps per second and peak memory, then one study's inference (after one warm-up call)."""
    torch.manual_seed(0)
    stage = case.stage
    model = stage.build_model().to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    batch = case.batch(dev)
    _reset_peak(dev)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(dev)
            t0 = time.perf_counter()
        with autocast:
            loss = stage.loss(stage.forward(model, batch), batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(dev)
    step_s = (time.perf_counter() - t0) / steps
    train_peak = _peak_gib(dev)
    del opt, batch
    rt = Runtime(device=str(dev), precision=precision, channels_last=False)
    volume, call = case.infer(model, rt)
    call()  # warm-up: cudnn autotuning, allocator
    _reset_peak(dev)
    _sync(dev)
    t0 = time.perf_counter()
    call()
    _sync(dev)
    row = {"recipe": case.recipe, "stage": stage.name, "model": stage.model_config.name, "patch": case.shape,
           "precision": precision, "step_s": step_s,
           "samples_s": case.batch_size / step_s, "train_gib": train_peak,
           "volume": volume, "infer_s": time.perf_counter() - t0, "infer_gib": _peak_gib(dev),
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    del model
    _reset_peak(dev)
    return row


def _gib(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table_row(r: dict[str, Any]) -> str:
    return (f"| `{r['recipe']}` | {r['stage']} | {r['model']} ({r['params_m']:.1f} M) | {r['patch']} | "
            f"{r['precision']} | {1 / r['step_s']:.2f} | {r['samples_s']:.1f} | {_gib(r['train_gib'])} | "
            f"{r['volume']} | {r['infer_s']:.2f} | {_gib(r['infer_gib'])} |")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=SEED_RECIPES)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per stage (after 2 warm-up)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default=None, help="override the recipes' training precision (bf16, fp32)")
    ap.add_argument("--tiny", action="store_true", help="the tiny recipes instead (CPU seconds: the code path)")
    ap.add_argument("--write", action="store_true", help="rewrite the gpu_recipes block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: autotuned convolutions, as nnU-Net does
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in [r for r in args.recipes.split(",") if r]:
            file = TINY_RECIPES.get(recipe, recipe) if args.tiny else recipe
            for case in recipe_cases(recipe, file, Path(tmp)):
                precision = inference_precision(args.precision or case.stage.cfg.trainer.precision)
                rows.append(time_case(case, dev, precision, args.steps))
                print(table_row(rows[-1]), flush=True)
    if args.write:
        replace_block("gpu_recipes", "\n".join([
            "## Seed-sized recipes: training throughput and inference (`bench/gpu_recipes.py`)", "",
            f"Machine: {machine_description()}, torch {torch.__version__}, device `{dev}`. Each stage's own model, "
            f"forward and loss on random batches of the recipe's input and batch size, AdamW, {args.steps} timed "
            "steps after 2 warm-up. Inference, after one warm-up call: the 3D stages one study on the route's path "
            "(Gaussian sliding windows and the left-right mirror) on a nominal neck CT (C1-C7 box 110 x 60 x 80 mm "
            "plus the margin; the CT 240 x 250 x 250 mm) on the recipe's grid; the 2D stages one study's input in "
            "one forward pass, no TTA. Random weights. Peak memory: `torch.cuda.max_memory_allocated`.", "",
            "| recipe | stage | network (parameters) | input x batch | precision | train steps/s | samples/s | "
            "train peak GiB | inference volume | inference s | inference peak GiB |",
            "|---|---|---|---|---|---:|---:|---:|---|---:|---:|",
            *(table_row(r) for r in rows), "",
            f"Command: `python bench/gpu_recipes.py --recipes {args.recipes} --steps {args.steps} --write`."]))
    return rows


if __name__ == "__main__":
    main()
