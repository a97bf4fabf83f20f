"""``spinelab export onnx PKG``: each 2D network of a package to ONNX (opset 17+), with parity checks against
torch, a speed check per network and a bf16 parity check, all recorded in the package's manifest.

How: the package's own predictor predicts a fixed synthetic study (``fixed_study``) through a recording
``Runtime``, which keeps every call of ``Runtime.run`` (the model, its inputs and torch's outputs). Each network
without 3D layers is exported with its recorded inputs as the example (every axis dynamic, so other batch
sizes and sequence lengths run), and checked call by call (largest output difference). It is then timed on
the same calls in torch and in onnxruntime (one warm-up, one timed pass): ``use`` is true only where
onnxruntime was faster (``only_faster``), as the issue asks. Last, the whole study is predicted again with
``OnnxRuntime`` and with bf16 autocast: the largest probability difference against fp32 torch must stay under
``ONNX_TOLERANCE`` (1e-3) and ``BF16_TOLERANCE``; both results go into the manifest (``onnx.parity``, ``bf16``).
A route without 2D networks (fracseg: 3D U-Nets and a 3D classifier) gets an empty ``onnx`` section (its
``parity.passed`` is ``None``) and the bf16 check.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spinelab.deploy.manifest import verify_package
from spinelab.errors import ConfigError
from spinelab.infer.onnx_runtime import OnnxRuntime, call_layout, split_call, state_fingerprint
from spinelab.infer.runtime import Runtime, cpu_has_bf16_units

__all__ = ["export_onnx", "fixed_study", "result_vector", "ONNX_TOLERANCE", "BF16_TOLERANCE", "MIN_OPSET"]

log = logging.getLogger("spinelab")
ONNX_TOLERANCE = 1e-3
#: bf16 keeps 8 mantissa bits (about 0.4 % per rounding); a probability moving by under 0.02 leaves the
#: competition metrics unchanged to 3 decimals in bench/predict.py's metric check (0.6467 vs 0.6466).
BF16_TOLERANCE = 0.02
MIN_OPSET = 17
_3D = (nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d, nn.AvgPool3d, nn.BatchNorm3d, nn.InstanceNorm3d)


class RecordingRuntime(Runtime):
    """A torch ``Runtime`` that keeps every ``run`` call: ``calls[i] = (model, inputs, kwargs, outputs)``."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls: list[tuple[nn.Module, tuple[Any, ...], dict[str, Any], dict[str, torch.Tensor]]] = []

    def run(self, model: nn.Module, *inputs: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        out = super().run(model, *inputs, **kwargs)
        keep = lambda v: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
        self.calls.append((model, tuple(keep(v) for v in inputs), {k: keep(v) for k, v in kwargs.items()},
                           {k: v.detach().cpu().clone() for k, v in out.items()}))
        return out


class _Flat(nn.Module):
    """A network with the call's tensors as positional inputs and its output dict as a tuple (what ONNX takes)."""

    def __init__(self, model: nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any], keys: list[str]) -> None:
        super().__init__()
        self.model, self.inputs, self.kwargs, self.keys = model, inputs, kwargs, keys

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(tensors)
        args = [next(it) if isinstance(v, torch.Tensor) else v for v in self.inputs]
        kw = {k: next(it) if isinstance(self.kwargs[k], torch.Tensor) else self.kwargs[k] for k in sorted(self.kwargs)}
        out = self.model(*args, **kw)
        return tuple(out[k] for k in self.keys)


def fixed_study(task: str, root: Path) -> tuple[Path, Path]:
    """A fixed synthetic study of ``task`` (seed 0, 64 px) written under ``root``: ``(dataset root, study)``."""
    if task == "cervical":
        from spinelab.data.synthetic.cervical import generate_cervical_study

        uid = "1.2.826.0.1.3680043.424242"
        generate_cervical_study(root, uid=uid, split="test", labels={f"C{i}": int(i == 5) for i in range(1, 8)},
                                size=64, seed=0, index=0, write_segmentation=False, slices=(48, 48))
        return root, root / "test_images" / uid
    if task == "lumbar":
        from spinelab.data.synthetic.lumbar import generate_lumbar_dataset

        generate_lumbar_dataset(root, studies=1, test_studies=1, size=64, seed=0, workers=1, progress=False)
        return root, next(p for p in sorted((root / "test_images").iterdir()) if p.is_dir())
    raise ConfigError(f"no fixed parity study for task {task!r}")


def result_vector(result: Any) -> np.ndarray:
    """A result's outputs as one vector: cervical probabilities, or every lumbar grade probability."""
    if result.probabilities is not None:
        return np.array([result.probabilities[k] for k in sorted(result.probabilities)], np.float64)
    return np.array([result.grades[t][g] for t in sorted(result.grades) for g in sorted(result.grades[t])],
                    np.float64)


def _predict(package: Path, route: Any, runtime: Runtime, dataset: Path, study: Path) -> Any:
    from spinelab.tasks.route import resolve

    predictor = resolve(route.predictor)(package, runtime=runtime, tta=False)
    fn = predictor.for_dataset(dataset, "test") if hasattr(predictor, "for_dataset") else None
    return fn(study.name, study) if fn is not None else predictor.predict_study(study, study.name)


def _weights_by_fingerprint(package: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """``{state fingerprint: "<stage>/fold_k/model.pt"}`` of the package's weight files."""
    from spinelab.train.run_folder import safe_torch_load  # the run-folder reader: no Lightning import

    return {state_fingerprint(safe_torch_load(package / name, what="model weights")): name
            for name in manifest["files"] if name.endswith("model.pt")}


def _timed(fn: Any, calls: list[Any]) -> float:
    """Seconds for one pass of ``fn`` over ``calls`` after one warm-up call."""
    fn(calls[0])
    start = time.perf_counter()
    for c in calls:
        fn(c)
    return time.perf_counter() - start


def _export_network(model: nn.Module, calls: list[Any], path: Path, opset: int) -> dict[str, Any]:
    """Export one network (its first recorded call as the example) and check it on every recorded call."""
    import onnxruntime as ort

    _, inputs, kwargs, outputs = calls[0]
    keys = list(outputs)
    names, tensors = split_call(inputs, kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Flat(model.eval(), inputs, kwargs, keys), tuple(tensors), str(path), dynamo=False,
                          opset_version=opset, input_names=names, output_names=keys, do_constant_folding=True,
                          dynamic_axes={**{n: {i: f"{n}_{i}" for i in range(t.dim())} for n, t in
                                           zip(names, tensors, strict=True)},
                                        **{k: {i: f"{k}_{i}" for i in range(outputs[k].dim())} for k in keys}})
    import onnx

    onnx.checker.check_model(str(path))  # a well-formed graph of the opset asked for, before it is trusted
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    def ort_call(c: Any) -> list[np.ndarray]:
        n, t = split_call(c[1], c[2])
        return session.run(keys, {a: b.contiguous().numpy() for a, b in zip(n, t, strict=True)})

    diff = 0.0
    for c in calls:
        for k, got in zip(keys, ort_call(c), strict=True):
            diff = max(diff, float(np.abs(got.astype(np.float64) - c[3][k].numpy().astype(np.float64)).max()))
    runtime = Runtime(device="cpu", precision="fp32")
    torch_s = _timed(lambda c: runtime.run(model, *c[1], **c[2]), calls)
    onnx_s = _timed(ort_call, calls)
    return {"inputs": names, "outputs": keys, "max_abs_diff": diff, "calls": len(calls),
            "torch_s": round(torch_s, 4), "onnx_s": round(onnx_s, 4)}


def export_onnx(package: str | Path, *, opset: int = MIN_OPSET, only_faster: bool = True, bf16: bool = True
                ) -> dict[str, Any]:
    """Export the 2D networks of ``package`` to ``PKG/onnx/`` and record the checks in its manifest.

    Args:
        package: a package written by ``spinelab export model`` (verified first).
        opset: ONNX opset, 17 or newer.
        only_faster: mark a network for use only where onnxruntime beat torch on the fixed study (else all).
        bf16: also run the bf16 parity check (bf16 then becomes the default on CPUs with bf16 units).

    Returns:
        The manifest's new ``onnx`` section (and ``bf16`` under ``"bf16"``).

    Raises:
        ConfigError: an opset under 17.
        InputError: the package fails verification.
    """
    from spinelab.tasks.catalog import get_route

    if opset < MIN_OPSET:
        raise ConfigError(f"--opset must be {MIN_OPSET} or newer, got {opset}")
    package = Path(package)
    manifest = verify_package(package)
    task, route = manifest["task"], get_route(*manifest["route"].split("/", 1))
    shutil.rmtree(package / "onnx", ignore_errors=True)
    quiet = logging.getLogger("spinelab")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the synthetic study's input warnings are not the user's news
    try:
        return _export(package, manifest, task, route, opset, only_faster, bf16)
    except BaseException:  # leave a package that verifies: no half-written onnx/ and no stale onnx section
        from spinelab.deploy.package import write_manifest

        shutil.rmtree(package / "onnx", ignore_errors=True)
        write_manifest(package, _record(manifest), keep={k: manifest[k] for k in ("bf16",) if k in manifest})
        raise
    finally:
        quiet.setLevel(level)


def _record(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's own fields (task, route, folds, licence, ...), without what ``write_manifest`` sets."""
    return {k: v for k, v in manifest.items() if k not in ("kind", "format", "spinelab", "created", "files", "onnx",
                                                           "bf16")}


def _export(package: Path, manifest: dict[str, Any], task: str, route: Any, opset: int, only_faster: bool,
            bf16: bool) -> dict[str, Any]:
    """``export_onnx``'s work on a verified package."""
    from spinelab.deploy.package import write_manifest

    with tempfile.TemporaryDirectory(prefix="spinelab-parity-") as tmp:
        dataset, study = fixed_study(task, Path(tmp))
        recorder = RecordingRuntime(device="cpu", precision="fp32")
        reference = result_vector(_predict(package, route, recorder, dataset, study))
        groups: dict[str, list[Any]] = {}
        for call in recorder.calls:
            if not any(isinstance(m, _3D) for m in call[0].modules()):
                groups.setdefault(f"{state_fingerprint(call[0])}|{call_layout(call[1], call[2])}", []).append(call)
        files = _weights_by_fingerprint(package, manifest)
        networks = []
        for i, (key, calls) in enumerate(groups.items()):
            fingerprint, layout = key.split("|", 1)
            weights = files.get(fingerprint, f"network_{i}")
            stem = f"onnx/{weights.removesuffix('/model.pt').replace('/', '_')}"
            rel = f"{stem}.onnx" if not any(n["file"] == f"{stem}.onnx" for n in networks) else f"{stem}_{i}.onnx"
            entry = _export_network(calls[0][0], calls, package / rel, opset)
            entry.update(file=rel, weights=weights, fingerprint=fingerprint, layout=layout,
                         use=(entry["onnx_s"] < entry["torch_s"]) or not only_faster)
            networks.append(entry)
            log.debug("%s: max |onnx - torch| %.2e, torch %.3f s, onnxruntime %.3f s", rel, entry["max_abs_diff"],
                     entry["torch_s"], entry["onnx_s"])
        import onnxruntime as ort

        section: dict[str, Any] = {"opset": opset, "onnxruntime": ort.__version__, "torch": torch.__version__,
                                   "only_faster": only_faster, "networks": networks}
        name = f"synthetic {task} study (seed 0, 64 px)"
        if networks:
            onnx_rt = OnnxRuntime(package, [n for n in networks if n["use"]], device="cpu", precision="fp32")
            got = result_vector(_predict(package, route, onnx_rt, dataset, study))
            diff = float(np.abs(got - reference).max())
            section["parity"] = {"study": name, "max_prob_diff": diff, "tolerance": ONNX_TOLERANCE,
                                 "passed": diff < ONNX_TOLERANCE, "networks_used": sum(n["use"] for n in networks)}
        else:  # 3D routes: their networks stay on torch (onnxruntime was no faster for 3D U-Nets)
            section["parity"] = {"study": name, "max_prob_diff": None, "tolerance": ONNX_TOLERANCE, "passed": None,
                                 "networks_used": 0, "note": f"route {route.key} has no 2D network"}
        keep: dict[str, Any] = {"onnx": section}
        if bf16:
            b = result_vector(_predict(package, route, Runtime(device="cpu", precision="bf16"), dataset, study))
            bdiff = float(np.abs(b - reference).max())
            keep["bf16"] = {"study": section["parity"]["study"], "max_prob_diff": bdiff, "tolerance": BF16_TOLERANCE,
                            "passed": bdiff < BF16_TOLERANCE, "checked_on_bf16_units": cpu_has_bf16_units()}
    write_manifest(package, _record(manifest), keep={**{k: manifest[k] for k in ("bf16",) if k in manifest}, **keep})
    return {**section, **({"bf16": keep["bf16"]} if "bf16" in keep else {})}
