"""Backbones: tagged timm names, local weights through timm's loader (.pth and .safetensors), checksums,
and never a network connection (tests/models/conftest.py refuses every one)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import timm
import torch

from spinelab.errors import ConfigError, InputError
from spinelab.models import create_model
from spinelab.models.backbones import create_backbone, file_sha256

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny timm model saved as an ImageNet checkpoint would be: 3 input channels, a 1000-class classifier."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=1000)
    out = tmp_path_factory.mktemp("weights")
    state = model.state_dict()
    torch.save(state, out / "test_resnet.pth")
    save_file(state, out / "test_resnet.safetensors")
    return {"pth": out / "test_resnet.pth", "safetensors": out / "test_resnet.safetensors"}


def test_tagged_names_are_accepted_and_bad_ones_refused() -> None:
    model = create_backbone("test_resnet.r160_in1k", in_chans=6).eval()
    assert model(torch.rand(2, 6, 32, 32)).shape == (2, model.num_features)
    with pytest.raises(ConfigError, match="unknown pretrained tag 'bogus' for timm backbone 'test_resnet'"):
        create_backbone("test_resnet.bogus")
    with pytest.raises(ConfigError, match="unknown timm backbone 'nope.fb_in22k'"):
        create_backbone("nope.fb_in22k")
    with pytest.raises(ConfigError, match="never downloads"):
        create_backbone("hf-hub:timm/resnet18.a1_in1k")


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_local_weights_load_through_timm_with_another_in_chans(imagenet_like: dict[str, Path], kind: str) -> None:
    from timm.models import adapt_input_conv

    path = imagenet_like[kind]
    src = torch.load(imagenet_like["pth"], weights_only=True)
    model = create_backbone("test_resnet.r160_in1k", in_chans=6, pretrained_path=path,
                            pretrained_sha256=file_sha256(path))
    own = model.state_dict()
    assert "fc.weight" not in own and model.eval()(torch.rand(2, 6, 32, 32)).shape == (2, model.num_features)
    torch.testing.assert_close(own["conv1.0.weight"], adapt_input_conv(6, src["conv1.0.weight"]))
    assert all(torch.equal(v, src[k]) for k, v in own.items() if k != "conv1.0.weight")
    feats = create_backbone("test_resnet", in_chans=6, pretrained_path=path, features_only=True)  # lumbar stage 1
    assert torch.equal(feats.state_dict()["layer1.0.conv1.weight"], src["layer1.0.conv1.weight"])


def test_checksum_mismatch_and_bad_files_are_errors_naming_the_file(imagenet_like: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    path = imagenet_like["pth"]
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(InputError, match=r"test_resnet\.pth: SHA-256 [0-9a-f]{64} differs"):
        create_backbone("test_resnet", pretrained_path=path, pretrained_sha256="0" * 64)
    with pytest.raises(ConfigError, match="64 hex digits"):
        create_backbone("test_resnet", pretrained_path=path, pretrained_sha256="abc")
    with pytest.raises(InputError, match=r"absent\.safetensors: backbone weights not found"):
        create_backbone("test_resnet", pretrained_path=tmp_path / "absent.safetensors")
    with pytest.raises(InputError, match=r"test_resnet\.pth: cannot load these weights into timm backbone"):
        create_backbone("test_convnext", pretrained_path=path)  # another architecture
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(imagenet_like["safetensors"].read_bytes()[:1000])
    with pytest.raises(InputError, match=r"cut\.safetensors: cannot load"):
        create_backbone("test_resnet", pretrained_path=cut)


def test_registered_models_check_the_config_checksum(imagenet_like: dict[str, Path]) -> None:
    from spinelab.config.load import load_config

    path = imagenet_like["pth"]
    cfg = load_config("cervical", [REPO / "src/spinelab/configs" / "cervical" / "tiny.yaml"],
                      overrides=[f"stage1.model.pretrained_path={path}",
                                 f"stage1.model.pretrained_sha256={file_sha256(path)}"])
    assert cfg.stage1.model.pretrained_sha256 == file_sha256(path)
    kwargs = {"backbone": "test_resnet", "in_chans": 3, "pretrained_path": path}
    model = create_model("test_cervical_slice_localizer", pretrained_sha256=file_sha256(path), **kwargs)
    assert torch.equal(model.encoder.backbone.state_dict()["conv1.0.weight"],
                       torch.load(path, weights_only=True)["conv1.0.weight"])
    with pytest.raises(InputError, match="differs from model.pretrained_sha256"):
        create_model("test_cervical_slice_localizer", pretrained_sha256="f" * 64, **kwargs)
    with pytest.raises(ConfigError, match="pretrained_path is not"):
        create_model("test_lumbar_point_heatmap", pretrained_sha256="f" * 64)
