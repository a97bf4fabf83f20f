"""Wall and CPU seconds of repeated calls, for the benchmark scripts: the first call warms up (imports,
allocator, thread pool) and is not counted; CPU is the process's user + system time, which other work on the
machine does not stretch."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_calls(call: Callable[[int], object], repeats: int) -> dict[str, float]:
    """Mean wall and CPU seconds of ``call(1) .. call(repeats)``, after the warm-up ``call(0)``."""
    walls, cpus = [], []
    for rep in range(repeats + 1):
        t0, c0 = time.perf_counter(), cpu_seconds()
        call(rep)
        if rep:
            walls.append(time.perf_counter() - t0)
            cpus.append(cpu_seconds() - c0)
    return {"wall": sum(walls) / len(walls), "cpu": sum(cpus) / len(cpus)}


def per_study_block(title: str, slices: int, size: int, how: str, repeats: int, table: tuple[str, str],
                    rows: list[str], command: str, note: str = "") -> str:
    """A BENCHMARKS.md block of per-study timings: the machine, the study, ``how`` it was timed, the table
    (``table``: its header and alignment lines) and the command."""
    import torch

    from mdblock import machine_description

    return "\n".join([
        title, "",
        f"Machine: {machine_description()}, torch {torch.__version__} ({torch.get_num_threads()} threads). Study: "
        f"{slices} slices of {size} px (JPEG Lossless, bench/predict.py's). {how} "
        f"Mean of {repeats} timed call(s) after one warm-up, in one process.", "",
        *table, *rows, "",
        f"Command: `{command}`.", *(["", note] if note else [])])
