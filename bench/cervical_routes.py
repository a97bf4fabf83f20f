"""Cervical routes side by side: the slice route, the seg3d route (1st place: 3D segmentation, per-vertebra crops,
type 1 and type 2), the sequence route (3rd place: slice-level labels, windowed slice model, study head on
cached embeddings), the fracseg route (7th place: fracture segmentation from box pseudo-masks, the percentile
rule and the 3D post-processing classifier) and their ensembles, on the held-out fold 0 of the cervical
accuracy benchmark's synthetic dataset (the same studies as ``bench/cervical_accuracy.py``; a run folder it left
is reused).

``--write`` also keeps each trained route's held-out rows in ``bench/results/cervical_routes/<route>.csv`` (with
the recipe, the commit and a fingerprint of the dataset's labels beside it), so that a later call can put a route
trained in an earlier session into the table and the ensembles without training it again: ``--saved seg3d``.

Every route is scored on its out-of-fold predictions of fold 0 (``oof.csv``: models that never saw those
studies; the seg3d crops of a held-out study come from the fold-0 segmentation model). The ensembles average the
routes' probabilities per study. ``--routes`` picks the routes to train and compare (all four by default); the
sequence route starts from the slice run's stage 1 when both run (``--own-stage1`` trains its own), and
``--seg-from`` gives the seg3d and fracseg routes one trained vertebra segmentation.

    python bench/cervical_routes.py [--studies 100 --size 256] [--routes slices,seg3d,sequence,fracseg]
                                    [--slice-recipe R.yaml] [--seg3d-recipe R.yaml] [--sequence-recipe R.yaml]
                                    [--fracseg-recipe R.yaml] [--slice-set k=v ...] [--seg3d-set k=v ...]
                                    [--sequence-set k=v ...] [--fracseg-set k=v ...] [--saved ROUTES] [--write]
"""

from __future__ import annotations

import argparse
import json
import shutil
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
ROUTES = ("slices", "seg3d", "sequence", "fracseg")
SAVED = REPO / "bench/results/cervical_routes"


def _fingerprint(data: Path) -> str:
    """The dataset's labels and folds as one short hash: saved rows are only mixed with rows of the same set."""
    from spinelab.io.files import file_sha256

    return file_sha256(data / "train.csv")[:16]


def _save_rows(route: str, frame: pd.DataFrame, data: Path, recipe: Path, sets: list[str], commit: str) -> None:
    """Keep a route's held-out rows for later calls (``--saved``)."""
    SAVED.mkdir(parents=True, exist_ok=True)
    frame.to_csv(SAVED / f"{route}.csv", index=False)
    where = recipe.relative_to(REPO) if recipe.is_relative_to(REPO) else recipe
    (SAVED / f"{route}.json").write_text(json.dumps(
        {"route": route, "recipe": str(where), "sets": sets, "data": _fingerprint(data), "studies": len(frame),
         "commit": commit, "date": time.strftime("%Y-%m-%d")}, indent=1) + "\n")


def _load_rows(route: str, data: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A route's held-out rows that an earlier ``--write`` kept; refused when they belong to another dataset."""
    csv, meta_path = SAVED / f"{route}.csv", SAVED / f"{route}.json"
    if not (csv.is_file() and meta_path.is_file()):
        sys.exit(f"--saved {route}: {csv} not found (an earlier --write call that trained the route keeps it)")
    meta = json.loads(meta_path.read_text())
    if meta.get("data") != _fingerprint(data):
        sys.exit(f"--saved {route}: {csv} was made on another dataset than {data} (labels differ)")
    return pd.read_csv(csv, dtype={"StudyInstanceUID": str}), meta


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


def _copy_seg(cfg: Any, source: Path, run: Path) -> None:
    """Stage ``seg`` of ``source`` (a run that bench/segmentation.py trained) into ``run``, when both configs
    describe the same segmentation (otherwise the route would read the weights with another network or grid)."""
    from spinelab.config.load import read_run_config

    theirs = read_run_config(source).seg.model_dump(mode="json")
    ours = cfg.seg.model_dump(mode="json")
    differ = sorted(k for k in ours if ours[k] != theirs.get(k))
    if differ:
        sys.exit(f"--seg-from {source}: its seg section differs from the seg3d recipe's in {', '.join(differ)}")
    if not (run / "seg" / "fold_0" / "model.pt").is_file():
        shutil.copytree(source / "seg", run / "seg", dirs_exist_ok=True)


def _train_fracseg(cfg: Any, run: Path) -> None:
    """The fracseg route on every fold, except its vertebra segmentation: that stage only fills in the vertebrae
    of studies without an RSNA segmentation (none of which it trained on), so fold 0's model serves every fold
    and the four other segmentations (about an hour each on this CPU) are not trained."""
    from spinelab.config.fracseg import round_name

    if cfg.seg is not None:
        api.train(cfg, run_dir=run, fold="0", stage="seg", resume=True)
    for stage in [round_name(k) for k in range(1, cfg.rounds + 1)] + ["overall"]:
        api.train(cfg, run_dir=run, fold="all", stage=stage, resume=True)


def _train(recipe: Path, sets: list[str], data: Path, work: Path, stage1_from: Path | None = None,
           seg_from: Path | None = None, fold: str = "0") -> tuple[Any, Path, float]:
    cfg = load_config("cervical", [recipe], [f"data.dataset_dir={data}", *sets])
    run = work / f"run_{cfg.experiment}"
    if stage1_from is not None and not (run / "stage1" / "fold_0" / "model.pt").is_file():
        # the same stage 1 as the slice run (its model of fold 0), so the routes differ only after it
        shutil.copytree(stage1_from / "stage1", run / "stage1", dirs_exist_ok=True)
    if seg_from is not None:
        _copy_seg(cfg, seg_from, run)
    start = time.perf_counter()
    if cfg.route == "fracseg" and fold == "all":
        _train_fracseg(cfg, run)
    else:
        api.train(cfg, run_dir=run, fold=fold, resume=True)
    return cfg, run, time.perf_counter() - start


def _recipe_text(recipe: Path, sets: list[str]) -> str:
    where = recipe.relative_to(REPO) if recipe.is_relative_to(REPO) else recipe
    return f"`{where}`" + (" with " + " ".join(sets) if sets else "")


def _stage_minutes(run: Path, stages: list[str]) -> str:
    parts = []
    for s in stages:
        p = run / s / "fold_0" / "scores.json"
        if p.is_file():
            sc = json.loads(p.read_text())
            parts.append(f"{s} {sc['seconds'] / 60:.1f} min ({sc['epochs']} epochs, {sc['global_step']} steps)")
    return ", ".join(parts)


def _frames_note(run: Path, what: str, item: str) -> str | None:
    """The held-out scores of a run's frame pre-training (fold 0), when it has one."""
    path = run / "frames" / "fold_0" / "scores.json"
    if not path.is_file():
        return None
    fs = json.loads(path.read_text())
    return (f"{what} (held-out fold 0, every {item}): {item} AUC {fs.get('auc_step', float('nan')):.3f}, vertebra "
            f"AUC from each vertebra's highest {item} {fs.get('auc_vertebra_max_step', float('nan')):.3f}.")


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
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated routes to compare")
    parser.add_argument("--slice-recipe", type=Path, default=RECIPES / "bench256.yaml")
    parser.add_argument("--seg3d-recipe", type=Path, default=RECIPES / "seg3d_bench.yaml")
    parser.add_argument("--sequence-recipe", type=Path, default=RECIPES / "sequence_bench.yaml")
    parser.add_argument("--fracseg-recipe", type=Path, default=RECIPES / "fracseg_bench.yaml")
    parser.add_argument("--slice-set", nargs="*", default=[], help="overrides of the slice recipe")
    parser.add_argument("--seg3d-set", nargs="*", default=[], help="overrides of the seg3d recipe")
    parser.add_argument("--sequence-set", nargs="*", default=[], help="overrides of the sequence recipe")
    parser.add_argument("--fracseg-set", nargs="*", default=[], help="overrides of the fracseg recipe")
    parser.add_argument("--seg-from", type=Path, default=None,
                        help="a run whose stage seg the seg3d and fracseg routes reuse (same seg settings)")
    parser.add_argument("--own-stage1", action="store_true", help="the sequence route trains its own stage 1")
    parser.add_argument("--saved", default="",
                        help="comma-separated routes whose held-out rows an earlier --write kept (not trained here)")
    parser.add_argument("--weight", type=float, default=0.5, help="the seg3d route's share of the slice + seg3d row")
    parser.add_argument("--work", type=Path, default=REPO / "bench/_work/cervical_accuracy")
    parser.add_argument("--note", default="", help="a paragraph added under the table (what the numbers mean)")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--block", default="cervical_routes",
                        help="the BENCHMARKS.md block --write replaces (a partial comparison can keep its own)")
    args = parser.parse_args()
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    saved = [r.strip() for r in args.saved.split(",") if r.strip()]
    unknown = set(routes) - set(ROUTES)
    if unknown or not routes:
        parser.error(f"--routes: choose from {', '.join(ROUTES)} (got {args.routes!r})")
    if set(saved) - set(ROUTES) or set(saved) & set(routes):
        parser.error(f"--saved: routes of {', '.join(ROUTES)} that --routes does not train (got {args.saved!r})")
    recipes = {"slices": (args.slice_recipe.resolve(), args.slice_set),
               "seg3d": (args.seg3d_recipe.resolve(), args.seg3d_set),
               "sequence": (args.sequence_recipe.resolve(), args.sequence_set),
               "fracseg": (args.fracseg_recipe.resolve(), args.fracseg_set)}
    data = args.work / f"data_{args.studies}x{args.size}"
    if not (data / "train.csv").is_file():
        from spinelab.data.synthetic.cervical import generate_cervical_dataset

        generate_cervical_dataset(data, studies=args.studies, test_studies=0, size=args.size, seed=args.seed)
    runs: dict[str, tuple[Any, Path, float]] = {}
    for route in routes:
        recipe, sets = recipes[route]
        reuse = runs["slices"][1] if route == "sequence" and "slices" in runs and not args.own_stage1 else None
        runs[route] = _train(recipe, sets, data, args.work, stage1_from=reuse,
                             seg_from=args.seg_from if route in ("seg3d", "fracseg") else None,
                             # the percentile rule and the classifier learn from out-of-fold maps of every fold
                             fold="all" if route == "fracseg" else "0")

    oofs: dict[str, pd.DataFrame] = {}  # each route's held-out probabilities (the table's rows)
    rows: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    if "slices" in runs:
        oofs["slices"] = pd.read_csv(runs["slices"][1] / "oof.csv", dtype={"StudyInstanceUID": str})
        rows[f"slice route (`{args.slice_recipe.name}`)"] = oofs["slices"]
    if "seg3d" in runs:
        from spinelab.tasks.cervical.seg3d.cv_scores import classifier_oof
        from spinelab.tasks.cervical.studies import CervicalStudies

        seg_cfg, seg_run, _ = runs["seg3d"]
        labels = CervicalStudies(seg_cfg).labels
        prior = json.loads((seg_run / "prior.json").read_text())
        seg_oof = classifier_oof(seg_run, labels, prior, seg_cfg.patient.ensemble_weight)
        oofs["seg3d"] = seg_oof["ensemble"]
        rows.update({f"seg3d {k}" if k != "ensemble" else "seg3d (type 1 + type 2)": v for k, v in seg_oof.items()})
        seg_scores = json.loads((seg_run / "seg" / "cv_scores.json").read_text()) if (
            seg_run / "seg" / "cv_scores.json").is_file() else {}
        crops = json.loads((seg_run / "crops" / "index.json").read_text())["studies"]
        ids_seg = list(oofs["seg3d"].StudyInstanceUID)
        complete = sum(all(crops[u]["found"]) for u in ids_seg if u in crops) / max(1, len(ids_seg))
        notes.append(f"seg3d segmentation (held-out fold 0): mean Dice over C1-C7 "
                     f"{seg_scores.get('dice_mean', float('nan')):.3f}; held-out studies with all seven vertebrae "
                     f"in their mask {100 * complete:.0f} %.")
        if (note := _frames_note(seg_run, "seg3d frame pre-training of type 1's CNN", "crop")) is not None:
            notes.append(note)
    if "sequence" in runs:
        seq_run = runs["sequence"][1]
        oofs["sequence"] = pd.read_csv(seq_run / "oof.csv", dtype={"StudyInstanceUID": str})
        rows[f"sequence route (`{args.sequence_recipe.name}`)"] = oofs["sequence"]
        if (note := _frames_note(seq_run, "sequence frame pre-training of the slice CNN", "slice")) is not None:
            notes.append(note)
        slices_scores = [json.loads(p.read_text()) for p in sorted(seq_run.glob("slices_s*/fold_0/scores.json"))]
        if slices_scores:
            notes.append("sequence route, stage `slices` alone (held-out fold 0, each vertebra's highest slice): "
                         "vertebra AUC " + ", ".join(f"{s.get('auc_vertebra', float('nan')):.3f}"
                                                     for s in slices_scores) + " (per seed).")
    if "fracseg" in runs:
        from spinelab.config.fracseg import round_name

        frac_cfg, frac_run, _ = runs["fracseg"]
        # this route holds out every fold; the table scores fold 0, as for the other routes
        folds = pd.read_csv(frac_run / "folds.csv", dtype={"StudyInstanceUID": str})
        fold0 = set(folds.loc[folds.fold == 0, "StudyInstanceUID"])

        def fold0_rows(path: Path) -> pd.DataFrame:
            frame = pd.read_csv(path, dtype={"StudyInstanceUID": str})
            return frame[frame.StudyInstanceUID.isin(fold0)]

        oofs["fracseg"] = fold0_rows(frac_run / "oof.csv")
        rows[f"fracseg route (`{args.fracseg_recipe.name}`)"] = oofs["fracseg"]
        rows["fracseg, percentile rule alone"] = fold0_rows(frac_run / "percentile" / "oof.csv")
        last_round = round_name(frac_cfg.rounds)
        frac_scores = json.loads((frac_run / last_round / "cv_scores.json").read_text())
        rule_info = json.loads((frac_run / "percentile_rule.json").read_text())
        notes.append(f"fracseg fracture segmentation (`{last_round}`, out of fold, every trained fold): fracture Dice "
                     f"{frac_scores.get('dice', float('nan')):.3f} on {int(frac_scores.get('boxed_studies', 0))} "
                     f"boxed studies (their box pseudo-masks as truth); share of voxels called fracture in the "
                     f"held-out studies without a fracture {frac_scores.get('negative_fp_share', float('nan')):.4f}. "
                     "The fracseg route trains all five folds. The rule's rows are cross-fitted: each fold's "
                     "studies are scored by a rule fitted on the other folds' out-of-fold maps (the saved rule, "
                     f"fitted on all {rule_info.get('studies', '?')}, scores "
                     f"{rule_info.get('oof_score', float('nan')):.4f} on them in sample, "
                     f"{rule_info.get('cross_fitted_score', float('nan')):.4f} cross-fitted"
                     f"{', vertebrae sharing one rule' if rule_info.get('search', {}).get('shared_vertebrae') else ''}"
                     "); the classifier is trained per fold.")
    saved_meta: dict[str, dict[str, Any]] = {}
    for route in saved:
        oofs[route], saved_meta[route] = _load_rows(route, data)
        m = saved_meta[route]
        rows[f"{route} route (`{Path(m['recipe']).name}`, saved {m['date']} at {m['commit']})"] = oofs[route]
    ids = sorted(set.intersection(*(set(f.StudyInstanceUID.astype(str)) for f in oofs.values())))
    cols = list(CERVICAL_TARGETS)

    def mean_of(names: list[str], weights: list[float]) -> pd.DataFrame:
        frames = [oofs[n].set_index("StudyInstanceUID").loc[ids] for n in names]
        out = frames[0].copy()
        out[cols] = sum(w * f[cols] for w, f in zip(weights, frames, strict=True))
        return out.reset_index()

    if {"slices", "seg3d"} <= set(oofs):
        rows[f"slice + seg3d ({1 - args.weight:g} / {args.weight:g})"] = mean_of(
            ["slices", "seg3d"], [1 - args.weight, args.weight])
    if len(oofs) > 1:
        names = list(oofs)
        rows[f"all routes ({' + '.join(names)}, equal weights)"] = mean_of(names, [1 / len(names)] * len(names))
    lines = [
        "## Cervical routes side by side (`bench/cervical_routes.py`)" if len(oofs) == len(ROUTES) else
        f"## Cervical routes: {', '.join(oofs)} (`bench/cervical_routes.py --routes {','.join(runs)}"
        + (f" --saved {','.join(saved)}" if saved else "") + "`)",
        "",
        f"Machine: {machine_description()}. Dataset: {args.studies} synthetic studies at {args.size} px (seed "
        f"{args.seed}), fold 0 held out ({len(ids)} studies scored by every route); recipes "
        + "; ".join(f"{r} {_recipe_text(*recipes[r])}" for r in runs)
        + ("; the sequence route starts from the slice run's stage 1" if "sequence" in runs and "slices" in runs
           and not args.own_stage1 else "")
        + "".join(f"; {r} from its held-out rows of an earlier run (`bench/results/cervical_routes/{r}.csv`: "
                  f"{_recipe_text(REPO / m['recipe'], m.get('sets', []))}, commit {m['commit']}, {m['date']})"
                  for r, m in saved_meta.items()) + ".",
        "",
        "| held-out fold 0 | competition metric | prevalence constant | reduction | vertebra AUC | patient AUC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, frame in rows.items():
        s = _scores(frame[frame.StudyInstanceUID.astype(str).isin(ids)])
        lines.append(f"| {name} | {s['competition_score']:.4f} | {s['constant']:.4f} | {100 * s['reduction']:.1f} % | "
                     f"{s.get('auc_vertebra', float('nan')):.3f} | {s.get('auc_overall', float('nan')):.3f} |")
    stage_names = {"slices": ["stage1", "frames", "stage2"], "seg3d": ["seg", "frames", "vertebra", "patient"],
                   "sequence": ["stage1", "frames", *sorted(p.name for p in runs["sequence"][1].glob("slices_s*")),
                                *sorted(p.name for p in runs["sequence"][1].glob("study_s*"))]
                   if "sequence" in runs else [],
                   "fracseg": ["seg", *sorted(p.name for p in runs["fracseg"][1].glob("fracture_seg*")), "overall"]
                   if "fracseg" in runs else []}
    times = "; ".join(f"{r} route {_stage_minutes(run, stage_names[r])} (this call {sec / 60:.1f} min)"
                      for r, (_, run, sec) in runs.items())
    lines += [*(["", *notes] if notes else []), "",
              f"Time: {times}; a trained stage is reused with `--resume`. Command: "
              f"`python bench/cervical_routes.py {_command_line(sys.argv[1:])}`.",
              *(["", args.note] if args.note else [])]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from spinelab.train.provenance import git_commit

        commit = git_commit(REPO) or "unknown"  # before this call's own writes make the checkout dirty
        replace_block(args.block, text)
        for route in runs:
            _save_rows(route, oofs[route], data, *recipes[route], commit)


if __name__ == "__main__":
    main()
