"""The volume cache: every DICOM series of a dataset decoded once into memory-mappable ``.npy`` + JSON.

Layout: a series folder ``DATASET/<rel>`` (RSNA 2022 ``train_images/<UID>``, RSNA 2024
``train_images/<study>/<series>``) becomes ``OUT/<rel>.npy`` (the ``(D, H, W)`` array) and ``OUT/<rel>.json``
(affine, slice ids, dtype, shape, meta). Both are written atomically, the JSON last, so **a JSON file present
means its ``.npy`` is complete**; a killed build is resumed by running it again (series with a JSON are
skipped, stray temporaries and ``.npy`` files without JSON are rewritten). Failed series are listed with their
error in ``OUT/cache_report.json`` and the build goes on.

Values and dtypes: whatever ``read_series`` returns -- CT in HU as ``int16`` (``float32`` only when the rescale
is not integral); MR stored values as ``int16`` when they fit, else ``float32`` (uint16 data above 32767 is
never clipped). The dtype is recorded in the JSON and ``np.load`` restores it.

Series are read with ``mixed_sizes="majority"``: a few odd-sized slices (common in RSNA 2024 lumbar MR) are
dropped with a warning, recorded in the JSON's ``meta.warnings``, instead of failing the series.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from spinelab.errors import ConfigError, InputError, SpinelabError
from spinelab.io._workers import new_pool, run_isolated
from spinelab.io.atomic import atomic_save_npy, atomic_write_json
from spinelab.io.files import is_dicom_file
from spinelab.io.volume import Volume

__all__ = ["build_cache", "open_cached", "cached_series", "load_series", "find_series_folders", "REPORT_NAME"]

REPORT_NAME = "cache_report.json"
CACHE_FORMAT = 1


def find_series_folders(dataset_dir: str | Path) -> list[str]:
    """Relative paths (POSIX) of every folder holding DICOM files directly under ``dataset_dir``, sorted.

    A folder is a series folder when any file directly in it is DICOM (``is_dicom_file``, by content), whether
    or not it also holds sub-folders: a study folder with loose slices *and* series sub-folders yields all of
    them. Symlinked folders are not followed (no loops); FIFOs and devices are never opened.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InputError(root, "dataset folder does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files = sorted(f for f in filenames if not f.startswith("."))
        if any(is_dicom_file(Path(dirpath) / f) for f in files):
            found.append(Path(dirpath).relative_to(root).as_posix())
    return sorted(found)


def _paths(out_dir: Path, rel: str) -> tuple[Path, Path]:
    base = str(out_dir / rel)  # never with_suffix: UID folder names contain dots
    return Path(base + ".npy"), Path(base + ".json")


def _jsonable_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        if isinstance(v, set):
            v = sorted(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


#: Write errors that no other series can escape either: the build stops with one error instead.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _store(volume: Volume, out_dir: Path, rel: str) -> None:
    npy, js = _paths(out_dir, rel)
    array = np.ascontiguousarray(volume.array)
    try:
        atomic_save_npy(npy, array)
    except OSError as err:
        # numpy reports a short write as a bare OSError ("N requested and M written"): name the full disk.
        if err.errno is None and shutil.disk_usage(npy.parent).free < array.nbytes + (1 << 20):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(npy)) from err
        raise
    try:
        _write_sidecar(volume, js, rel)
    except BaseException:
        npy.unlink(missing_ok=True)  # an .npy without its JSON is a half-written entry
        raise


def _write_sidecar(volume: Volume, js: Path, rel: str) -> None:
    atomic_write_json(js, {
        "format": CACHE_FORMAT,
        "series": rel,
        "shape": list(volume.shape),
        "dtype": str(volume.array.dtype),
        "affine": volume.affine.tolist(),
        "slice_ids": volume.slice_ids,
        "is_label": volume.is_label,
        "meta": _jsonable_meta(volume.meta),
    })


def _cache_one(dataset_dir: str, out_dir: str, rel: str) -> tuple[str, str | None, bool]:
    """Decode and store one series; return ``(rel, error or None, whether the error stops the build)``.

    Runs in a worker process.
    """
    from spinelab.io.dicom import read_series

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # recorded in the JSON's meta.warnings instead
            vol = read_series(Path(dataset_dir) / rel, workers=1, mixed_sizes="majority")
        vol.meta["source"] = rel
        _store(vol, Path(out_dir), rel)
    except SpinelabError as err:
        return rel, str(err), False
    except OSError as err:
        if err.errno in _FATAL_ERRNOS:
            where = Path(err.filename).name if err.filename else rel
            return rel, f"cannot write {where} ({err.strerror})", True
        return rel, f"{type(err).__name__}: {err}", False
    except Exception as err:  # noqa: BLE001 - one bad study must not stop the build
        return rel, f"{type(err).__name__}: {err}", False
    return rel, None, False


def build_cache(dataset_dir: str | Path, out_dir: str | Path, *, workers: int = 2,
                progress: bool = True, engine: str = "local", ray_address: str | None = None) -> dict[str, Any]:
    """Decode every series folder of ``dataset_dir`` into ``out_dir`` (resumable).

    Worker processes die with the build (a killed build leaves none running), and a worker that crashes on
    a series fails that series only (``_workers.run_isolated``).

    Args:
        dataset_dir: Kaggle-layout dataset or any tree of DICOM series folders.
        out_dir: cache folder.
        workers: parallel processes (``<= 1``: in this process).
        progress: show a rich progress bar (stderr).
        engine: ``local`` (``workers`` processes here) or ``ray`` (one Ray task per series on the cluster at
            ``ray_address``, or a local Ray instance; ``workers`` is then unused): the same per-series function,
            the same files.

    Returns:
        ``done`` (series ready in the cache now, including those already there), ``skipped`` (of which were
        already cached), ``failed`` (count) and ``report`` (path of ``cache_report.json``).

    Raises:
        InputError: ``dataset_dir`` missing or holding no DICOM series; ``out_dir`` not writable or full
            (the build stops; entries already complete stay, nothing half-written is left).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine {engine!r}; choose local or ray")
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    series = find_series_folders(dataset_dir)
    if not series:
        raise InputError(dataset_dir, "no folder with DICOM files found")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(out_dir, f"cannot create the cache folder ({err.strerror})") from err
    skipped = [r for r in series if _paths(out_dir, r)[1].is_file()]
    todo = [r for r in series if r not in set(skipped)]
    built: list[str] = []
    failed: list[dict[str, str]] = []
    fatal: list[str] = []
    columns = (TextColumn("caching"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False, console=Console(stderr=True)) as bar:
        task = bar.add_task("cache", total=len(todo))

        def record(rel: str, err: str | None, stop: bool = False) -> None:
            (failed.append({"series": rel, "error": err}) if err else built.append(rel))
            if stop and err:
                fatal.append(err)
            bar.advance(task)

        if engine == "ray" and todo:
            from spinelab.ray_engine import map_series_on_ray

            args = [(str(dataset_dir), str(out_dir), r) for r in todo]

            def record_task(i: int, result: Any, err: str | None) -> None:
                record(args[i][2], f"worker failed: {err}") if err is not None else record(*result)

            map_series_on_ray(_cache_one, args, record_task, lambda: bool(fatal), address=ray_address)
        elif workers <= 1 or len(todo) <= 1:
            for rel in todo:
                record(*_cache_one(str(dataset_dir), str(out_dir), rel))
                if fatal:
                    break
        else:
            _build_parallel(workers, [(str(dataset_dir), str(out_dir), r) for r in todo], record, fatal)
    report_data = {
        "dataset_dir": str(dataset_dir),
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
        "n_series": len(series),
        "built": sorted(built),
        "skipped": sorted(skipped),
        "failed": sorted(failed, key=lambda f: f["series"]),
    }
    if fatal:
        with contextlib.suppress(OSError):  # the disk may be full: the report is best effort then
            atomic_write_json(out_dir / REPORT_NAME, report_data)
        raise InputError(out_dir, f"cache build stopped: {fatal[0]}")
    try:
        report = atomic_write_json(out_dir / REPORT_NAME, report_data)
    except OSError as err:
        raise InputError(out_dir / REPORT_NAME, f"cannot write the cache report ({err.strerror})") from err
    return {"done": len(built) + len(skipped), "skipped": len(skipped), "failed": len(failed), "report": report}


def _build_parallel(workers: int, args: list[tuple[str, str, str]], record: Any, fatal: list[str]) -> None:
    """Run ``_cache_one`` over ``args`` in a pool whose workers die with this process; stop on a fatal error."""
    pool: list[ProcessPoolExecutor] = []

    def get_pool() -> ProcessPoolExecutor:
        if not pool:
            pool.append(new_pool(workers))
        return pool[0]

    def drop_pool() -> None:
        if pool:
            pool.pop().shutdown(wait=True, cancel_futures=True)

    try:
        for i, result, err in run_isolated(get_pool, drop_pool, _cache_one, args):
            if err is not None:  # the worker died on this series (or could not run it)
                record(args[i][2], f"worker failed: {err}")
            else:
                record(*result)
            if fatal:
                break
    finally:
        drop_pool()


def open_cached(cache_dir: str | Path, rel_path: str) -> Volume:
    """Open a cached series with its array memory-mapped read-only.

    Args:
        cache_dir: the cache folder.
        rel_path: the series' path relative to the dataset, e.g. ``train_images/1.2.3``.

    Returns:
        ``Volume`` whose ``array`` is a read-only ``np.memmap``.

    Raises:
        InputError: the series is not (completely) cached or its files are unreadable.
    """
    npy, js = _paths(Path(cache_dir), rel_path)
    if not js.is_file():
        raise InputError(js, "series not in the cache (no JSON sidecar; run `spinelab cache build`)")
    try:
        info = json.loads(js.read_text())
        array = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise InputError(npy, f"unreadable cache entry ({err})") from err
    if list(array.shape) != info["shape"] or str(array.dtype) != info["dtype"]:
        raise InputError(npy, f"cache entry shape/dtype {array.shape}/{array.dtype} does not match its JSON")
    meta = dict(info["meta"])
    if "transfer_syntaxes" in meta:
        meta["transfer_syntaxes"] = set(meta["transfer_syntaxes"])
    if "spacing" in meta:
        meta["spacing"] = tuple(meta["spacing"])
    return Volume(array=array, affine=np.array(info["affine"]), slice_ids=info["slice_ids"], meta=meta,
                  is_label=bool(info.get("is_label", False)))


def cached_series(cache_dir: str | Path) -> list[str]:
    """Relative paths of every complete cache entry (JSON and ``.npy`` present), sorted."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    out = []
    for js in root.rglob("*.json"):
        if js.name.startswith(".") or js.parent == root and js.name == REPORT_NAME:
            continue
        rel = js.relative_to(root).as_posix()[: -len(".json")]
        if _paths(root, rel)[0].is_file():
            out.append(rel)
    return sorted(out)


def load_series(rel_path: str, *, dataset_dir: str | Path, cache_dir: str | Path | None = None) -> Volume:
    """A series from the cache if present there, else decoded from ``dataset_dir/rel_path``.

    The DICOM fallback reads with ``mixed_sizes="majority"``, like the cache, so both paths agree.
    """
    if cache_dir is not None and _paths(Path(cache_dir), rel_path)[1].is_file():
        return open_cached(cache_dir, rel_path)
    from spinelab.io.dicom import read_series

    return read_series(Path(dataset_dir) / rel_path, mixed_sizes="majority")
