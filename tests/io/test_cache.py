"""The volume cache: layout, resumability after a kill, failure report, memmap loads."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from spinelab.errors import InputError
from spinelab.io import cache as cache_mod
from spinelab.io.cache import build_cache, cached_series, find_series_folders, load_series, open_cached
from spinelab.io.dicom import read_series
from tests.io._helpers import ct_volume, write

SERIES = ["train_images/1.2.3.1", "train_images/1.2.3.2", "train_images/77/901", "train_images/77/902"]


@pytest.fixture
def dataset(tmp_path, rng, oblique_affine):
    root = tmp_path / "ds"
    for k, rel in enumerate(SERIES):
        write(ct_volume(rng, oblique_affine, (3 + k, 32, 32)), root / rel,
              modality="MR" if "77" in rel else "CT")
    bad = root / "train_images" / "9.9.9"
    bad.mkdir(parents=True)
    for i in range(3):
        (bad / f"{i}.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 68)  # DICOM magic, nothing readable
    (root / "train_images" / "notes").mkdir()
    (root / "train_images" / "notes" / "a.dcm").write_bytes(b"\x00" * 200)  # a .dcm name is not DICOM content
    (root / "train.csv").write_text("StudyInstanceUID\n")
    return root


def _snapshot(out):
    return {rel: (open_cached(out, rel).array.copy(), json.loads((out / f"{rel}.json").read_text())["affine"])
            for rel in cached_series(out)}


def test_build_layout_report_and_memmap(dataset, tmp_path):
    assert find_series_folders(dataset) == sorted([*SERIES, "train_images/9.9.9"])
    out = tmp_path / "cache"
    summary = build_cache(dataset, out, workers=2, progress=False)
    assert summary == {"done": 4, "skipped": 0, "failed": 1, "report": out / "cache_report.json"}
    report = json.loads((out / "cache_report.json").read_text())
    assert report["failed"][0]["series"] == "train_images/9.9.9"
    assert "no readable DICOM image" in report["failed"][0]["error"]
    assert cached_series(out) == SERIES
    for rel in SERIES:
        vol = open_cached(out, rel)
        assert isinstance(vol.array, np.memmap) and not vol.array.flags.writeable
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            direct = read_series(dataset / rel)
        assert np.array_equal(vol.array, direct.array) and vol.array.dtype == direct.array.dtype
        np.testing.assert_allclose(vol.affine, direct.affine)
        assert vol.slice_ids == direct.slice_ids
        assert vol.meta["transfer_syntaxes"] == direct.meta["transfer_syntaxes"]
    # second run: everything skipped, nothing rebuilt
    again = build_cache(dataset, out, workers=2, progress=False)
    assert (again["done"], again["skipped"], again["failed"]) == (4, 4, 1)


def test_resume_after_kill(dataset, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    build_cache(dataset, clean, workers=1, progress=False)
    expected = _snapshot(clean)

    out = tmp_path / "killed"
    real_store = cache_mod._store
    calls = {"n": 0}

    def dying_store(volume, out_dir, rel):
        calls["n"] += 1
        if calls["n"] == 3:
            # the kill lands between the npy and the json of the third series
            cache_mod.atomic_save_npy(cache_mod._paths(out_dir, rel)[0], volume.array)
            raise KeyboardInterrupt
        real_store(volume, out_dir, rel)

    monkeypatch.setattr(cache_mod, "_store", dying_store)
    with pytest.raises(KeyboardInterrupt):
        build_cache(dataset, out, workers=1, progress=False)
    monkeypatch.setattr(cache_mod, "_store", real_store)
    assert len(cached_series(out)) == 2  # the npy without json does not count
    (out / "train_images" / ".1.2.3.2.npy.tmp.npy").write_bytes(b"half")  # a stray temporary
    summary = build_cache(dataset, out, workers=2, progress=False)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (4, 2, 1)
    got = _snapshot(out)
    assert got.keys() == expected.keys()
    for rel, (arr, aff) in expected.items():
        assert np.array_equal(got[rel][0], arr) and got[rel][1] == aff


def test_load_series_and_errors(dataset, tmp_path):
    out = tmp_path / "cache"
    rel = SERIES[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_dicom = load_series(rel, dataset_dir=dataset, cache_dir=out)  # not cached yet: DICOM
    assert not isinstance(from_dicom.array, np.memmap)
    build_cache(dataset, out, workers=1, progress=False)
    from_cache = load_series(rel, dataset_dir=dataset, cache_dir=out)
    assert isinstance(from_cache.array, np.memmap)
    assert np.array_equal(from_cache.array, from_dicom.array)
    with pytest.raises(InputError, match="not in the cache"):
        open_cached(out, "train_images/nope")
    with pytest.raises(InputError, match="no folder with DICOM files"):
        build_cache(tmp_path / "cache", tmp_path / "c2", progress=False)
    with pytest.raises(InputError, match="dataset folder does not exist"):
        build_cache(tmp_path / "missing", tmp_path / "c3", progress=False)


def test_a_crashing_series_fails_alone(dataset, tmp_path, monkeypatch):
    import faulthandler
    import os
    import signal

    from spinelab.io import _decode_pool

    real = _decode_pool._decode

    def crash_in_1232(path, backend, frame):
        if "1.2.3.2" in str(path):
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)  # a native decoder dying inside a cache worker
        return real(path, backend, frame)

    monkeypatch.setattr(_decode_pool, "_decode", crash_in_1232)  # the forked cache workers inherit it
    out = tmp_path / "cache"
    summary = build_cache(dataset, out, workers=2, progress=False)
    report = json.loads((out / "cache_report.json").read_text())
    errors = {f["series"]: f["error"] for f in report["failed"]}
    assert set(errors) == {"train_images/1.2.3.2", "train_images/9.9.9"}
    assert errors["train_images/1.2.3.2"].startswith("worker failed: decoder crashed (worker process died")
    assert summary["done"] == 3 and cached_series(out) == [s for s in SERIES if s != "train_images/1.2.3.2"]
