"""One precision spelling: bf16/fp16/fp32 and Lightning's names, mapped for training and for inference."""

from __future__ import annotations

import pytest

from spinelab.errors import ConfigError
from spinelab.precision import inference_precision, training_precision


@pytest.mark.parametrize(("given", "train", "infer"), [
    ("bf16", "bf16-mixed", "bf16"), ("bf16-mixed", "bf16-mixed", "bf16"), ("BF16", "bf16-mixed", "bf16"),
    ("fp16", "16-mixed", "fp16"), ("16-mixed", "16-mixed", "fp16"), (16, "16-mixed", "fp16"),
    ("fp32", "32-true", "fp32"), ("32-true", "32-true", "fp32"), (32, "32-true", "fp32"),
])
def test_both_spellings_map_both_ways(given: object, train: str, infer: str) -> None:
    assert training_precision(given) == train
    assert inference_precision(given) == infer


def test_unknown_precision_is_a_config_error_and_a_value_error() -> None:
    with pytest.raises(ConfigError, match="unknown inference precision 'fp8'"):
        inference_precision("fp8")
    with pytest.raises(ValueError, match="unknown training precision 'half'"):
        training_precision("half")
    assert training_precision("64-true") == "64-true"  # Lightning-only values pass through for training
    with pytest.raises(ConfigError):
        inference_precision("64-true")
