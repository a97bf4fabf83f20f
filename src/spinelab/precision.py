"""One spelling of numeric precision for training and inference.

Users write ``bf16``, ``fp16`` or ``fp32`` everywhere, or Lightning's own spellings (``bf16-mixed``,
``16-mixed``, ``32-true``, ...). Training stores Lightning's spelling (``trainer.precision``, handed to
``lightning.Trainer``); inference stores the autocast dtype name (``infer.precision``: ``fp32``, ``bf16``,
``fp16``). Both config fields and the CLI go through these two functions, so either spelling works in
either place. Pure Python: the config schema imports it without torch.
"""

from __future__ import annotations

from spinelab.errors import ConfigError

__all__ = ["PrecisionError", "inference_precision", "training_precision", "PRECISION_HELP"]

# Inference runs under autocast, so Lightning's "-true" (weights in that dtype) and "-mixed" both mean
# "autocast to that dtype" here.
_INFERENCE = {
    "fp32": "fp32", "32": "fp32", "32-true": "fp32",
    "bf16": "bf16", "bf16-mixed": "bf16", "bf16-true": "bf16",
    "fp16": "fp16", "16": "fp16", "16-mixed": "fp16", "16-true": "fp16",
}
_TRAINING = {
    "fp32": "32-true", "32": "32-true", "32-true": "32-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true",
    "fp16": "16-mixed", "16": "16-mixed", "16-mixed": "16-mixed", "16-true": "16-true",
    "64": "64-true", "64-true": "64-true",
    "transformer-engine": "transformer-engine", "transformer-engine-float16": "transformer-engine-float16",
}

PRECISION_HELP = "fp32, bf16 or fp16 (GPU only), or Lightning's bf16-mixed, 16-mixed, 32-true"


class PrecisionError(ConfigError, ValueError):
    """An unknown precision; a ``ValueError`` too, so pydantic reports it under the field's name."""


def _normalise(value: object) -> str:
    return str(value).strip().lower()


def inference_precision(value: object) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for any accepted spelling (``bf16-mixed`` -> ``bf16``).

    Raises:
        PrecisionError: not a precision spinelab can run inference in.
    """
    try:
        return _INFERENCE[_normalise(value)]
    except KeyError:
        raise PrecisionError(f"unknown inference precision {value!r}; use {PRECISION_HELP}") from None


def training_precision(value: object) -> str:
    """Lightning's spelling for any accepted one (``bf16`` -> ``bf16-mixed``, ``fp16`` -> ``16-mixed``).

    Raises:
        PrecisionError: not a precision Lightning accepts.
    """
    try:
        return _TRAINING[_normalise(value)]
    except KeyError:
        raise PrecisionError(f"unknown training precision {value!r}; use {PRECISION_HELP}") from None
