"""Cervical routes side by side: the slice route, the seg3d route (1st place: 3D segmentation, per-vertebra crops,
type 1 and type 2) and their ensemble, on the held-out fold 0 of the cervical accuracy benchmark's synthetic
dataset (the same studies as ``bench/cervical_accuracy.py``; a run folder it left is reused).

Both routes are scored on their out-of-fold predictions of fold 0 (``oof.csv``: models that never saw those
studies; the seg3d crops of a held-out study come from the fold-0 segmentation model). The ensemble averages the
two routes' probabilities per study.

    python bench/cervical_routes.py [--studies 100 --size 256] [--slice-recipe R.yaml] [--seg3d-recipe R.yaml]
                                    [--seg3d-set key=value ...] [--slice-set key=value ...] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import REPO, machine_description, replace_block  # noqa: E402
from spinelab import api  # noqa: E402
from spinelab.config.load import load_config  # noqa: E402
from spinelab.registry import CERVICAL_TARGETS  # noqa: E402

RECIPES = REPO / "src/spinelab/configs/cervical"


def _scores(frame: pd.DataFrame) -> dict[str, float]:
    """Competition metric, the prevalence constant on the same studies, AUCs (rows with ``true_`` columns)."""
    from spinelab.metrics import cervical_prevalence_constant, cervical_score
    from spinelab.tasks.cervical.fracture import evaluate_cervical

    out = evaluate_cervical(frame)
    truth = frame[["StudyInstanceUID", *(f"true_{t}" for t in CERVICAL_TARGETS)]]
    truth.columns = ["StudyInstanceUID", *CERVICAL_TARGETS]
    out["constant"] = float(cervical_score(truth, cervical_prevalence_constant(truth)))
    out["reduction"] = 1 - out["competition_score"] / out["constant"]
    return out


def _train(recipe: Path, sets: list[str], data: Path, work: Path) -> tuple[Any, Path, float]:
    cfg = load_config("cervical", [recipe], [f"data.dataset_dir={data}", *sets])
    run = work / f"run_{cfg.experiment}"
    start = time.perf_counter()
    api.train(cfg, run_dir=run, fold="0", resume=True)
    return cfg, run, time.perf_counter() - start


def _stage_minutes(run: Path, stages: list[str]) -> str:
    parts = []
    for s in stages:
        p = run / s / "fold_0" / "scores.json"
        if p.is_file():
            sc = json.loads(p.read_text())
            parts.append(f"{s} {sc['seconds'] / 60:.1f} min ({sc['epochs']} epochs, {sc['global_step']} steps)")
    return ", ".join(parts)


def _command_line(argv: list[str]) -> str:
    """The arguments as given, without ``--note`` and its text."""
    out, skip = [], False
    for a in argv:
        if skip or a == "--note":
            skip = a == "--note"
            continue
        out.append(a)
    return " ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--slice-recipe", type=Path, default=RECIPES / "bench256.yaml")
    parser.add_argument("--seg3d-recipe", type=Path, default=RECIPES / "seg3d_tiny.yaml")
    parser.add_argument("--slice-set", nargs="*", default=[], help="overrides of the slice recipe")
    parser.add_argument("--seg3d-set", nargs="*", default=[], help="overrides of the seg3d recipe")
    parser.add_argument("--weight", type=float, default=0.5, help="the seg3d route's share of the ensemble")
    parser.add_argument("--work", type=Path, default=REPO / "bench/_work/cervical_accuracy")
    parser.add_argument("--note", default="", help="a paragraph added under the table (what the numbers mean)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    args.slice_recipe, args.seg3d_recipe = args.slice_recipe.resolve(), args.seg3d_recipe.resolve()
    data = args.work / f"data_{args.studies}x{args.size}"
    if not (data / "train.csv").is_file():
        from spinelab.data.synthetic.cervical import generate_cervical_dataset

        generate_cervical_dataset(data, studies=args.studies, test_studies=0, size=args.size, seed=args.seed)
    _, slice_run, slice_s = _train(args.slice_recipe, args.slice_set, data, args.work)
    seg_cfg, seg_run, seg_s = _train(args.seg3d_recipe, args.seg3d_set, data, args.work)

    from spinelab.tasks.cervical.seg3d.cv_scores import classifier_oof
    from spinelab.tasks.cervical.studies import CervicalStudies

    labels = CervicalStudies(seg_cfg).labels
    prior = json.loads((seg_run / "prior.json").read_text())
    seg_oof = classifier_oof(seg_run, labels, prior, seg_cfg.patient.ensemble_weight)
    slice_oof = pd.read_csv(slice_run / "oof.csv", dtype={"StudyInstanceUID": str})
    ids = sorted(set(slice_oof.StudyInstanceUID) & set(seg_oof["ensemble"].StudyInstanceUID))
    rows = {"slice route (`" + args.slice_recipe.name + "`)": slice_oof}
    rows.update({f"seg3d {k}" if k != "ensemble" else "seg3d (type 1 + type 2)": v for k, v in seg_oof.items()})
    a = slice_oof.set_index("StudyInstanceUID").loc[ids]
    b = seg_oof["ensemble"].set_index("StudyInstanceUID").loc[ids]
    both = a.copy()
    cols = list(CERVICAL_TARGETS)
    both[cols] = (1 - args.weight) * a[cols] + args.weight * b[cols]
    rows[f"slice + seg3d ({1 - args.weight:g} / {args.weight:g})"] = both.reset_index()
    seg_scores = json.loads((seg_run / "seg" / "cv_scores.json").read_text()) if (
        seg_run / "seg" / "cv_scores.json").is_file() else {}
    crops = json.loads((seg_run / "crops" / "index.json").read_text())["studies"]
    complete = sum(all(crops[u]["found"]) for u in ids if u in crops) / max(1, len(ids))
    lines = [
        "## Cervical routes side by side (`bench/cervical_routes.py`)",
        "",
        f"Machine: {machine_description()}. Dataset: {args.studies} synthetic studies at {args.size} px (seed "
        f"{args.seed}), fold 0 held out ({len(ids)} studies scored by both routes); recipes "
        f"`{args.slice_recipe.relative_to(REPO)}`{' with ' + ' '.join(args.slice_set) if args.slice_set else ''} and "
        f"`{args.seg3d_recipe.relative_to(REPO)}`{' with ' + ' '.join(args.seg3d_set) if args.seg3d_set else ''}.",
        "",
        "| held-out fold 0 | competition metric | prevalence constant | reduction | vertebra AUC | patient AUC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, frame in rows.items():
        s = _scores(frame[frame.StudyInstanceUID.astype(str).isin(ids)])
        lines.append(f"| {name} | {s['competition_score']:.4f} | {s['constant']:.4f} | {100 * s['reduction']:.1f} % | "
                     f"{s.get('auc_vertebra', float('nan')):.3f} | {s.get('auc_overall', float('nan')):.3f} |")
    lines += [
        "",
        f"seg3d segmentation (held-out fold 0): mean Dice over C1-C7 {seg_scores.get('dice_mean', float('nan')):.3f};"
        f" held-out studies with all seven vertebrae in their mask {100 * complete:.0f} %.",
        "",
        f"Time: slice route {_stage_minutes(slice_run, ['stage1', 'frames', 'stage2'])} (this call "
        f"{slice_s / 60:.1f} min; a trained stage is reused with `--resume`); seg3d route "
        f"{_stage_minutes(seg_run, ['seg', 'vertebra', 'patient'])} (this call {seg_s / 60:.1f} min). Command: "
        f"`python bench/cervical_routes.py {_command_line(sys.argv[1:])}`.",
        *(["", args.note] if args.note else []),
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_block("cervical_routes", text)


if __name__ == "__main__":
    main()
