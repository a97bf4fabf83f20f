"""What the embedding cache of the sequence route's stage ``study`` saves: seconds per epoch of the study head
reading the cached fp16 embeddings against re-running the frozen slice CNN for every item, in the same run (the
same stage-1, slice labels and slice CNN of fold 0).

The run is trained up to stage ``slices`` once (reused when it exists), then stage ``study`` is trained twice on
fold 0 with the same settings: ``study.cache=true`` (the cache is built first, its build time reported apart)
and ``study.cache=false``.

    python bench/embedding_cache.py [--studies 12 --size 128 --epochs 3] [--set key=value ...] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import REPO, machine_description, replace_block  # noqa: E402
from spinelab import api  # noqa: E402
from spinelab.config.load import load_config  # noqa: E402

RECIPE = REPO / "src/spinelab/configs/cervical/sequence_tiny.yaml"
#: a CPU-sized slice CNN (resnet18 at 64 px over every slice of the z-range): the frozen CNN is what costs
DEFAULT_SET = ["stage1.train.epochs=1", "slices.model.name=sequence_slice_model", "slices.model.backbone=resnet18",
               "slices.model.hidden=32", "slices.image_size=64", "slices.slice_step=1", "slices.train.epochs=1",
               "slices.windows_per_study=1", "study.max_steps=96", "trainer.accelerator=cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of stage study in each mode")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides of the recipe")
    parser.add_argument("--work", type=Path, default=REPO / "bench/_work/embedding_cache")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    data = args.work / f"data_{args.studies}x{args.size}"
    if not (data / "train.csv").is_file():
        from spinelab.data.synthetic.cervical import generate_cervical_dataset

        generate_cervical_dataset(data, studies=args.studies, test_studies=0, size=args.size, seed=args.seed)
    sets = [f"data.dataset_dir={data}", *DEFAULT_SET, *args.set, f"study.train.epochs={args.epochs}"]
    cfg = load_config("cervical", [RECIPE], sets)
    run = args.work / "run"
    for stage in ("stage1", "slices"):
        api.train(cfg, run_dir=run, fold="0", stage=stage, resume=True)

    from spinelab.tasks.cervical.sequence.study_stage import StudyHeadStage
    from spinelab.train.run import train_stage
    from spinelab.train.run_folder import read_run_config

    cfg = read_run_config(run)  # the prepared data paths of the run
    cfg.study.train.epochs = args.epochs
    results = {}
    for cached in (True, False):
        cfg.study.cache = cached
        stage = StudyHeadStage(cfg, run, cfg.slices.seeds[0])
        shutil.rmtree(run / stage.name / "fold_0", ignore_errors=True)
        if cached:
            shutil.rmtree(run / "embeddings", ignore_errors=True)  # the build is timed too
        start = time.perf_counter()
        out = train_stage(stage, trainer_cfg=cfg.trainer, fold=0, progress=False)
        total = time.perf_counter() - start
        results[cached] = {"epoch_s": out["seconds"] / args.epochs, "total_s": total,
                           "build": dict(stage.last_build), "score": out["scores"].get("competition_score")}
    meta = json.loads(next((run / "embeddings").rglob("meta.json")).read_text())
    # the cached features against the CNN's own, on a few studies (fp16 rounding only)
    cfg.study.cache = False
    stage = StudyHeadStage(cfg, run, cfg.slices.seeds[0])
    live = stage.features(0, [], progress=False)
    cfg.study.cache = True
    cached = stage.features(0, [], progress=False)
    some = sorted(stage.studies.labels.index)[:3]
    diff = max(float(np.abs(np.asarray(live(u)) - np.asarray(cached(u), dtype=np.float32)).max()) for u in some)
    scale = max(float(np.abs(np.asarray(live(u))).max()) for u in some)
    load = os.getloadavg()[0]
    ranges = [s["z_range"] for s in json.loads((run / "slice_labels" / "index.json").read_text())["studies"].values()]
    slices = sum(z1 - z0 + 1 for z0, z1 in ranges)
    c, u = results[True], results[False]
    size_mb = sum(p.stat().st_size for p in (run / "embeddings").rglob("*.npy")) / 2**20
    lines = [
        "## Embedding cache of the sequence route (`bench/embedding_cache.py`)",
        "",
        f"Machine: {machine_description()} (load average {load:.1f} at the end: the machine is shared, so "
        "absolute seconds vary several-fold between runs; the two modes ran back to back). "
        f"Dataset: {args.studies} synthetic studies at {args.size} px (seed "
        f"{args.seed}), fold 0; recipe `{RECIPE.relative_to(REPO)}` with {' '.join(DEFAULT_SET + args.set)}; "
        f"stage `study` trained {args.epochs} epochs in each mode on the same run (same stage 1, slice labels "
        f"and frozen slice CNN). The studies' z-ranges hold {slices} slices in all.",
        "",
        "| stage `study` | seconds per epoch | whole stage (s) |",
        "|---|---:|---:|",
        f"| cached embeddings (`study.cache: true`, fp16, memory-mapped) | {c['epoch_s']:.2f} | {c['total_s']:.1f} |",
        f"| re-running the frozen CNN per item (`study.cache: false`) | {u['epoch_s']:.2f} | {u['total_s']:.1f} |",
        "",
        f"Speed-up per epoch: {u['epoch_s'] / max(c['epoch_s'], 1e-9):.1f}x. Building the cache once "
        f"({meta['built']} studies, {size_mb:.2f} MiB on disk) took {meta['build_seconds']:.1f} s: it pays for "
        f"itself after {meta['build_seconds'] / max(u['epoch_s'] - c['epoch_s'], 1e-9):.1f} epochs, and the seed's "
        "study model trains for tens of epochs. The cached features equal the CNN's to "
        f"{diff:.1e} (values up to {scale:.2f}: fp16 rounding). Held-out competition metric after the epochs: "
        f"cached {c['score'] if c['score'] is None else round(c['score'], 4)}, uncached "
        f"{u['score'] if u['score'] is None else round(u['score'], 4)} (a few held-out studies and a handful of "
        "optimiser steps: the rounding difference is enough to move them). "
        f"Command: `python bench/embedding_cache.py {' '.join(sys.argv[1:])}`.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_block("embedding_cache", text)


if __name__ == "__main__":
    main()
