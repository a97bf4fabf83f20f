"""CPU time of ``spinelab predict cervical`` per study for trained run folders of any route, on the 300-slice
512 px benchmark study.

The study is bench/predict.py's (a synthetic neck CT in JPEG Lossless). Each run predicts it once to warm up and
``--repeats`` times timed, in one process, with the run's own inference settings (its ``infer`` section: folds,
flip TTA, precision): wall seconds and the process's user + system CPU seconds. Other work on the machine
stretches the wall time, not the CPU time. The runs should be trained (bench/cervical_routes.py's): a route's
cost depends on what its models find (the fracseg route crops to the vertebrae its segmentation finds, the
seg3d route crops each vertebra), so random weights would time the wrong work.

    python bench/route_time.py RUN_DIR [RUN_DIR ...] [--slices 300 --size 512 --repeats 1] [--block NAME] [--write]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import replace_block  # noqa: E402
from predict import WORK, make_study  # noqa: E402
from spinelab import api  # noqa: E402
from spinelab.config.load import read_run_config  # noqa: E402
from timing import per_study_block, timed_calls  # noqa: E402


def _tta(setting: bool | None) -> str:
    return "route default" if setting is None else ("on" if setting else "off")


def time_predict(study: Path, run: Path, repeats: int) -> dict[str, float]:
    """Mean wall and CPU seconds of ``repeats`` predictions of ``study`` by ``run``, after one warm-up."""

    def call(rep: int) -> None:
        result = api.predict("cervical", model=run, input=study, out=WORK / f"route_out_{run.name}_{rep}",
                             progress=False)
        if result["counts"].get("refused") or result["counts"].get("failed"):
            sys.exit(f"{run}: the benchmark study was not predicted ({result['counts']})")

    return timed_calls(call, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="trained cervical run folders (any route)")
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--note", default="", help="a paragraph added under the table")
    ap.add_argument("--write", action="store_true", help="rewrite the --block block of BENCHMARKS.md")
    ap.add_argument("--block", default="route_time",
                    help="the BENCHMARKS.md block to write (another name adds rows of runs timed in another session)")
    args = ap.parse_args()
    study = make_study(args.slices, args.size)
    rows = []
    for run in args.runs:
        cfg = read_run_config(run)
        t = time_predict(study, run, args.repeats)
        rows.append(f"| `{run.name}` | {cfg.route} | {_tta(cfg.infer.tta)} | {t['wall']:.1f} | "
                    f"{t['cpu']:.1f} |")
        print(rows[-1], flush=True)
    body = per_study_block(
        "## `spinelab predict cervical` per study and route (`bench/route_time.py`)", args.slices, args.size,
        "Each trained run predicts it with its own inference settings (every trained fold's models, fp32), decode "
        "to study JSON included.", args.repeats,
        ("| run | route | flip TTA | wall s | CPU s (user + system) |", "|---|---|---|---:|---:|"), rows,
        "python bench/route_time.py " + " ".join(os.path.relpath(r) for r in args.runs)
        + f" --slices {args.slices} --size {args.size} --repeats {args.repeats}"
        + (f" --block {args.block}" if args.block != "route_time" else "") + " --write", args.note)
    if args.write:
        replace_block(args.block, body)
    print(body)


if __name__ == "__main__":
    main()
