"""Inference runtime: device checks, bf16 autocast close to fp32, channels_last on 2D layers only, sliding
windows over volumes."""

from __future__ import annotations

import pytest
import torch

from spinelab.errors import ConfigError
from spinelab.infer.runtime import Runtime, resolve_device, to_channels_last
from spinelab.models import create_model


class Pointwise3d(torch.nn.Module):
    """A 1x1x1 convolution: every voxel's output depends on that voxel only, so windows blend exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.conv(x)}


class Mixed(torch.nn.Module):
    """A 2D and a 3D convolution in one model; records the memory format its 4-D input arrives in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = torch.nn.Conv2d(1, 2, 3)
        self.conv3d = torch.nn.Conv3d(1, 2, 3)
        self.input_channels_last: bool | None = None

    def forward(self, image: torch.Tensor, volume: torch.Tensor) -> dict[str, torch.Tensor]:
        self.input_channels_last = image.is_contiguous(memory_format=torch.channels_last)
        return {"image": self.conv2d(image), "volume": self.conv3d(volume)}


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
        seg = Runtime(device="cuda", precision="fp16").sliding_window(
            create_model("test_vertebra_seg3d_unet"), torch.rand(1, 1, 12, 16, 8), 8, out_device="cpu")
        assert seg["mask"].device.type == "cpu" and torch.isfinite(seg["mask"]).all()


def test_channels_last_reaches_2d_layers_and_4d_inputs_only() -> None:
    torch.manual_seed(0)
    model = Mixed()
    with pytest.raises(RuntimeError, match="required rank 4"):  # what Module.to does with a Conv3d inside
        Mixed().to(memory_format=torch.channels_last)
    image, volume = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 6, 8, 8)
    ref = {k: v.clone() for k, v in model(image, volume).items()}
    out = Runtime(device="cpu", channels_last=True).run(model, image, volume)
    assert model.conv2d.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv3d.weight.is_contiguous()  # 3D layers keep their layout
    assert model.input_channels_last is True
    for key in ref:
        torch.testing.assert_close(out[key], ref[key])
    Runtime(device="cpu", channels_last=False).run(Mixed(), image, volume)
    plain = to_channels_last(torch.nn.Sequential(torch.nn.Conv3d(1, 1, 1)))
    assert plain[0].weight.is_contiguous()


def test_a_3d_segmentation_model_runs_with_channels_last_on() -> None:
    model = create_model("test_vertebra_seg3d_unet")
    out = Runtime(device="cpu", channels_last=True).run(model, torch.rand(1, 1, 8, 8, 8))
    assert out["mask"].shape == (1, 8, 8, 8, 8) and torch.isfinite(out["mask"]).all()


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_sliding_window_blends_windows_into_the_whole_volume(mode: str) -> None:
    torch.manual_seed(0)
    model = Pointwise3d()
    volume = torch.rand(1, 1, 11, 9, 14)
    with torch.no_grad():
        whole = model(volume)["mask"]
    out = Runtime(device="cpu").sliding_window(model, volume, (4, 4, 6), sw_batch_size=3, overlap=0.5, mode=mode)
    assert out["mask"].shape == (1, 2, 11, 9, 14) and out["mask"].dtype == torch.float32
    torch.testing.assert_close(out["mask"], whole, atol=1e-5, rtol=1e-5)
    same = Runtime(device="cpu").sliding_window(model, volume, 5, out_device="cpu")  # one int for every axis
    torch.testing.assert_close(same["mask"], whole, atol=1e-5, rtol=1e-5)


def test_sliding_window_runs_a_unet_in_bf16_and_refuses_bad_arguments() -> None:
    model = create_model("test_vertebra_seg3d_unet")
    out = Runtime(device="cpu", precision="bf16").sliding_window(model, torch.rand(1, 1, 10, 12, 8), (8, 8, 8))
    assert out["mask"].shape == (1, 8, 10, 12, 8) and out["mask"].dtype == torch.float32
    rt = Runtime(device="cpu")
    with pytest.raises(ValueError, match=r"not \(B, C, \*spatial\) for roi_size \(8, 8, 8\)"):
        rt.sliding_window(model, torch.rand(1, 10, 12, 8), (8, 8, 8))
    with pytest.raises(ValueError, match="overlap must be in"):
        rt.sliding_window(model, torch.rand(1, 1, 8, 8, 8), 8, overlap=1.0)
    with pytest.raises(ValueError, match="mode must be"):
        rt.sliding_window(model, torch.rand(1, 1, 8, 8, 8), 8, mode="mean")
