"""Seeded mutation fuzzing of ``read_series`` and ``read_nifti`` over real files, in a subprocess.

Each mutant (byte flips, truncations, header-field rewrites, element-length rewrites) is read in a child
process so that a segmentation fault or a hang is seen. Every outcome must be a ``Volume`` or a
``SpinelabError``; anything else fails the test and prints the seed and mutant index to reproduce it:
``SPINELAB_FUZZ_SEED=<seed> SPINELAB_FUZZ_COUNT=<n> pytest tests/io/test_fuzz.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spinelab.io.dicom_write import write_series
from spinelab.io.volume import Volume

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("SPINELAB_FUZZ_SEED", "20261201"))
COUNT = int(os.environ.get("SPINELAB_FUZZ_COUNT", "240"))

_RUNNER = r'''
import gzip, json, struct, sys, traceback, warnings
from pathlib import Path
import numpy as np
import pydicom
from spinelab.errors import SpinelabError
from spinelab.io.dicom import read_series
from spinelab.io.nifti import read_nifti

warnings.simplefilter("ignore")
seed, count, work = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
seeds = [Path(p) for p in sys.argv[4:]]
US = {"Rows": 0x00280010, "Columns": 0x00280011, "BitsAllocated": 0x00280100, "BitsStored": 0x00280101,
      "HighBit": 0x00280102, "SamplesPerPixel": 0x00280002, "PixelRepresentation": 0x00280103}
WEIRD_US = [0, 1, 2, 7, 8, 12, 15, 16, 17, 24, 32, 33, 255, 256, 4096, 32767, 32768, 65535]
WEIRD_DS = ["NaN", "inf", "-inf", "0", "-0", "1e9", "1e-9", "abc", "", "1\\2", "-1e308", "3.4e38"]
TS = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
      "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
      "1.2.840.10008.1.2.1.99", "9.9.9"]


def flips(data, rng, header_bias):
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 24))):
        hi = min(len(data), 4096) if rng.random() < header_bias else len(data)
        data[int(rng.integers(0, hi))] = int(rng.integers(0, 256))
    return bytes(data)


def dicom_fields(src, rng):
    ds = pydicom.dcmread(src, force=True)
    for _ in range(int(rng.integers(1, 4))):
        what = rng.integers(0, 4)
        if what == 0:
            name = list(US)[int(rng.integers(0, len(US)))]
            setattr(ds, name, int(rng.choice(WEIRD_US)))
        elif what == 1:
            name = ["RescaleSlope", "RescaleIntercept", "SliceThickness"][int(rng.integers(0, 3))]
            tag = pydicom.datadict.tag_for_keyword(name)
            ds[tag] = pydicom.dataelem.DataElement(tag, "DS", str(rng.choice(WEIRD_DS)))
        elif what == 2:
            ds.file_meta.TransferSyntaxUID = str(rng.choice(TS))
        else:
            ds.NumberOfFrames = str(int(rng.choice([0, 1, 2, 3, 100, 65535])))
    out = work / "m.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=False)
    return out.read_bytes()


def lengths(data, rng):
    """Rewrite the length field of a random element (explicit VR little endian)."""
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 3))):
        pos = int(rng.integers(132, max(133, min(len(data) - 12, 6000))))
        pos -= pos % 2
        data[pos:pos + 4] = struct.pack("<I", int(rng.choice([0, 1, 2, 0xFFFF, 0xFFFFFFFF, 1 << 30,
                                                               int(rng.integers(0, 1 << 20))])))
    return bytes(data)


def nifti_fields(raw, rng):
    raw = bytearray(raw)
    fields = {"dim": (40, "<8h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "pixdim": (76, "<8f"),
              "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "qform_code": (252, "<h"),
              "sform_code": (254, "<h"), "srow_x": (280, "<4f"), "quatern_b": (256, "<f")}
    for _ in range(int(rng.integers(1, 4))):
        name = list(fields)[int(rng.integers(0, len(fields)))]
        off, fmt = fields[name]
        n = struct.calcsize(fmt) // (2 if "h" in fmt else 4)
        if "h" in fmt:
            vals = [int(rng.choice([-1, 0, 1, 2, 3, 4, 7, 16, 512, 32767, -32768])) for _ in range(n)]
        else:
            vals = [float(rng.choice([0.0, -1.0, 1.0, np.nan, np.inf, 1e30, 1e-30, 352.0, 3.5])) for _ in range(n)]
        struct.pack_into(fmt, raw, off, *vals)
    return bytes(raw)


def mutate(op, raw, src, rng, nifti):
    if op == "flip_header":
        return flips(raw, rng, 1.0)
    if op == "flip_any":
        return flips(raw, rng, 0.0)
    if op == "truncate":
        return raw[: int(rng.integers(0, len(raw)))]
    if op == "fields":
        return nifti_fields(raw, rng) if nifti else dicom_fields(src, rng)
    return nifti_fields(raw, rng) if nifti else lengths(raw, rng)


for i in range(count):
    rng = np.random.default_rng([seed, i])
    src = seeds[i % len(seeds)]
    nifti = src.name.endswith((".nii", ".nii.gz"))
    raw = gzip.decompress(src.read_bytes()) if src.name.endswith(".gz") else src.read_bytes()
    op = ["flip_header", "flip_any", "truncate", "fields", "lengths"][int(rng.integers(0, 5))]
    try:
        data = mutate(op, raw, src, rng, nifti)
    except Exception:  # pydicom refused to write that mutant: flip bytes instead
        op, data = "flip_header", flips(raw, rng, 1.0)
    name = ("m.nii.gz" if src.name.endswith(".gz") else "m.nii") if nifti else "m.dcm"
    path = work / name
    path.write_bytes(gzip.compress(data, compresslevel=1) if name.endswith(".gz") else data)
    print(json.dumps({"i": i, "seed_file": src.name, "op": op, "start": True}), flush=True)
    try:
        vol = read_nifti(path) if nifti else read_series(path)
        assert np.asarray(vol.array).ndim == 3
        outcome = "volume"
    except SpinelabError as err:
        outcome = "isolated_crash" if "decoder crashed" in str(err) else "error"
    except Exception:
        print(json.dumps({"i": i, "seed_file": src.name, "op": op, "bad": traceback.format_exc()}), flush=True)
        continue
    print(json.dumps({"i": i, "outcome": outcome}), flush=True)
'''


def _seeds(realdata: Path, tmp_path: Path) -> list[str]:
    j2k = sorted((realdata / "totalsegmentator/example_ct_dicom_j2k").iterdir())[5]
    jll = sorted((realdata / "totalsegmentator/example_ct_dicom_jpegls1_derived").iterdir())[5]
    rng = np.random.default_rng(1)
    vol = Volume(array=rng.integers(-1000, 2000, (3, 48, 40)).astype(np.int16), affine=np.eye(4))
    syn = [write_series(vol, tmp_path / f"seed_{ts}", transfer_syntax=ts)[1] for ts in ("explicit", "implicit", "rle")]
    nii = tmp_path / "seed.nii"
    import nibabel as nib

    nib.save(nib.Nifti1Image(rng.integers(0, 500, (20, 16, 12)).astype(np.int16), np.diag([0.8, 0.8, 2.0, 1])), nii)
    return [str(p) for p in (j2k, jll, *syn, realdata / "pydicom_data" / "JPEG-LL.dcm", nii,
                             realdata / "totalsegmentator" / "example_mr_sm.nii.gz")]


@pytest.mark.realdata
def test_fuzz_read_series_and_read_nifti(realdata, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    seeds = _seeds(realdata, tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    repro = f"reproduce: SPINELAB_FUZZ_SEED={SEED} SPINELAB_FUZZ_COUNT={COUNT} pytest {__file__}"
    try:
        proc = subprocess.run([sys.executable, "-c", _RUNNER, str(SEED), str(COUNT), str(work), *seeds],
                              capture_output=True, text=True, errors="replace", timeout=240,
                              env=env)
    except subprocess.TimeoutExpired as err:
        last = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"fuzz run hung; last mutant started: {last.splitlines()[-1:]}; {repro}")
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    started = [ln for ln in lines if ln.get("start")]
    bad = [ln for ln in lines if "bad" in ln]
    if proc.returncode != 0:
        pytest.fail(f"fuzz child died (exit {proc.returncode}) on mutant {started[-1] if started else None}; "
                    f"{repro}\n{proc.stderr[-3000:]}")
    assert not bad, f"{len(bad)} mutant(s) raised a non-spinelab error; {repro}\n" + "\n".join(
        f"mutant {b['i']} ({b['seed_file']}, {b['op']}):\n{b['bad']}" for b in bad[:3])
    outcomes = [ln["outcome"] for ln in lines if "outcome" in ln]
    assert len(outcomes) == COUNT
    # the mutants must exercise both paths, or the fuzzer tests nothing
    assert outcomes.count("volume") >= COUNT // 10 and outcomes.count("error") >= COUNT // 10
    # a decoder that killed its worker process is contained (the mutant is an error), but worth seeing
    crashes = [ln["i"] for ln in lines if ln.get("outcome") == "isolated_crash"]
    print(f"fuzz seed {SEED}: {COUNT} mutants, {outcomes.count('volume')} volumes, {outcomes.count('error')} "
          f"errors, {len(crashes)} decoder crashes contained by the worker pool {crashes}")
