"""``--runtime onnx``: a ``Runtime`` whose ``run`` hands the package's exported 2D networks to onnxruntime.

Every predictor calls its 2D networks through ``Runtime.run(model, *inputs, **kwargs)``, so swapping the runtime
is the whole switch: no predictor knows about ONNX. A network is matched to its ONNX file by the SHA-256 of its
state dict (``state_fingerprint``) and by the layout of the call (which arguments are tensors, their ranks and
dtypes, the values of the others: ``call_layout``), both recorded at export; an ONNX file therefore only ever
runs for exactly the weights and the call it was exported and parity-checked on. Anything unmatched (the 3D
networks, which ``sliding_window`` runs, and networks where onnxruntime was not faster) stays on torch, as does
a call onnxruntime rejects (logged once).
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from pathlib import Path
from typing import Any

import torch

from spinelab.errors import ConfigError
from spinelab.infer.runtime import Runtime

__all__ = ["OnnxRuntime", "state_fingerprint", "call_layout", "split_call"]

log = logging.getLogger("spinelab")
#: Fingerprints of live models (weak keys: a service that drops a predictor frees its models).
_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def state_fingerprint(state: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values; not the memory layout), cached per
    live model object."""
    model = state if isinstance(state, torch.nn.Module) else None
    if model is not None and model in _FINGERPRINTS:
        return _FINGERPRINTS[model]
    items = model.state_dict() if model is not None else state
    digest = hashlib.sha256()
    for key in sorted(items):
        t = items[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()
    if model is not None:
        _FINGERPRINTS[model] = value
    return value


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"T{value.dim()}{str(value.dtype).removeprefix('torch.')}"
    return repr(value)


def call_layout(inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``"T4float32,T2float32|mask=T2bool"``: the call's shape-free signature (non-tensors by value)."""
    return (",".join(_describe(v) for v in inputs) + "|"
            + ",".join(f"{k}={_describe(kwargs[k])}" for k in sorted(kwargs)))


def split_call(inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[str], list[torch.Tensor]]:
    """The ONNX input names and tensors of a call: positional tensors ``in0, in1, ...``, keyword tensors by name
    (sorted); non-tensor arguments are constants of the exported graph."""
    names, tensors = [], []
    for i, v in enumerate(inputs):
        if isinstance(v, torch.Tensor):
            names.append(f"in{i}")
            tensors.append(v)
    for k in sorted(kwargs):
        if isinstance(kwargs[k], torch.Tensor):
            names.append(k)
            tensors.append(kwargs[k])
    return names, tensors


class OnnxRuntime(Runtime):
    """A CPU ``Runtime`` that runs the networks listed in a package's manifest on onnxruntime.

    Args:
        package: the model package (``spinelab export model`` + ``spinelab export onnx``).
        networks: the manifest's ``onnx.networks`` entries that are used (``use``): file, fingerprint, layout,
            inputs, outputs.
        threads: onnxruntime intra-op threads (default: torch's thread count, so both use the same cores).
    """

    def __init__(self, package: str | Path, networks: list[dict[str, Any]], *, threads: int | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        if self.device != "cpu":
            raise ConfigError("--runtime onnx runs on the CPU; use --device cpu (or --runtime torch on a GPU)")
        self.package = Path(package)
        self.threads = threads or torch.get_num_threads()
        self.networks = {f"{n['fingerprint']}|{n['layout']}": n for n in networks}
        self._sessions: dict[str, Any] = {}
        self._rejected: set[str] = set()

    @classmethod
    def from_package(cls, package: str | Path, manifest: dict[str, Any] | None, **options: Any) -> OnnxRuntime:
        """The runtime of a verified package's manifest.

        Raises:
            ConfigError: not a package, no ONNX export, or an export whose parity check failed.
        """
        onnx = (manifest or {}).get("onnx")
        if not onnx:
            raise ConfigError(f"{package}: --runtime onnx needs a model package with ONNX networks; run "
                              f"`spinelab export model RUN --out PKG` then `spinelab export onnx PKG`")
        parity = onnx.get("parity") or {}
        if not onnx.get("networks"):
            raise ConfigError(f"{package}: the package has no ONNX network ({parity.get('note', 'none exported')}); "
                              "use --runtime torch")
        if not parity.get("passed"):
            raise ConfigError(f"{package}: the package's ONNX parity check failed (largest probability difference "
                              f"{parity.get('max_prob_diff')}); use --runtime torch")
        return cls(package, [n for n in onnx.get("networks", []) if n.get("use", True)], **options)

    def session(self, key: str) -> Any:
        """The onnxruntime session of a manifest network (created on first use)."""
        if key not in self._sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            path = self.package / self.networks[key]["file"]
            self._sessions[key] = ort.InferenceSession(str(path), sess_options=opts,
                                                       providers=["CPUExecutionProvider"])
        return self._sessions[key]

    def network_key(self, model: torch.nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The manifest key of this call when an ONNX network was exported for it, else ``None``."""
        key = f"{state_fingerprint(model)}|{call_layout(inputs, kwargs)}"
        return key if key in self.networks and key not in self._rejected else None

    def run(self, model: torch.nn.Module, *inputs: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """onnxruntime for a network of the package, torch (``Runtime.run``) for anything else."""
        key = self.network_key(model, inputs, kwargs)
        if key is None:
            return super().run(model, *inputs, **kwargs)
        entry = self.networks[key]
        names, tensors = split_call(inputs, kwargs)
        feeds = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(names, tensors, strict=True)}
        try:
            outs = self.session(key).run(entry["outputs"], feeds)
        except Exception as err:  # a shape the export did not generalise to: torch gives the right answer
            log.warning("onnxruntime refused %s (%s: %s); that network runs on torch from now on",
                        entry["file"], type(err).__name__, str(err).splitlines()[0][:200])
            self._rejected.add(key)
            return super().run(model, *inputs, **kwargs)
        return {k: torch.from_numpy(v).float() for k, v in zip(entry["outputs"], outs, strict=True)}
