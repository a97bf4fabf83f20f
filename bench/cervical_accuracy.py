"""Cervical acceptance benchmark: a synthetic RSNA 2022 dataset (default 100 studies at 256 px), the whole
pipeline trained with fold 0 held out, and the held-out competition metric against the per-column prevalence
constant, with vertebra-level AUC.

    python bench/cervical_accuracy.py [--studies 100 --size 256 --recipe RECIPE.yaml] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import REPO, machine_description, replace_block  # noqa: E402
from spinelab import api  # noqa: E402
from spinelab.config.load import load_config, read_run_config  # noqa: E402


def range_quality(loc: dict, cfg: Any, folds: Path) -> tuple[float, float]:
    """Mean share of each true vertebra slice range (ratio > 0.2) inside the predicted range, and mean share
    of each predicted range outside the true one, over the held-out (fold 0) studies with a segmentation.
    Both on the canonical grid the models see (the label table is on the stored grid)."""
    import pandas as pd

    from spinelab.registry import VERTEBRAE
    from spinelab.tasks.cervical.studies import CervicalStudies, canonical_slice_table

    studies = CervicalStudies(cfg)
    labels = studies.slice_labels
    held_out = set(pd.read_csv(folds).query("fold == 0").StudyInstanceUID)
    covered, outside = [], []
    for uid, rows in labels[labels.StudyInstanceUID.isin(held_out)].groupby("StudyInstanceUID"):
        rows = canonical_slice_table(rows, studies.volume(uid)).fillna(0)
        for v in VERTEBRAE:
            idx = rows.index[rows[v] > 0.2]
            if idx.empty:
                continue
            true = set(range(int(idx.min()), int(idx.max()) + 1))
            start, end = loc[uid]["ranges"][v]
            pred = set(range(start, end + 1))
            covered.append(len(true & pred) / len(true))
            outside.append(len(pred - true) / len(pred))
    return float(sum(covered) / len(covered)), float(sum(outside) / len(outside))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--recipe", type=Path, default=REPO / "src/spinelab/configs/cervical/bench256.yaml")
    parser.add_argument("--work", type=Path, default=REPO / "bench/_work/cervical_accuracy")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    data = args.work / f"data_{args.studies}x{args.size}"
    timings = {}
    start = time.perf_counter()
    reused = (data / "train.csv").is_file()
    if not reused:
        from spinelab.data.synthetic.cervical import generate_cervical_dataset

        generate_cervical_dataset(data, studies=args.studies, test_studies=0, size=args.size, seed=args.seed)
    timings["generate"] = time.perf_counter() - start
    cfg = load_config("cervical", [args.recipe], [f"data.dataset_dir={data}"])
    run = args.work / f"run_{cfg.experiment}"
    start = time.perf_counter()
    api.train(cfg, run_dir=run, fold="0", resume=True)
    timings["train"] = time.perf_counter() - start
    cv = json.loads((run / "cv_scores.json").read_text())
    s1 = json.loads((run / "stage1/fold_0/scores.json").read_text())
    s2 = json.loads((run / "stage2/fold_0/scores.json").read_text())
    frames_path = run / "frames/fold_0/scores.json"
    fr = json.loads(frames_path.read_text()) if cfg.frames.enabled and frames_path.is_file() else None
    loc = json.loads((run / "localization.json").read_text())
    found = sum(len(v["missing"]) == 0 for v in loc.values()) / len(loc)
    # the run's resolved config names the derived labels it trained on (DATASET/derived or RUN/derived)
    coverage, outside = range_quality(loc, read_run_config(run), run / "folds.csv")
    text = "\n".join([
        "## Cervical accuracy on a synthetic benchmark (`bench/cervical_accuracy.py`)",
        "",
        f"Machine: {machine_description()}. Dataset: {args.studies} synthetic studies at {args.size} px (seed "
        f"{args.seed}), fold 0 held out ({cv['studies']} studies); recipe `{args.recipe.relative_to(REPO)}`.",
        "",
        "| held-out measure | value |",
        "|---|---:|",
        f"| competition metric (row-normalised weighted log loss) | {cv['competition_score']:.4f} |",
        f"| per-column prevalence constant on the same studies | {cv['prevalence_constant_score']:.4f} |",
        f"| reduction against the constant (target >= 40 %) | {100 * cv['relative_improvement']:.1f} % |",
        f"| vertebra-level AUC (target >= 0.90) | {cv.get('auc_vertebra', float('nan')):.3f} |",
        f"| patient-level AUC | {cv.get('auc_overall', float('nan')):.3f} |",
        f"| stage 1: slice ratio MAE / presence accuracy | {s1['ratio_mae']:.3f} / {s1['presence_acc']:.3f} |",
        f"| stage 1: studies with all seven vertebrae found | {100 * found:.0f} % |",
        f"| stage 1: share of each true vertebra range covered / share of predicted range outside it "
        f"(held-out segmented studies) | {100 * coverage:.0f} % / {100 * outside:.0f} % |",
        *([f"| frame pre-training: step AUC / vertebra AUC from its highest step | "
           f"{fr.get('auc_step', float('nan')):.3f} / {fr.get('auc_vertebra_max_step', float('nan')):.3f} |"]
          if fr else []),
        "",
        ("Time: dataset reused from an earlier run (generation times: the synthetic block); " if reused else
         f"Time: generation {timings['generate'] / 60:.1f} min; ") + "training on fold 0: stage 1 "
        f"{s1['seconds'] / 60:.1f} min ({s1['epochs']} epochs, {s1['global_step']} steps), "
        + (f"frames {fr['seconds'] / 60:.1f} min ({fr['global_step']} steps), " if fr else "") + "stage 2 "
        f"{s2['seconds'] / 60:.1f} min ({s2['epochs']} epochs, {s2['global_step']} steps); this call "
        f"{timings['train'] / 60:.1f} min (a stage already trained is reused with `--resume`). Command: "
        f"`python bench/cervical_accuracy.py --studies {args.studies} --size {args.size} --write`.",
    ])
    print(text)
    if args.write:
        replace_block("cervical_accuracy", text)


if __name__ == "__main__":
    main()
