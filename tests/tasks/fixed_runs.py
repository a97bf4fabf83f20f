"""The fixed-run regression fixture: two tiny trained run folders with int8-quantised weights.

Weights are stored quantised (``weights.npz``: int8 values and a float32 scale per tensor) to keep the fixture
under 3 MB; ``materialize`` rebuilds a run folder whose float32 weights are exactly the dequantised values, so
its predictions are fixed. ``expected_submission.csv`` (and ``_tta.csv``, with flip TTA) were predicted from
that run folder before the route refactor (``python tests/tasks/fixed_runs.py`` rebuilds everything from scratch).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fixed_runs"
REPO = Path(__file__).resolve().parents[2]
_SMALL = 4096  # tensors up to this many values are kept exactly (biases, norms)


def quantize(run_dir: Path, out: Path, extra: list[str]) -> None:
    """Store ``run_dir``'s models as ``out/weights.npz`` and copy the small files ``predict`` reads."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ["config.yaml", *extra]:
        shutil.copy(run_dir / name, out / name)
    arrays: dict[str, np.ndarray] = {}
    for model in sorted(run_dir.glob("*/fold_*/model.pt")):
        prefix = model.parent.relative_to(run_dir).as_posix()
        for key, t in torch.load(model, map_location="cpu", weights_only=True).items():
            a = t.numpy()
            if a.dtype != np.float32 or a.size <= _SMALL:
                arrays[f"{prefix}|{key}|raw"] = a
                continue
            scale = np.float32(max(float(np.abs(a).max()), 1e-12) / 127.0)
            arrays[f"{prefix}|{key}|q"] = np.round(a / scale).astype(np.int8)
            arrays[f"{prefix}|{key}|s"] = np.asarray(scale, dtype=np.float32)
    np.savez_compressed(out / "weights.npz", **arrays)


def materialize(name: str, dest: Path) -> Path:
    """A run folder at ``dest`` from ``FIXTURES/<name>``: small files copied, ``model.pt`` files dequantised."""
    src = FIXTURES / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix in (".yaml", ".json"):
            shutil.copy(f, dest / f.name)
    states: dict[str, dict[str, torch.Tensor]] = {}
    with np.load(src / "weights.npz") as npz:
        for k in npz.files:
            prefix, key, kind = k.split("|")
            if kind == "s":
                continue
            a = npz[k] if kind == "raw" else npz[k].astype(np.float32) * npz[f"{prefix}|{key}|s"]
            states.setdefault(prefix, {})[key] = torch.from_numpy(np.array(a))
    for prefix, state in states.items():
        (dest / prefix).mkdir(parents=True, exist_ok=True)
        torch.save(state, dest / prefix / "model.pt")
    return dest


def cervical_test_input(tmp: Path) -> Path:
    """The two test studies of the session's tiny cervical dataset (same generator call as tests/conftest.py)."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    return generate_cervical_dataset(tmp, studies=6, test_studies=2, size=64, seed=3, workers=1,
                                     seg_fraction=0.6, slices=(28, 36), progress=False)


def lumbar_test_input(tmp: Path) -> Path:
    """The tiny lumbar dataset of tests/conftest.py."""
    from spinelab.data.synthetic.lumbar import generate_lumbar_dataset

    return generate_lumbar_dataset(tmp, studies=6, test_studies=2, size=64, seed=5, workers=1, progress=False)


def _build(tmp: Path) -> None:  # pragma: no cover - run by hand to regenerate the fixture
    from spinelab import api
    from spinelab.config.load import load_config

    shutil.rmtree(FIXTURES, ignore_errors=True)
    c_ds = cervical_test_input(tmp / "c")
    cfg = load_config("cervical", [REPO / "src/spinelab/configs/cervical/tiny.yaml"],
                      [f"data.dataset_dir={c_ds}", "stage1.train.epochs=1", "stage2.train.epochs=1",
                       "trainer.accelerator=cpu", "stage1.infer_flip=true"])  # TTA reaches stage 1 too
    quantize(api.train(cfg, run_dir=tmp / "runs/cervical", fold="0", progress=False), FIXTURES / "cervical",
             ["prior.json", "targets.json"])
    l_ds = lumbar_test_input(tmp / "l")
    cfg = load_config("lumbar", [REPO / "src/spinelab/configs/lumbar/tiny.yaml"],
                      [f"data.dataset_dir={l_ds}", f"data.cache_dir={l_ds}_cache", "stage1.train.epochs=1",
                       "stage2.train.epochs=1", "trainer.accelerator=cpu"])
    quantize(api.train(cfg, run_dir=tmp / "runs/lumbar", fold="0", progress=False), FIXTURES / "lumbar",
             ["prior.json", "targets.json", "geometry.json"])
    for task, ds in (("cervical", c_ds), ("lumbar", l_ds)):
        run = materialize(task, tmp / "fixed" / task)
        for tta, name in ((False, "expected_submission.csv"), (True, "expected_submission_tta.csv")):
            r = api.predict(task, model=run, input=ds / "test_images", out=tmp / "pred" / task / name, device="cpu",
                            precision="fp32", compile=False, tta=tta, progress=False)
            shutil.copy(r["submission"], FIXTURES / task / name)


if __name__ == "__main__":  # pragma: no cover
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        _build(Path(d))
