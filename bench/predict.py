"""Time per study of cervical inference on a realistic study, and bf16/compile checked against fp32.

Part 1 (timing): a 300-slice 512 px synthetic neck CT in JPEG Lossless (the RSNA 2022 syntax) and a run folder
with the default recipe's architectures (random weights: timing does not depend on them). Each mode runs
decode (``read_series``), stage 1 (localisation over the whole study) and stage 2 (seven vertebra sequences)
exactly as ``CervicalPredictor`` does, one warm-up then ``--repeats`` timed runs. The baseline is the same work
in eager fp32 NCHW (what the seeds do on a CPU), measured in the same run.

Part 2 (``--run RUN --data DATASET``): predicts a labelled dataset with a trained run in fp32 and in the faster
modes and reports the competition metric of each, so bf16 is adopted only when the metric holds.

    python bench/predict.py [--slices 300 --size 512 --repeats 3] [--run demo_out/cervical/runs/cervical
                             --data demo_out/cervical/data/cervical] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import REPO, machine_description, replace_block  # noqa: E402
from spinelab.config.load import load_config, save_config  # noqa: E402
from spinelab.infer.runtime import Runtime, cpu_has_bf16_units  # noqa: E402
from spinelab.io.dicom import read_series  # noqa: E402
from spinelab.models import create_model  # noqa: E402
from spinelab.tasks.cervical.predict import CervicalPredictor  # noqa: E402
from spinelab.tasks.cervical.studies import prepare_cervical_volume  # noqa: E402

WORK = REPO / "bench" / "_work" / "predict"
# name -> Runtime options, plus what the predictor does: ``tta`` (stage-2 flip TTA, default on),
# ``stage1_flip`` (flip TTA in stage 1 too) and ``offsets`` (stage-1 interleaved sequences; default: the recipe's).
MODES = {
    "fp32 NCHW eager + flip TTA (baseline)": {"precision": "fp32", "channels_last": False, "compile": False},
    "fp32 channels_last + flip TTA": {"precision": "fp32", "channels_last": True, "compile": False},
    "fp32 channels_last + flip TTA in both stages + 4 offsets": {"precision": "fp32", "channels_last": True,
                                                                "compile": False, "stage1_flip": True,
                                                                "offsets": 4},
    "fp32 channels_last no TTA (CPU default)": {"precision": "fp32", "channels_last": True, "compile": False,
                                                 "tta": False},
    "bf16 channels_last": {"precision": "bf16", "channels_last": True, "compile": False},
    "bf16 channels_last + compile": {"precision": "bf16", "channels_last": True, "compile": True},
}
#: Modes whose metric differs from plain fp32 (channels_last and TTA-free runs are not numerics changes).
METRIC_MODES = ("fp32 channels_last no TTA (CPU default)", "bf16 channels_last", "bf16 channels_last + compile")


def make_study(slices: int, size: int) -> Path:
    from spinelab.data.synthetic.cervical import generate_cervical_study

    folder = WORK / f"study_{slices}x{size}"
    if not (folder / "done").is_file():
        labels = {f"C{i}": int(i == 5) for i in range(1, 8)}
        generate_cervical_study(folder, uid="1.2.826.0.1.3680043.99999", split="test", labels=labels, size=size,
                                seed=0, index=0, write_segmentation=False, transfer_syntax="jpeg_lossless",
                                slices=(slices, slices))
        (folder / "done").write_text("ok")
    return folder / "test_images" / "1.2.826.0.1.3680043.99999"


def make_run(overrides: list[str]) -> Path:
    """A run folder with the default recipe's models (random init) for fold 0."""
    run = WORK / "run_default"
    cfg = load_config("cervical", [], ["experiment=bench_default", *overrides])
    save_config(cfg, run / "config.yaml")
    for stage, section, extra in (("stage1", cfg.stage1, {}), ("stage2", cfg.stage2, {"overall": "learned"})):
        torch.manual_seed(0)
        m = create_model(section.model.name, backbone=section.model.backbone, hidden=section.model.hidden,
                         in_chans=3 * len(section.windows), **extra)
        (run / stage / "fold_0").mkdir(parents=True, exist_ok=True)
        torch.save(m.state_dict(), run / stage / "fold_0" / "model.pt")
    return run


def time_modes(study: Path, run: Path, repeats: int, modes: list[str]) -> list[dict]:
    rows = []
    for name in modes:
        opts = dict(MODES[name])
        tta, stage1_flip, offsets = opts.pop("tta", True), opts.pop("stage1_flip", None), opts.pop("offsets", None)
        predictor = CervicalPredictor(run, runtime=Runtime(device="cpu", **opts), tta=tta)
        if stage1_flip is not None:
            predictor.cfg.stage1.infer_flip = stage1_flip
        if offsets is not None:
            predictor.cfg.stage1.infer_offsets = offsets
        times: dict[str, list[float]] = {"decode": [], "stage1": [], "stage2": [], "total": []}
        for rep in range(repeats + 1):  # the first run warms up (and compiles)
            t0 = time.perf_counter()
            vol = prepare_cervical_volume(read_series(study))  # as the predictor sees it (a view, no copy)
            t1 = time.perf_counter()
            summary = predictor.locate(vol)
            t2 = time.perf_counter()
            predictor.classify(vol, summary)
            t3 = time.perf_counter()
            if rep == 0:
                warm = t3 - t0
                continue
            for key, value in (("decode", t1 - t0), ("stage1", t2 - t1), ("stage2", t3 - t2), ("total", t3 - t0)):
                times[key].append(value)
        row = {"mode": name, "warmup_s": warm, **{k: statistics.median(v) for k, v in times.items()},
               "min_total": min(times["total"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["total"]
    for r in rows:
        r["speedup"] = base / r["total"]
    return rows


def metric_check(run: Path, data: Path, modes: list[str]) -> list[dict]:
    from spinelab import api

    rows = []
    for name in [m for m in modes if m in METRIC_MODES]:
        opts = MODES[name]
        out = WORK / "metric" / name.split(" ")[0] / ("compiled" if opts["compile"] else "eager")
        start = time.perf_counter()
        res = api.predict("cervical", model=run, input=data, out=out, device="cpu", precision=opts["precision"],
                          compile=opts["compile"], progress=False)
        seconds = time.perf_counter() - start
        ev = json.loads(Path(res["evaluation"]).read_text())
        rows.append({"mode": name, "studies": ev["studies"], "score": ev["competition_score"],
                     "auc": ev["auc"].get("vertebra_level"), "seconds": seconds, "out": out})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "out"}, default=str), flush=True)
    import pandas as pd

    ref = pd.read_csv(rows[0]["out"] / "predictions.csv").set_index("StudyInstanceUID")
    for r in rows:
        other = pd.read_csv(r["out"] / "predictions.csv").set_index("StudyInstanceUID").loc[ref.index]
        r["max_abs_diff"] = float((other - ref).abs().to_numpy().max())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", type=Path, help="trained cervical run folder for the metric check")
    parser.add_argument("--data", type=Path, help="labelled dataset for the metric check")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",")]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    study = make_study(args.slices, args.size)
    run = make_run([])
    rows = time_modes(study, run, args.repeats, modes)
    cfg = load_config("cervical")
    lines = [
        "## Cervical inference per study (`bench/predict.py`)",
        "",
        f"Machine: {machine_description()}. Study: {args.slices} slices x {args.size}x{args.size} px, JPEG "
        "Lossless 4.70. Default recipe (random weights): stage 1 "
        f"{cfg.stage1.model.backbone or 'resnet18'} at {cfg.stage1.image_size} px, {cfg.stage1.seq_len} slices x "
        f"{cfg.stage1.infer_offsets} offsets; stage 2 {cfg.stage2.model.backbone or 'resnet18'}, 7 vertebrae x "
        f"{cfg.stage2.n_slices} slices at {cfg.stage2.image_size} px; one fold. "
        f"CPU bf16 support (AMX / AVX512-BF16): {cpu_has_bf16_units()}. Median of "
        f"{args.repeats} runs after a warm-up; speed-up against the eager fp32 NCHW baseline of the same run.",
        "",
        "| mode | decode s | stage 1 s | stage 2 s | total s | speed-up | first call s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['decode']:.2f} | {r['stage1']:.2f} | {r['stage2']:.2f} | "
                     f"{r['total']:.2f} | {r['speedup']:.2f}x | {r['warmup_s']:.1f} |")
    lines.append("")
    lines.append(f"Command: `python bench/predict.py --slices {args.slices} --size {args.size} --repeats "
                 f"{args.repeats}{' --run RUN --data DATA' if args.run else ''} --write`. Target: under 15 s per "
                 "study on 2 CPU cores.")
    if args.run and args.data:
        checks = metric_check(args.run, args.data, modes)
        lines += ["", f"Metric check on `{args.data}` with the trained run `{args.run}` (same studies, same "
                  "weights; the faster modes are adopted only where the metric holds):", "",
                  "| mode | studies | competition score | vertebra AUC | max abs prob. diff vs fp32 | wall s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for c in checks:
            auc = f"{c['auc']:.3f}" if c["auc"] is not None else "-"
            lines.append(f"| {c['mode']} | {c['studies']} | {c['score']:.4f} | {auc} | {c['max_abs_diff']:.4f} | "
                         f"{c['seconds']:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_block("predict", text)


if __name__ == "__main__":
    main()
