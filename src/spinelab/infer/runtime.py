"""How models run at inference: device, bf16 / fp16 autocast, channels_last and torch.compile.

fp16 autocast runs on GPUs only. On CPUs with AMX or AVX512-BF16 (bf16 matrix units) bf16 autocast is several
times faster than fp32; on CPUs without them it is emulated and slower, so ``Runtime`` warns. It must be
checked against fp32 on the metric before use (``bench/predict.py`` does), so fp32 stays the default.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from spinelab.errors import ConfigError
from spinelab.precision import inference_precision

__all__ = ["Runtime", "resolve_device", "cpu_has_bf16_units"]

log = logging.getLogger("spinelab")


def cpu_has_bf16_units() -> bool:
    """True when this CPU computes bf16 natively (AMX tiles or AVX512-BF16); otherwise bf16 is emulated."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; validates explicit names."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or auto")
    return device


@dataclass
class Runtime:
    """Inference settings applied to every model call.

    Args:
        device: ``cpu``, ``cuda`` or ``auto``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 on a GPU only); Lightning's spellings
            (``bf16-mixed``, ``16-mixed``, ``32-true``) are accepted too.
        channels_last: convert 4-D inputs and models to channels_last (faster convolutions).
        compile: wrap models in ``torch.compile`` (first call is slow; worth it for many studies).
    """

    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    _prepared: dict[int, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.device)
        self.precision = inference_precision(self.precision)
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ConfigError("precision fp16 needs a GPU (--device cuda); on a CPU use bf16 or fp32")
        if self.precision == "bf16" and self.device == "cpu" and not cpu_has_bf16_units():
            log.warning("this CPU has no bf16 units (AMX / AVX512-BF16): bf16 autocast is emulated and slower "
                        "than fp32; use --precision fp32")

    def prepare(self, model: torch.nn.Module) -> Any:
        """Move, convert and optionally compile ``model`` once; later calls reuse it."""
        key = id(model)
        if key not in self._prepared:
            model = model.eval().to(self.device)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self._prepared[key] = torch.compile(model) if self.compile else model
        return self._prepared[key]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda" if self.device.startswith("cuda") else "cpu",
                              dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    @torch.inference_mode()
    def run(self, model: torch.nn.Module, *inputs: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Call ``model(*inputs, **kwargs)`` with these settings; tensors move to the device."""
        prepared = self.prepare(model)
        inputs = tuple(self._to_device(x) for x in inputs)
        kwargs = {k: self._to_device(v) for k, v in kwargs.items()}
        with self.autocast():
            out = prepared(*inputs, **kwargs)
        return {k: v.float() for k, v in out.items()}

    def _to_device(self, x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        return x.to(self.device, non_blocking=True)


def run_inference_options(run_dir: Any, *, device: str | None = None, precision: str | None = None,
                          compile: bool | None = None, tta: bool | None = None) -> tuple[Runtime, bool]:
    """The ``Runtime`` and flip-TTA flag for predicting with a run folder.

    Arguments left ``None`` come from the run's ``infer`` section (``config.yaml``), so a run trained for an
    AMX CPU or a GPU can carry ``infer.precision: bf16``; explicit arguments (the CLI options) win. Flip TTA
    left unset everywhere is on for a GPU and off for a CPU.

    Args:
        run_dir: run folder written by ``spinelab train``.
        device, precision, compile, tta: overrides; ``None`` keeps the run's setting.

    Returns:
        ``(runtime, tta)``.
    """
    from spinelab.config.load import read_run_config

    cfg = read_run_config(run_dir).infer
    runtime = Runtime(device=device or cfg.device, precision=precision or cfg.precision,
                      channels_last=cfg.channels_last, compile=cfg.compile if compile is None else compile)
    if tta is None:
        tta = cfg.tta if cfg.tta is not None else runtime.device != "cpu"
    return runtime, tta
