"""Crash isolation and parent-death handling of the decode / cache worker processes."""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import time

import psutil

from spinelab.io._workers import CRASH_MESSAGE, new_pool, run_isolated


def _square_or_die(x: int) -> int:
    if x == 3:
        faulthandler.disable()  # pytest's dump of the dying worker would only be noise here
        os.kill(os.getpid(), signal.SIGSEGV)  # what a native decoder does on a bad stream
    if x == 5:
        raise ValueError("five")
    return x * x


def test_one_crash_costs_one_item():
    pools: list = []

    def get_pool():
        if not pools:
            pools.append(new_pool(2))
        return pools[0]

    def drop_pool():
        if pools:
            pools.pop().shutdown(wait=True, cancel_futures=True)

    try:
        out = {i: (r, e) for i, r, e in run_isolated(get_pool, drop_pool, _square_or_die, [(x,) for x in range(8)])}
    finally:
        drop_pool()
    assert sorted(out) == list(range(8))
    assert out[3][0] is None and out[3][1].startswith(CRASH_MESSAGE)
    assert out[5] == (None, "ValueError: five")
    assert {i: r for i, (r, e) in out.items() if e is None} == {i: i * i for i in (0, 1, 2, 4, 6, 7)}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_die_when_the_parent_is_killed():
    code = ("import time; from spinelab.io._workers import new_pool;"
            "p = new_pool(2); [f.result() for f in [p.submit(time.sleep, 0) for _ in range(4)]];"
            "print(*[q.pid for q in p._processes.values()], flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
