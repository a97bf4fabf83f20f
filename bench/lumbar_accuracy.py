"""Lumbar acceptance benchmark: synthetic studies, train with fold 0 held out, score the held-out fold with
the whole pipeline (images only) against the weight-optimal constant, and report the level-point error.

Usage::

    python bench/lumbar_accuracy.py --dataset /tmp/lumbench --studies 120 --run-dir /tmp/lumbench_run

Prints and writes ``RUN_DIR/bench_summary.json`` (lumbar_score, constant score, relative improvement,
point error in mm per level, and the same on the synthetic test split).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from spinelab.api import predict, train
from spinelab.config.load import load_config
from spinelab.data.synthetic.lumbar import generate_lumbar_dataset
from spinelab.io.atomic import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import machine_description, replace_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path("/tmp/lumbench"))
    parser.add_argument("--studies", type=int, default=120)
    parser.add_argument("--test-studies", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/lumbench_run"))
    parser.add_argument("--config", type=Path, default=ROOT / "src/spinelab/configs" / "lumbar" / "bench.yaml")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--device", default="cpu", help="inference device of the test-split prediction")
    parser.add_argument("--write-md", action="store_true", help="write the result block of BENCHMARKS.md")
    parser.add_argument("--from-summary", action="store_true",
                        help="only rewrite the BENCHMARKS.md block from RUN_DIR/bench_summary.json")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. stage2.train.epochs=3")
    args = parser.parse_args()
    if args.from_summary:
        summary = json.loads((args.run_dir / "bench_summary.json").read_text())
        summary.setdefault("command", f"python bench/lumbar_accuracy.py --dataset {args.dataset} --studies "
                                      f"{args.studies} --size {args.size} --run-dir {args.run_dir}")
        summary.setdefault("machine", machine_description())
        write_block(summary)
        return
    if not (args.dataset / "train.csv").is_file():
        generate_lumbar_dataset(args.dataset, studies=args.studies, test_studies=args.test_studies,
                                size=args.size, seed=args.seed, workers=args.workers)
    cfg = load_config("lumbar", [args.config], [f"data.dataset_dir={args.dataset}", *args.overrides])
    start = time.perf_counter()
    train(cfg, run_dir=args.run_dir, fold=args.fold)
    train_s = time.perf_counter() - start
    cv = json.loads((args.run_dir / "cv_scores.json").read_text())
    start = time.perf_counter()
    result = predict("lumbar", model=args.run_dir, input=args.dataset, out=args.run_dir / "test_predictions",
                     device=args.device)
    test = json.loads(Path(result["evaluation"]).read_text()) if result["evaluation"] else {}
    summary = {
        "train_studies": args.studies, "held_out_studies": cv["studies"], "train_seconds": round(train_s),
        "cv_lumbar_score": cv["lumbar_score"], "cv_constant_score": cv["weight_optimal_constant_score"],
        "cv_relative_improvement": cv["relative_improvement"], "cv_point_error_mm": cv["point_error_mm"],
        "test_studies": test.get("studies"), "test_lumbar_score": test.get("lumbar_score"),
        "test_constant_score": test.get("weight_optimal_constant_score"),
        "test_point_error_mm": test.get("point_error_mm"),
        "predict_seconds": round(time.perf_counter() - start),
    }
    summary["command"] = "python bench/lumbar_accuracy.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("dataset", args.dataset), ("studies", args.studies),
                                                    ("size", args.size), ("run_dir", args.run_dir)))
    summary["machine"] = machine_description()
    atomic_write_json(args.run_dir / "bench_summary.json", summary)
    print(json.dumps(summary, indent=2))
    if args.write_md:
        write_block(summary)


def write_block(summary: dict) -> None:
    """The lumbar block of BENCHMARKS.md: held-out score vs the constant, point errors per level."""
    cv_pts, test_pts = summary["cv_point_error_mm"], summary.get("test_point_error_mm") or {}
    levels = sorted(cv_pts.get("by_level", {}))
    rows = [
        "| split | studies | lumbar_score | weight-optimal constant | relative improvement | point error mm "
        "(mean / median) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| CV fold 0 (held out) | {summary['held_out_studies']} | {summary['cv_lumbar_score']:.3f} | "
        f"{summary['cv_constant_score']:.3f} | {100 * summary['cv_relative_improvement']:.0f} % | "
        f"{cv_pts.get('mean_mm', float('nan')):.1f} / {cv_pts.get('median_mm', float('nan')):.1f} |",
    ]
    if summary.get("test_lumbar_score") is not None:
        rel = 1 - summary["test_lumbar_score"] / summary["test_constant_score"]
        rows.append(f"| synthetic test split | {summary['test_studies']} | {summary['test_lumbar_score']:.3f} | "
                    f"{summary['test_constant_score']:.3f} (fitted on these labels) | {100 * rel:.0f} % | "
                    f"{test_pts.get('mean_mm', float('nan')):.1f} / {test_pts.get('median_mm', float('nan')):.1f} |")
    level_rows = ["| points | " + " | ".join(levels) + " |", "|---|" + "---:|" * len(levels),
                  "| CV mean error mm | " + " | ".join(f"{cv_pts['by_level'][lv]:.1f}" for lv in levels) + " |"]
    groups = cv_pts.get("by_group", {})
    body = "\n".join([
        "## Lumbar accuracy (`bench/lumbar_accuracy.py`)", "",
        f"`{summary['command']}` with the recipe `lumbar/bench.yaml`: {summary['train_studies']} synthetic studies, "
        f"fold 0 of 5 held out and predicted by the whole pipeline from the images (stage-1 points, then "
        f"stage 2); the constant is the weight-optimal one of the training folds. Training took "
        f"{summary['train_seconds']} s on {summary['machine']} (shared). The series are 64 px over a 260-300 mm "
        "field of view (about 4.3 mm per pixel), so the point errors below are 1-2 pixels.", "",
        *rows, "", "Level-point error (3-D world distance to the labelled point, mm) per level on the held-out "
        "fold; per group: " + ", ".join(f"{g} {v:.1f}" for g, v in groups.items()) + ".", "", *level_rows, "",
        "Acceptance target: lumbar_score at least 40 % below the weight-optimal constant.",
    ])
    replace_block("lumbar_accuracy", body)


if __name__ == "__main__":
    main()
