"""Per-study time of a model package on torch eager fp32, torch bf16 and onnxruntime, in one run.

The study and the run are bench/predict.py's: a 300-slice 512 px synthetic neck CT in JPEG Lossless and a run
folder with the default recipe's architectures (random weights: timing does not depend on them). The run is
exported as a package (``spinelab export model``), its 2D networks to ONNX (``spinelab export onnx
--all-networks``, so onnxruntime runs both stages whatever the per-network timing said); then each mode
predicts the study as ``CervicalPredictor`` does on a CPU (no flip TTA): decode, stage 1, stage 2; one warm-up
and ``--repeats`` timed runs, and the largest probability difference against fp32 torch on this study.

    python bench/deploy_runtime.py [--slices 300 --size 512 --repeats 1] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mdblock import machine_description, replace_block  # noqa: E402
from predict import WORK, make_run, make_study  # noqa: E402
from spinelab.config.load import load_config  # noqa: E402
from spinelab.deploy.manifest import read_manifest  # noqa: E402
from spinelab.deploy.onnx_export import export_onnx  # noqa: E402
from spinelab.deploy.package import export_model  # noqa: E402
from spinelab.infer.onnx_runtime import OnnxRuntime  # noqa: E402
from spinelab.infer.runtime import Runtime, cpu_has_bf16_units  # noqa: E402
from spinelab.io.dicom import read_series  # noqa: E402
from spinelab.tasks.cervical.predict import CervicalPredictor  # noqa: E402
from spinelab.tasks.cervical.studies import prepare_cervical_volume  # noqa: E402

BASELINE = "torch eager fp32 (baseline)"


def runtimes(package: Path) -> dict[str, Runtime]:
    """The three modes, each a fresh runtime (nothing prepared or compiled is shared)."""
    manifest = read_manifest(package)
    return {BASELINE: Runtime(device="cpu", precision="fp32"),
            "torch bf16 autocast": Runtime(device="cpu", precision="bf16"),
            "onnxruntime (both stages)": OnnxRuntime(package, manifest["onnx"]["networks"], device="cpu",
                                                     precision="fp32")}


def time_mode(package: Path, study: Path, runtime: Runtime, repeats: int) -> dict:
    predictor = CervicalPredictor(package, runtime=runtime, tta=False)
    times: dict[str, list[float]] = {"decode": [], "stage1": [], "stage2": [], "total": []}
    probs = None
    for rep in range(repeats + 1):  # the first run warms up
        t0 = time.perf_counter()
        vol = prepare_cervical_volume(read_series(study))
        t1 = time.perf_counter()
        summary = predictor.locate(vol)
        t2 = time.perf_counter()
        probs = predictor.classify(vol, summary)
        t3 = time.perf_counter()
        if rep == 0:
            warm = t3 - t0
            continue
        for key, value in (("decode", t1 - t0), ("stage1", t2 - t1), ("stage2", t3 - t2), ("total", t3 - t0)):
            times[key].append(value)
    return {"warmup_s": warm, **{k: statistics.median(v) for k, v in times.items()}, "probs": probs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    study = make_study(args.slices, args.size)
    package = export_model(make_run([]), WORK / "package", overwrite=True)
    start = time.perf_counter()
    section = export_onnx(package, only_faster=False)
    export_s = time.perf_counter() - start
    rows = []
    for name, runtime in runtimes(package).items():
        row = {"mode": name, **time_mode(package, study, runtime, args.repeats)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "probs"}), flush=True)
    base = rows[0]
    for r in rows:
        r["speedup"] = base["total"] / r["total"]
        r["diff"] = float(np.abs(np.asarray(r["probs"]) - np.asarray(base["probs"])).max())
    cfg = load_config("cervical")
    lines = [
        "## Model package runtimes per study (`bench/deploy_runtime.py`)",
        "",
        f"Machine: {machine_description()}; **shared** with other engineers' jobs while it ran, so the figures "
        f"carry their noise. torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
        f"{section['onnxruntime']} (opset {section['opset']}). CPU bf16 units (AMX / AVX512-BF16): "
        f"{cpu_has_bf16_units()}. Study: {args.slices} slices x {args.size}x{args.size} px, JPEG Lossless. Package "
        f"of the default recipe (random weights): stage 1 {cfg.stage1.model.backbone or 'resnet18'} at "
        f"{cfg.stage1.image_size} px, stage 2 {cfg.stage2.model.backbone or 'resnet18'} at {cfg.stage2.image_size} "
        f"px; one fold; no flip TTA (the CPU default). One warm-up, then median of {args.repeats} run(s); ratios "
        "against the eager fp32 baseline of the same run.",
        "",
        "| mode | decode s | stage 1 s | stage 2 s | total s | vs eager | first call s | max prob. diff vs fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['decode']:.2f} | {r['stage1']:.2f} | {r['stage2']:.2f} | {r['total']:.2f} "
                     f"| {r['speedup']:.2f}x | {r['warmup_s']:.1f} | {r['diff']:.1e} |")
    lines += ["", f"`spinelab export onnx` took {export_s:.0f} s (export, parity and bf16 checks on the 48-slice "
              "64 px parity study); its per-network check on that study:", "",
              "| network | max abs output diff | torch s | onnxruntime s |", "|---|---:|---:|---:|"]
    for n in section["networks"]:
        lines.append(f"| `{n['file']}` | {n['max_abs_diff']:.1e} | {n['torch_s']:.3f} | {n['onnx_s']:.3f} |")
    p, b = section["parity"], section["bf16"]
    lines += ["", f"Package checks: ONNX parity {p['max_prob_diff']:.1e} (tolerance {p['tolerance']}, "
              f"{'passed' if p['passed'] else 'failed'}), bf16 parity {b['max_prob_diff']:.1e} (tolerance "
              f"{b['tolerance']}, {'passed' if b['passed'] else 'failed'}).", "",
              f"Command: `python bench/deploy_runtime.py --slices {args.slices} --size {args.size} --repeats "
              f"{args.repeats} --write`."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_block("deploy_runtime", text)


if __name__ == "__main__":
    main()
