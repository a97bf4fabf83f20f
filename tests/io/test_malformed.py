"""The malformed-input corpus: every broken file and odd folder entry, run through the CLI as subprocesses.

Built at test time from the real J2K and JPEG Lossless series and from synthetic files (``write_malformed``).
A case fails on a traceback in stderr, an exit by signal, a hang (timeout) or a half-written cache entry.
RELIABILITY.md lists the cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from spinelab.io.dicom_write import write_malformed, write_series
from spinelab.io.volume import Volume
from tests.io._helpers import leaked_shm_files, shm_decode_files

REPO = Path(__file__).resolve().parents[2]
REAL = {"j2k": "totalsegmentator/example_ct_dicom_j2k", "jll": "totalsegmentator/example_ct_dicom_jpegls1_derived"}
NATIVE_KINDS = ["truncated", "short_pixels", "oversized_header", "wrong_bits", "zero_rows",
                "slope_zero", "slope_huge", "slope_nan"]
COMPRESSED_KINDS = ["truncated", "oversized_header", "wrong_bits", "zero_rows", "stream_cut", "empty_fragment",
                    "slope_zero", "slope_huge", "slope_nan"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, errors="replace", timeout=timeout,
                          env=_env(), cwd=REPO)


def _assert_clean(proc: subprocess.CompletedProcess, what: str, ok_codes: tuple[int, ...] = (0, 2)) -> None:
    assert proc.returncode >= 0, f"{what}: killed by signal {-proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.returncode in ok_codes, f"{what}: exit {proc.returncode}\n{proc.stdout[-1000:]}{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, f"{what}: traceback\n{proc.stderr[-3000:]}"


def _link_slices(src: Path, dst: Path, n: int) -> list[Path]:
    """The first ``n`` slices of a real series, linked (not copied) into ``dst``."""
    dst.mkdir(parents=True)
    out = []
    for f in sorted(src.iterdir())[:n]:
        (dst / f.name).symlink_to(f)
        out.append(dst / f.name)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, realdata) -> dict[str, object]:
    """``dataset/train_images/<case>``: each mixed case is good slices + one broken one."""
    root = tmp_path_factory.mktemp("corpus") / "dataset"
    images = root / "train_images"
    expected: dict[str, int] = {}  # case -> slices that must survive
    rng = np.random.default_rng(7)
    syn = Volume(array=rng.integers(-1000, 2000, (4, 32, 32)).astype(np.int16), affine=np.diag([2.0, 0.8, 0.8, 1]))
    for kind in NATIVE_KINDS:
        paths = write_series(syn, images / f"syn_{kind}")
        write_malformed(paths[1], paths[1], kind)
        expected[f"syn_{kind}"] = 3
    for name, rel in REAL.items():
        for kind in COMPRESSED_KINDS:
            paths = _link_slices(realdata / rel, images / f"{name}_{kind}", 3)
            bad = paths[1]
            src = bad.resolve()
            bad.unlink()
            write_malformed(src, bad, kind)
            expected[f"{name}_{kind}"] = 2
    only = write_series(syn, images / "only_bad")  # every slice broken: the series is refused
    for p in only:
        write_malformed(p, p, "oversized_header")
    odd = images / "odd_entries"
    write_series(syn, odd)
    expected["odd_entries"] = 4
    os.mkfifo(odd / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(odd / "sock"))
    (odd / "loop").symlink_to(odd / "loop")
    (odd / "dangling").symlink_to(odd / "gone")
    study = images / "study_with_subfolder"  # loose slices and a series sub-folder: both are read
    write_series(syn, study)
    write_series(syn, study / "second_series")
    expected["study_with_subfolder"] = 4
    expected["study_with_subfolder/second_series"] = 4
    _bad_niftis(root.parent / "nifti")
    yield {"root": root, "expected": expected}
    sock.close()


def _bad_niftis(folder: Path) -> None:
    """``nan_affine.nii`` (NaN in the sform) and ``cut.nii.gz`` (half of a gzip stream)."""
    import gzip
    import struct

    import nibabel as nib

    folder.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), folder / "good.nii")
    raw = bytearray((folder / "good.nii").read_bytes())
    struct.pack_into("<f", raw, 280, float("nan"))  # srow_x[0]
    struct.pack_into("<h", raw, 254, 1)  # sform_code: the sform is the affine
    (folder / "nan_affine.nii").write_bytes(bytes(raw))
    big = np.random.default_rng(0).integers(0, 3000, (40, 40, 40)).astype(np.int16)
    nib.save(nib.Nifti1Image(big, np.eye(4)), folder / "big.nii")
    packed = gzip.compress((folder / "big.nii").read_bytes())
    (folder / "cut.nii.gz").write_bytes(packed[: len(packed) // 2])  # header intact, data cut


_READ_ALL = """
import json, sys, warnings
from pathlib import Path
from spinelab.errors import SpinelabError
from spinelab.io.dicom import read_series
warnings.simplefilter("ignore")
for case in sys.argv[1:]:
    print(json.dumps({"case": case, "start": True}), flush=True)
    try:
        v = read_series(Path(case), workers=2)
        out = {"n": v.shape[0], "finite": bool(__import__("numpy").isfinite(v.array).all()),
               "warnings": v.meta["warnings"]}
    except SpinelabError as err:
        out = {"error": str(err)}
    print(json.dumps({"case": case, **out}), flush=True)
"""


@pytest.mark.realdata
def test_read_series_on_every_case(corpus):
    root, expected = corpus["root"], corpus["expected"]
    cases = [str(root / "train_images" / c) for c in [*expected, "only_bad"]]
    proc = _run(["-c", _READ_ALL, *cases], timeout=180)
    _assert_clean(proc, "read_series over the corpus", ok_codes=(0,))
    results = {json.loads(line)["case"]: json.loads(line) for line in proc.stdout.splitlines()
               if "start" not in json.loads(line)}
    assert len(results) == len(cases)
    for case, n in expected.items():
        res = results[str(root / "train_images" / case)]
        assert res.get("n") == n and res["finite"], f"{case}: {res}"
        if case.startswith(("syn_", "j2k_", "jll_")):
            bad = "2.dcm" if case.startswith("syn_") else "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016574"
            assert any(w.startswith(f"skipped {bad}:") for w in res["warnings"]), f"{case}: {res['warnings']}"
    odd = results[str(root / "train_images" / "odd_entries")]["warnings"]
    for name in ("pipe", "sock", "loop", "dangling"):
        assert any(w.startswith(f"skipped {name}:") for w in odd), odd
    study = results[str(root / "train_images" / "study_with_subfolder")]["warnings"]
    assert any(w.startswith("skipped second_series: sub-folder not read") for w in study)
    assert "image size 65535x65535" in results[str(root / "train_images" / "only_bad")]["error"]


def _half_written(out: Path) -> list[str]:
    tmp = [p.name for p in out.rglob("*") if ".tmp" in p.name]
    orphans = [str(p) for p in out.rglob("*.npy") if not Path(str(p)[:-4] + ".json").is_file()]
    return tmp + orphans


@pytest.mark.realdata
def test_cache_build_on_the_corpus(corpus, tmp_path):
    root, expected = corpus["root"], corpus["expected"]
    out = tmp_path / "cache"
    proc = _run(["-m", "spinelab", "cache", "build", str(root), "--out", str(out), "--workers", "2"], timeout=300)
    _assert_clean(proc, "cache build", ok_codes=(0,))
    report = json.loads((out / "cache_report.json").read_text())
    assert sorted(report["built"]) == sorted(f"train_images/{c}" for c in expected)
    assert [f["series"] for f in report["failed"]] == ["train_images/only_bad"]
    for case, n in expected.items():
        assert json.loads((out / f"train_images/{case}.json").read_text())["shape"][0] == n
    assert _half_written(out) == []


@pytest.mark.realdata
def test_info_on_the_worst_cases(corpus):
    images = corpus["root"] / "train_images"
    for path, code in ((images / "only_bad", 2), (images / "odd_entries", 0), (images / "j2k_wrong_bits", 0),
                       (images / "jll_stream_cut", 0), (Path("/dev/zero"), 2), (images / "odd_entries" / "pipe", 2),
                       (images / "syn_truncated" / "2.dcm", 2), (images.parent.parent / "nifti" / "nan_affine.nii", 2),
                       (images.parent.parent / "nifti" / "cut.nii.gz", 2)):
        proc = _run(["-m", "spinelab", "info", str(path)], timeout=60)
        _assert_clean(proc, f"info {path}", ok_codes=(code,))
        if code == 2:
            assert len([ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if "error" in ln]) == 1


def test_full_disk_cache_build(tmp_path):
    dataset = tmp_path / "ds"
    rng = np.random.default_rng(3)
    for i in range(4):  # 4 x 512 kB of int16: more than the 1 MB file system holds
        write_series(Volume(array=rng.integers(-1000, 2000, (4, 256, 256)).astype(np.int16), affine=np.eye(4)),
                     dataset / f"s{i}")
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"cannot mount a tmpfs for the full-disk case: {mounted.stderr.decode()}")
        pytest.skip(f"mount not permitted here (run as root): {mounted.stderr.decode().strip()}")
    try:
        proc = _run(["-m", "spinelab", "cache", "build", str(dataset), "--out", str(mnt / "cache"),
                     "--workers", "1"], timeout=120)
        _assert_clean(proc, "cache build on a full disk", ok_codes=(2,))
        text = proc.stdout + proc.stderr
        assert len([ln for ln in text.splitlines() if ln.startswith("error:")]) == 1
        assert "cache build stopped: cannot write s" in text and "No space left on device" in " ".join(text.split())
        assert _half_written(mnt / "cache") == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.realdata
def test_killed_cache_build_leaves_no_worker_and_no_shm(realdata, tmp_path):
    dataset = tmp_path / "ds"
    for i in range(8):
        _link_slices(realdata / REAL["j2k"], dataset / f"s{i}", 20)
    out = tmp_path / "cache"
    shm_before = shm_decode_files()
    proc = subprocess.Popen([sys.executable, "-m", "spinelab", "cache", "build", str(dataset), "--out", str(out),
                             "--workers", "2"], env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            children = psutil.Process(proc.pid).children(recursive=True)
            if len(children) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(children) >= 2, "the build ended before it could be killed"
        time.sleep(0.3)  # let the workers start decoding
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"workers survived the killed build: {[p.pid for p in alive]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    assert leaked_shm_files(shm_before) == set()
    shutil.rmtree(out, ignore_errors=True)
