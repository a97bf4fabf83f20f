"""``RUN_DIR/provenance.json``: how a run folder was made (code, command, packages, machine, weight hashes).

Written when training starts and refreshed after each fold; a later ``train`` into the same folder (another
fold, a resume) appends its command instead of replacing the history. No Lightning import here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from spinelab.io.atomic import atomic_write_json
from spinelab.train.run_folder import model_sha256

__all__ = ["PROVENANCE_SCHEMA_VERSION", "PACKAGES", "collect_environment", "start_provenance",
           "record_weights", "git_commit", "cpu_name"]

PROVENANCE_SCHEMA_VERSION = 1
#: Packages whose versions decide what a run computes.
PACKAGES = ("torch", "timm", "monai", "lightning", "pydicom", "numpy")
_NAME = "provenance.json"


def git_commit(start: str | Path | None = None) -> str | None:
    """The checkout's commit (with ``+dirty`` when files changed), or ``None`` outside a git checkout."""
    where = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def collect_environment(accelerator: str | None = None) -> dict[str, Any]:
    """spinelab version, git commit, Python, package versions, CPU and GPU of this process."""
    import torch

    from spinelab import __version__

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {
        "spinelab_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": _cpu_count(),
        "gpus": gpus,
        "accelerator": accelerator,
        "device": "cuda" if gpus and accelerator in (None, "auto", "gpu", "cuda") else "cpu",
    }


def _cpu_count() -> int | None:
    return os.cpu_count()


def _read(run_dir: Path) -> dict[str, Any]:
    path = run_dir / _NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged record is replaced by a new one rather than stopping training
    return data if isinstance(data, dict) else {}


def start_provenance(run_dir: str | Path, *, accelerator: str | None = None,
                     argv: list[str] | None = None) -> Path:
    """Record this training command (and the environment it runs in) in ``RUN_DIR/provenance.json``.

    Only the launching process records: DDP's other ranks (``LOCAL_RANK``/``NODE_RANK`` set) run the same
    command again and would append it twice.
    """
    run_dir = Path(run_dir)
    if int(os.environ.get("LOCAL_RANK", "0") or 0) or int(os.environ.get("NODE_RANK", "0") or 0):
        return run_dir / _NAME
    record = _read(run_dir)
    env = collect_environment(accelerator)
    command = {"argv": list(sys.argv if argv is None else argv),
               "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **env}
    record.update({"schema_version": PROVENANCE_SCHEMA_VERSION, **env})
    record["commands"] = [*record.get("commands", []), command]
    record.setdefault("weights", {})
    return atomic_write_json(run_dir / _NAME, record)


def record_weights(run_dir: str | Path) -> dict[str, str]:
    """Hash every ``<stage>/<fold>/model.pt`` of the run into ``provenance.json``; return ``{path: sha256}``."""
    run_dir = Path(run_dir)
    record = _read(run_dir) or {"schema_version": PROVENANCE_SCHEMA_VERSION}
    weights = {p.relative_to(run_dir).as_posix(): model_sha256(p) for p in sorted(run_dir.glob("*/*/model.pt"))}
    record["weights"] = weights
    atomic_write_json(run_dir / _NAME, record)
    return weights
