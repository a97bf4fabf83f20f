"""How models run at inference: device, bf16 / fp16 autocast, channels_last, torch.compile, sliding windows.

``channels_last`` is a 2D layout: it reaches the 2D layers of a model and 4-D inputs only, so a volume
model (``Conv3d``) runs with it on. Volume models larger than memory run through MONAI's
``sliding_window_inference`` under the same device and precision (``Runtime.sliding_window``).

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
from torch import nn

from spinelab.errors import ConfigError
from spinelab.precision import inference_precision

__all__ = ["Runtime", "resolve_device", "cpu_has_bf16_units", "to_channels_last"]

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


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert the layers of ``model`` whose tensors are all at most 4-D to channels_last, in place.

    ``Module.to(memory_format=channels_last)`` refuses a model with any 5-D weight (``Conv3d``: "required
    rank 4 tensor to use channels_last format"); converting layer by layer keeps the 2D layers of a mixed
    model fast and leaves the 3D ones as they are.
    """
    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        below = [*module.parameters(), *module.buffers()]  # Module.to converts the children too
        if any(t.dim() == 4 for t in own) and all(t.dim() <= 4 for t in below):
            module.to(memory_format=torch.channels_last)
    return model


@dataclass
class Runtime:
    """Inference settings applied to every model call.

    Args:
        device: ``cpu``, ``cuda`` or ``auto``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 on a GPU only); Lightning's spellings
            (``bf16-mixed``, ``16-mixed``, ``32-true``) are accepted too.
        channels_last: convert 4-D inputs and the 2D layers of models to channels_last (faster 2D
            convolutions; 3D layers and 5-D inputs stay as they are).
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
                model = to_channels_last(model)
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

    @torch.inference_mode()
    def sliding_window(self, model: nn.Module, volume: torch.Tensor, roi_size: int | tuple[int, ...], *,
                       sw_batch_size: int = 1, overlap: float = 0.25, mode: str = "constant",
                       padding_mode: str = "constant", out_device: str | None = None) -> dict[str, torch.Tensor]:
        """Run a volume model over ``roi_size`` windows of ``volume`` and blend the windows' outputs.

        MONAI's ``sliding_window_inference`` with this runtime's device, precision, channels_last and
        compile. Every output of ``model`` (a dict of maps at the input's resolution, as the segmentation
        models return) is blended to the full volume.

        Args:
            model: takes ``(N, C, *roi_size)`` and returns a dict of ``(N, K, *roi_size)`` tensors.
            volume: ``(B, C, *spatial)``, e.g. ``(1, 1, D, H, W)``.
            roi_size: window size per spatial axis (an int: the same on every axis); a window larger than
                the volume is cut to it and the volume padded as needed.
            sw_batch_size: windows per model call.
            overlap: fraction of a window shared with its neighbour along each axis, in [0, 1).
            mode: blending of overlapping windows, ``constant`` (mean) or ``gaussian`` (centre-weighted).
            padding_mode: how the volume is padded to whole windows (``constant``, ``reflect``, ...).
            out_device: where the blended output is gathered (default: the runtime's device; ``cpu``
                saves GPU memory for a large volume).

        Returns:
            The model's outputs for the whole volume, as float32.

        Raises:
            ValueError: ``volume``'s rank does not fit ``roi_size``, or ``overlap`` / ``mode`` are invalid.
        """
        from monai.inferers import sliding_window_inference

        spatial = volume.dim() - 2
        if spatial < 1 or (not isinstance(roi_size, int) and len(roi_size) != spatial):
            raise ValueError(f"sliding_window: volume of shape {tuple(volume.shape)} is not (B, C, *spatial) for "
                             f"roi_size {roi_size}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"sliding_window: overlap must be in [0, 1), got {overlap}")
        if mode not in ("constant", "gaussian"):
            raise ValueError(f"sliding_window: mode must be 'constant' or 'gaussian', got {mode!r}")
        roi = (roi_size,) * spatial if isinstance(roi_size, int) else tuple(roi_size)
        prepared = self.prepare(model)
        with self.autocast():
            out = sliding_window_inference(self._to_device(volume), roi, sw_batch_size, prepared, overlap=overlap,
                                           mode=mode, padding_mode=padding_mode, sw_device=self.device,
                                           device=out_device or self.device)
        if isinstance(out, torch.Tensor):
            return {"out": out.float()}
        return {k: v.float() for k, v in dict(out).items()}

    def _to_device(self, x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def run_inference_options(run_dir: Any, *, device: str | None = None, precision: str | None = None,
                          compile: bool | None = None, tta: bool | None = None,
                          runtime: str | None = None) -> tuple[Runtime, bool]:
    """The ``Runtime`` and flip-TTA flag for predicting with a run folder or a model package.

    Arguments left ``None`` come from the run's ``infer`` section (``config.yaml``), so a run trained for an
    AMX CPU or a GPU can carry ``infer.precision: bf16``; explicit arguments (the CLI options) win. Flip TTA
    left unset everywhere is on for a GPU and off for a CPU. A package (``spinelab.deploy``) is verified against
    its manifest first; when it records a passed bf16 parity check, precision left unset is bf16 on a CPU with
    bf16 units (``cpu_has_bf16_units``).

    Args:
        run_dir: run folder written by ``spinelab train``, or a package of ``spinelab export model``.
        device, precision, compile, tta: overrides; ``None`` keeps the run's setting.
        runtime: ``torch`` (default) or ``onnx``: the package's ONNX networks run on onnxruntime.

    Returns:
        ``(runtime, tta)``.

    Raises:
        InputError: a package file that does not match the manifest, or a newer package format.
        ConfigError: ``runtime`` is unknown, or ``onnx`` for a folder without ONNX networks.
    """
    from spinelab.config.load import read_run_config
    from spinelab.deploy.manifest import is_package, verify_package

    manifest = verify_package(run_dir) if is_package(run_dir) else None
    cfg = read_run_config(run_dir).infer
    if precision is None and cfg.precision == "fp32" and manifest is not None:
        bf16 = manifest.get("bf16") or {}
        if bf16.get("passed") and resolve_device(device or cfg.device) == "cpu" and cpu_has_bf16_units():
            precision = "bf16"
            log.info("%s: bf16 by default (the package's bf16 parity check passed; this CPU has bf16 units)",
                     run_dir)
    options = {"device": device or cfg.device, "precision": precision or cfg.precision,
               "channels_last": cfg.channels_last, "compile": cfg.compile if compile is None else compile}
    if runtime in (None, "torch"):
        rt: Runtime = Runtime(**options)
    elif runtime == "onnx":
        from spinelab.infer.onnx_runtime import OnnxRuntime

        rt = OnnxRuntime.from_package(run_dir, manifest, **options)
    else:
        raise ConfigError(f"--runtime must be torch or onnx, got {runtime!r}")
    if tta is None:
        tta = cfg.tta if cfg.tta is not None else rt.device != "cpu"
    return rt, tta
