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
import time
from pathlib import Path

from spinelab.api import predict, train
from spinelab.config.load import load_config
from spinelab.data.synthetic.lumbar import generate_lumbar_dataset
from spinelab.io.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=Path("/tmp/lumbench"))
    parser.add_argument("--studies", type=int, default=120)
    parser.add_argument("--test-studies", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/lumbench_run"))
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "lumbar" / "bench.yaml")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--device", default="cpu", help="inference device of the test-split prediction")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. stage2.train.epochs=3")
    args = parser.parse_args()
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
    atomic_write_json(args.run_dir / "bench_summary.json", summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
