"""Inference runtime: device checks, bf16 autocast close to fp32, channels_last."""

from __future__ import annotations

import pytest
import torch

from spinelab.errors import ConfigError
from spinelab.infer.runtime import Runtime, resolve_device
from spinelab.models import create_model


def test_device_resolution() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="precision"):
        Runtime(precision="fp16")


def test_bf16_and_channels_last_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = create_model("test_cervical_slice_localizer")
    x, pos = torch.rand(1, 6, 3, 48, 48), torch.linspace(0, 1, 6)[None]
    ref = Runtime(device="cpu", channels_last=False).run(model, x, pos)
    fast = Runtime(device="cpu", channels_last=True).run(model, x, pos)
    bf16 = Runtime(device="cpu", precision="bf16").run(model, x, pos)
    torch.testing.assert_close(fast["ratio"], ref["ratio"], atol=1e-4, rtol=1e-4)
    assert bf16["ratio"].dtype == torch.float32  # outputs come back as fp32
    assert (torch.sigmoid(bf16["ratio"]) - torch.sigmoid(ref["ratio"])).abs().max() < 0.05


def test_prepare_is_cached_per_model() -> None:
    rt = Runtime(device="cpu")
    model = create_model("test_cervical_slice_localizer")
    assert rt.prepare(model) is rt.prepare(model)


def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
                                                 ) -> None:
    import spinelab.infer.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: False)
    with caplog.at_level("WARNING", logger="spinelab"):
        Runtime(device="cpu", precision="bf16")
    assert "no bf16 units" in caplog.text
    caplog.clear()
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: True)
    with caplog.at_level("WARNING", logger="spinelab"):
        Runtime(device="cpu", precision="bf16")
    assert caplog.text == ""


def test_run_folder_infer_section_supplies_defaults_and_options_win(tmp_path) -> None:
    from spinelab.config.load import load_config, save_config
    from spinelab.infer.runtime import run_inference_options

    cfg = load_config("cervical", overrides=["infer.device=cpu", "infer.tta=false", "infer.channels_last=false",
                                             "infer.compile=true"])
    save_config(cfg, tmp_path / "config.yaml")
    runtime, tta = run_inference_options(tmp_path)
    assert (runtime.device, runtime.precision, runtime.channels_last, runtime.compile, tta) == (
        "cpu", "fp32", False, True, False)
    runtime, tta = run_inference_options(tmp_path, compile=False, tta=True, precision="bf16")
    assert (runtime.compile, tta, runtime.precision) == (False, True, "bf16")


def test_flip_tta_left_unset_is_off_on_a_cpu(tmp_path) -> None:
    from spinelab.config.load import load_config, save_config
    from spinelab.infer.runtime import run_inference_options

    save_config(load_config("lumbar", overrides=["infer.device=cpu"]), tmp_path / "config.yaml")
    assert run_inference_options(tmp_path)[1] is False
    assert run_inference_options(tmp_path, tta=True)[1] is True



def test_precision_spellings_and_fp16_only_on_a_gpu() -> None:
    assert Runtime(device="cpu", precision="bf16-mixed").precision == "bf16"
    assert Runtime(device="cpu", precision="32-true").precision == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        Runtime(device="cpu", precision="16-mixed")
    if torch.cuda.is_available():
        out = Runtime(device="cuda", precision="fp16").run(create_model("test_cervical_slice_localizer"),
                                                          torch.rand(1, 6, 3, 48, 48), torch.linspace(0, 1, 6)[None])
        assert out["ratio"].dtype == torch.float32 and torch.isfinite(out["ratio"]).all()
