"""OnnxRuntime: a network is matched by its weights and its call, anything else stays on torch."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from spinelab.errors import ConfigError
from spinelab.infer.onnx_runtime import OnnxRuntime, call_layout, split_call, state_fingerprint
from spinelab.infer.runtime import to_channels_last


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        y = self.conv(x).mean((2, 3))
        return {"out": y if mask is None else y * mask}


def _export(model: nn.Module, path: Path) -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.m(x, mask=mask)["out"]

    buf = io.BytesIO()
    torch.onnx.export(Flat().eval(), (torch.zeros(2, 1, 8, 8), torch.ones(2, 2)), buf, dynamo=False,
                      opset_version=17, input_names=["in0", "mask"], output_names=["out"],
                      dynamic_axes={"in0": {0: "n", 2: "h", 3: "w"}, "mask": {0: "n"}, "out": {0: "n"}})
    path.write_bytes(buf.getvalue())


def test_the_fingerprint_follows_the_weights_not_the_memory_layout() -> None:
    torch.manual_seed(0)
    a, b = _Net(), _Net()
    fa = state_fingerprint(a)
    assert fa == state_fingerprint(dict(a.state_dict())) and fa != state_fingerprint(b)
    c = _Net()
    c.load_state_dict(a.state_dict())
    assert state_fingerprint(to_channels_last(c)) == fa


def test_the_layout_names_tensors_by_rank_and_dtype_and_others_by_value() -> None:
    x, m = torch.zeros(1, 1, 4, 4), torch.ones(1, 2, dtype=torch.bool)
    assert call_layout((x, None), {"mask": m}) == "T4float32,None|mask=T2bool"
    assert split_call((x, None), {"mask": m})[0] == ["in0", "mask"]


def test_a_matched_network_runs_on_onnxruntime_and_others_on_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, other = _Net().eval(), _Net().eval()
    _export(net, tmp_path / "net.onnx")
    x, mask = torch.randn(3, 1, 12, 12), torch.ones(3, 2)
    entry = {"file": "net.onnx", "fingerprint": state_fingerprint(net), "layout": call_layout((x,), {"mask": mask}),
             "inputs": ["in0", "mask"], "outputs": ["out"]}
    rt = OnnxRuntime(tmp_path, [entry], device="cpu", precision="fp32")
    got = rt.run(net, x, mask=mask)["out"]
    with torch.no_grad():
        want = net(x, mask=mask)["out"]
    assert torch.allclose(got, want, atol=1e-5) and rt._sessions  # noqa: SLF001 (the session was made)
    assert rt.network_key(other, (x,), {"mask": mask}) is None  # other weights: torch
    assert rt.network_key(net, (x,), {}) is None  # another call layout: torch
    got = rt.run(net, x)["out"]
    with torch.no_grad():
        assert torch.allclose(got, net(x)["out"], atol=1e-6)


def test_a_call_onnxruntime_rejects_falls_back_to_torch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    net = _Net().eval()
    _export(net, tmp_path / "net.onnx")
    x, bad = torch.randn(2, 1, 8, 8), torch.ones(2, 2, 2)  # a mask of another rank than exported
    entry = {"file": "net.onnx", "fingerprint": state_fingerprint(net), "layout": call_layout((x,), {"mask": bad}),
             "inputs": ["in0", "mask"], "outputs": ["out"]}
    rt = OnnxRuntime(tmp_path, [entry], device="cpu", precision="fp32")
    out = rt.run(net, x, mask=bad)["out"]
    assert out.shape == (2, 2, 2) and "runs on torch from now on" in caplog.text
    assert rt.network_key(net, (x,), {"mask": bad}) is None


def test_onnx_runs_on_the_cpu_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        OnnxRuntime(tmp_path, [], device="cuda", precision="fp32")
