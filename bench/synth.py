"""Benchmark of the synthetic dataset generators: wall time per study and on-disk size.

Usage::

    python bench/synth.py --task cervical --studies 20 --size 256 --workers 2 [--write]

``--write`` updates this benchmark's rows in BENCHMARKS.md between ``<!-- synth:start -->`` and
``<!-- synth:end -->`` (one table row per task, other tasks' rows are kept). Add a generator by adding a
function to ``BENCHES``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["bench_cervical", "bench_lumbar", "update_benchmarks_md", "main", "BENCHES"]

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- synth:start -->", "<!-- synth:end -->"
HEADER = ("| task | studies | size px | workers | slices total | wall s | s / study "
          "| est. 100 studies (min) | MB on disk | machine |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def _folder_stats(folder: Path) -> tuple[int, float]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(1 for p in files if p.suffix == ".dcm"), sum(p.stat().st_size for p in files) / 1e6


def bench_cervical(out: Path, *, studies: int, size: int, workers: int) -> dict[str, float | int | str]:
    """Time ``generate_cervical_dataset`` (no test studies) and measure what it wrote."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    generate_cervical_dataset(out, studies=studies, test_studies=0, size=size, seed=0, workers=workers,
                              progress=False)
    wall = time.perf_counter() - t0
    slices, mb = _folder_stats(out)
    return {"task": "cervical", "studies": studies, "size": size, "workers": workers, "slices": slices,
            "wall": wall, "mb": mb}


def bench_lumbar(out: Path, *, studies: int, size: int, workers: int) -> dict[str, float | int | str]:
    """Time ``generate_lumbar_dataset`` (no test studies) and measure what it wrote."""
    from spinelab.data.synthetic.lumbar import generate_lumbar_dataset

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    generate_lumbar_dataset(out, studies=studies, test_studies=0, size=size, seed=0, workers=workers,
                            progress=False)
    wall = time.perf_counter() - t0
    slices, mb = _folder_stats(out)
    return {"task": "lumbar", "studies": studies, "size": size, "workers": workers, "slices": slices,
            "wall": wall, "mb": mb}


BENCHES: dict[str, Callable[..., dict[str, float | int | str]]] = {"cervical": bench_cervical,
                                                                  "lumbar": bench_lumbar}


def _row(r: dict[str, float | int | str]) -> str:
    per = float(r["wall"]) / int(r["studies"])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs (shared)"
    return (f"| {r['task']} | {r['studies']} | {r['size']} | {r['workers']} | {r['slices']} "
            f"| {float(r['wall']):.1f} | {per:.2f} | {per * 100 / 60:.1f} | {float(r['mb']):.0f} "
            f"| {machine} |")


def update_benchmarks_md(path: Path, results: list[dict[str, float | int | str]]) -> None:
    """Replace this benchmark's rows for the tasks in ``results`` inside the synth block of ``path``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    rows: dict[str, str] = {}
    if START in text and END in text:
        head, rest = text.split(START, 1)
        block, tail = rest.split(END, 1)
        for line in block.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and cells[0] not in ("task",) and not set(cells[0]) <= {"-", ":"}:
                rows[cells[0]] = line
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    for r in results:
        rows[str(r["task"])] = _row(r)
    body = (f"{START}\n## Synthetic datasets (`bench/synth.py`)\n\nWall time of the generators, rendering "
            "and writing every file (DICOM, NIfTI, CSV); `est. 100 studies` extrapolates linearly.\n\n"
            f"{HEADER}\n"
            + "\n".join(rows[k] for k in sorted(rows)) + f"\n{END}")
    path.write_text(head + body + tail)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["cervical", "lumbar", "all"], default="all")
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "_work" / "synth")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    tasks = list(BENCHES) if args.task == "all" else [args.task]
    results = []
    for task in tasks:
        if task not in BENCHES:
            print(f"{task}: no benchmark registered yet")
            continue
        r = BENCHES[task](args.out / task, studies=args.studies, size=args.size, workers=args.workers)
        print(_row(r))
        results.append(r)
    if args.write and results:
        update_benchmarks_md(REPO / "BENCHMARKS.md", results)


if __name__ == "__main__":
    main()
