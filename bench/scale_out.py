"""Studies per minute of ``spinelab predict`` with the local engine and with Ray on the same CPU cores.

One machine gains nothing from Ray (the local engine already uses every core through torch's threads); the
point is that the same command scales out to a cluster, and this measures what the engine costs per study:
starting Ray, starting one actor per CPU (each loads the model once), shipping each study's record back.

The run folder is the fixed-run regression fixture (``tests/fixtures/fixed_runs/cervical``: the tiny recipe,
trained), the studies synthetic RSNA 2022 test studies at ``--size`` px. Each engine predicts the same
studies into a fresh folder; the submissions are checked to agree to 1e-6.

    python bench/scale_out.py [--studies 12 --size 128 --cpus 2] [--write]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import REPO, machine_description, replace_block  # noqa: E402

sys.path.insert(0, str(REPO))
from tests.tasks.fixed_runs import materialize  # noqa: E402

from spinelab import api  # noqa: E402

WORK = REPO / "bench" / "_work" / "scale_out"


def make_studies(n: int, size: int) -> Path:
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    data = WORK / f"data_{n}x{size}"
    if not (data / "done").is_file():
        shutil.rmtree(data, ignore_errors=True)
        generate_cervical_dataset(data, studies=1, test_studies=n, size=size, seed=11, workers=2,
                                  slices=(60, 80), progress=False)
        (data / "done").write_text("ok")
    return data / "test_images"


def timed_predict(run: Path, studies: Path, out: Path, engine: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = api.predict("cervical", model=run, input=studies, out=out, device="cpu", precision="fp32",
                         compile=False, tta=False, progress=False, engine=engine)
    wall = time.perf_counter() - start
    per_study = [json.loads(p.read_text()).get("seconds", 0.0) for p in (out / "studies").glob("*.json")]
    return {"engine": engine, "wall": wall, "n": result["studies"], "counts": result["counts"],
            "study_seconds": sum(per_study), "submission": result["submission"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray instance")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    import ray

    studies = make_studies(args.studies, args.size)
    run = materialize("cervical", WORK / "run")
    rows = [timed_predict(run, studies, WORK / "out_local", "local")]
    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    ray_start = time.perf_counter() - start
    try:
        rows.append(timed_predict(run, studies, WORK / "out_ray", "ray"))
        rows.append(timed_predict(run, studies, WORK / "out_ray2", "ray"))  # Ray warm: actors start again
    finally:
        ray.shutdown()
    ref = pd.read_csv(rows[0]["submission"]).set_index("row_id")
    for r in rows:
        diff = (pd.read_csv(r["submission"]).set_index("row_id").loc[ref.index] - ref).abs().to_numpy().max()
        r["max_diff"] = float(diff)
        print(json.dumps({k: v for k, v in r.items() if k != "submission"}, default=str), flush=True)
    local = rows[0]
    lines = [
        "## Scale-out: `predict` on the local engine and on Ray (`bench/scale_out.py`)",
        "",
        f"Machine: {machine_description()} (shared with other sessions' work while this ran: the numbers are "
        f"rough). {args.studies} synthetic cervical test studies of 60-80 slices at {args.size} px, the tiny "
        f"recipe's trained fixture run (fp32, no TTA, one fold); Ray: a local instance with {args.cpus} CPUs, "
        "one actor per CPU (each loads the model once, one torch thread each), the driver writing every file.",
        "",
        "| engine | wall s | studies / min | in-study s (sum) | overhead s / study vs local | max submission diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = ["local", "ray (first call)", "ray (second call)"]
    for name, r in zip(names, rows, strict=True):
        overhead = (r["wall"] - local["wall"]) / r["n"]
        lines.append(f"| {name} | {r['wall']:.1f} | {60 * r['n'] / r['wall']:.1f} | {r['study_seconds']:.1f} | "
                     f"{overhead:+.2f} | {r['max_diff']:.1e} |")
    lines += ["", f"Starting the Ray instance itself (`ray.init`, not in the walls above): {ray_start:.1f} s. "
              f"Command: `python bench/scale_out.py --studies {args.studies} --size {args.size} --cpus {args.cpus} "
              "--write`."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_block("scale_out", text)


if __name__ == "__main__":
    main()
