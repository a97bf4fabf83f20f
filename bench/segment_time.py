"""CPU time of ``spinelab segment`` per study for the seg3d recipes, on the 300-slice 512 px benchmark study.

The study is bench/predict.py's (a synthetic neck CT in JPEG Lossless). Each recipe gets a run folder with its
``seg`` network at random weights (timing does not depend on them; the masks are meaningless) and segments the
study once to warm up and ``--repeats`` times timed, in one process: wall seconds and the process's user + system
CPU seconds, flip TTA off and on. Other work on the machine stretches the wall time, not the CPU time. ``--runs``
adds trained ``cervical/seg3d`` run folders (e.g. bench/segmentation.py's): their masks are real vertebrae, so
the connected components and the probabilities' way back onto the 512 px grid cost what they cost in use.

    python bench/segment_time.py [--recipes seg3d_tiny,seg3d_1st] [--runs RUN_DIR ...] [--repeats 1] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import replace_block  # noqa: E402
from predict import WORK, make_study  # noqa: E402
from spinelab import api  # noqa: E402
from spinelab.config.load import load_config, save_config  # noqa: E402
from spinelab.configs import recipe_path  # noqa: E402
from spinelab.tasks.cervical.seg3d.seg_stage import SegStage  # noqa: E402
from spinelab.train.run_folder import FORMAT_FILE, RUN_FORMAT  # noqa: E402
from timing import per_study_block, timed_calls  # noqa: E402


def make_seg_run(recipe: str) -> Path:
    """A ``cervical/seg3d`` run folder with the recipe's seg network at random weights (fold 0)."""
    run = WORK / f"segment_{recipe}"
    cfg = load_config("cervical", [recipe_path(f"cervical/{recipe}.yaml")], [f"experiment=bench_{recipe}"])
    save_config(cfg, run / "config.yaml")
    (run / FORMAT_FILE).write_text(json.dumps({"format": RUN_FORMAT}))
    torch.manual_seed(0)
    model = SegStage(cfg, run).build_model()
    (run / "seg" / "fold_0").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), run / "seg" / "fold_0" / "model.pt")
    return run


def time_segment(study: Path, run: Path, tta: bool, repeats: int) -> dict[str, float]:
    def call(rep: int) -> None:
        api.segment(study, WORK / f"segment_out_{run.name}_{int(tta)}_{rep}", run, device="cpu", precision="fp32",
                    compile=False, tta=tta, progress=False)

    return timed_calls(call, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="seg3d_tiny,seg3d_1st")
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="trained cervical/seg3d run folders to time")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="rewrite the segment_time block of BENCHMARKS.md")
    args = ap.parse_args()
    study = make_study(args.slices, args.size)
    rows = []
    runs = [(f"`{r}`", make_seg_run(r)) for r in args.recipes.split(",") if r]
    runs += [(f"trained `{r.name}`", r) for r in args.runs]
    for name, run in runs:
        cfg = load_config("cervical", [run / "config.yaml"])
        grid = f"{list(cfg.seg.size)}" if cfg.seg.grid == "fixed" else f"{cfg.seg.spacing_mm:g} mm"
        for tta in (False, True):
            t = time_segment(study, run, tta, args.repeats)
            rows.append(f"| {name} ({cfg.seg.model.name}, grid {cfg.seg.grid} {grid}) | "
                        f"{'on' if tta else 'off'} | {t['wall']:.1f} | {t['cpu']:.1f} |")
            print(rows[-1], flush=True)
    body = per_study_block(
        "## `spinelab segment` per study (`bench/segment_time.py`)", args.slices, args.size,
        "Recipes run at random weights: "
        "the time is the network's and the pipeline's (decode, resampling, sliding window, connected components, "
        "the mask back on the DICOM grid, NIfTI, vertebrae.json, preview.png). Their class probabilities are "
        "nearly uniform, so nearly every CT voxel lies between grid points of different argmax and takes the "
        "slow, interpolating branch of the way back (`SegInput.probabilities_to_labels`): these rows are its "
        "worst case, not a model in use. Trained runs segment the vertebrae for real: only the voxels at the "
        "borders between labels are interpolated.", args.repeats,
        ("| recipe (seg network, grid) | flip TTA | wall s | CPU s (user + system) |", "|---|---|---:|---:|"), rows,
        f"python bench/segment_time.py --recipes {args.recipes}"
        + (" --runs " + " ".join(os.path.relpath(r) for r in args.runs) if args.runs else "")
        + f" --repeats {args.repeats} --write")
    if args.write:
        replace_block("segment_time", body)
    print(body)


if __name__ == "__main__":
    main()
