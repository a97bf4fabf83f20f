"""Worker processes for decoding: they end with their parent, and a crashing one costs only its own item.

Native decoders can still die (SIGSEGV, abort, out of memory). ``ProcessPoolExecutor`` then marks the whole
pool broken and fails *every* pending future, so without care one bad file takes the other series down.
:func:`run_isolated` runs the items in parallel; those whose future was broken are re-run one at a time in a
fresh pool, so a crash that recurs names exactly its item, and the rest complete. A crashing item is never
re-run in the calling process (it would crash that too).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["exit_with_parent", "new_pool", "run_isolated", "CRASH_MESSAGE"]

CRASH_MESSAGE = "decoder crashed (worker process died"


def exit_with_parent(enabled: bool = True, parent_pid: int | None = None) -> None:
    """Pool initializer: ask Linux to SIGKILL this worker when its parent dies, so no worker outlives a kill.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the worker ends, so callers pass
    ``enabled=False`` when the pool is created from another thread. If the parent is already gone by the time
    this runs, the worker exits at once.
    """
    if not enabled:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc: rely on atexit only
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def new_pool(workers: int) -> ProcessPoolExecutor:
    """A fork (Linux) process pool whose workers die with this process."""
    # fork: workers start in milliseconds and never re-import the caller's ``__main__`` (spawn and forkserver
    # do, which breaks scripts without a main guard). Workers only decode, so threads the parent may hold
    # (torch, OpenMP) are never touched in them.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    in_main = threading.current_thread() is threading.main_thread()
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=exit_with_parent,
                               initargs=(in_main, os.getpid()))


def run_isolated(
    get_pool: Callable[[], Executor],
    drop_pool: Callable[[], None],
    fn: Callable[..., Any],
    args: Sequence[tuple[Any, ...]],
) -> Iterator[tuple[int, Any, str | None]]:
    """Run ``fn(*a)`` for every ``a`` in ``args`` in worker processes, isolating crashes.

    Args:
        get_pool: returns the pool to submit to (a fresh one after ``drop_pool``).
        drop_pool: shuts the current (broken) pool down so that ``get_pool`` makes a new one.
        fn: picklable worker function.
        args: one argument tuple per item.

    Yields:
        ``(index, result, error)`` as items finish: ``error`` is ``None`` on success, else a message (a worker
        that died while running this item alone, or an exception from ``fn``).
    """
    pool = get_pool()
    futures: dict[Future, int] = {pool.submit(fn, *a): i for i, a in enumerate(args)}
    suspects: list[int] = []
    for fut in as_completed(futures):
        i = futures[fut]
        try:
            yield i, fut.result(), None
        except BrokenProcessPool:
            suspects.append(i)
        except Exception as err:  # noqa: BLE001 - reported per item, never raised
            yield i, None, f"{type(err).__name__}: {err}"
    if not suspects:
        return
    log.warning("a worker process died; re-running %d item(s) one at a time to find the cause", len(suspects))
    drop_pool()
    for i in sorted(suspects):
        try:
            yield i, get_pool().submit(fn, *args[i]).result(), None
        except BrokenProcessPool:
            drop_pool()
            yield i, None, f"{CRASH_MESSAGE} on this item)"
        except Exception as err:  # noqa: BLE001
            yield i, None, f"{type(err).__name__}: {err}"
