"""The volume segmentation network: 3D and 2D shapes, its feature/head split, argument checks."""

from __future__ import annotations

import pytest
import torch

from spinelab.errors import ConfigError
from spinelab.models import create_model
from spinelab.models.segmentation import SegUNet


def test_3d_unet_keeps_the_volume_shape_and_gives_features_for_a_new_head() -> None:
    torch.manual_seed(0)
    model = create_model("test_vertebra_seg3d_unet", in_chans=2, n_classes=3).eval()
    x = torch.rand(1, 2, 8, 12, 16)
    feats = model.forward_features(x)
    assert feats.shape == (1, model.num_features, 8, 12, 16)
    assert model(x)["mask"].shape == (1, 3, 8, 12, 16)
    assert any(isinstance(m, torch.nn.Conv3d) for m in model.modules())


def test_2d_twin_and_default_classes() -> None:
    model = SegUNet(spatial_dims=2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    assert model(torch.rand(2, 1, 16, 16))["mask"].shape == (2, 8, 16, 16)  # background + C1-C7
    assert not any(isinstance(m, torch.nn.Conv3d) for m in model.modules())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"channels": (4, 8, 16), "strides": (2,)}, "one stride fewer than channels"),
    ({"channels": (4,), "strides": ()}, "at least 2 channels"),
])
def test_bad_shapes_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SegUNet(**kwargs)


def test_inflated_convolutions_give_the_2d_response_on_a_depth_constant_volume() -> None:
    from spinelab.models.segmentation import inflate_2d_to_3d

    torch.manual_seed(0)
    net2d = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.MaxPool2d(2)).eval()
    x = torch.rand(1, 2, 8, 8)
    want = net2d(x)
    net3d = inflate_2d_to_3d(net2d).eval()
    assert isinstance(net3d[0], torch.nn.Conv3d) and net3d[0].kernel_size == (3, 3, 3)
    assert isinstance(net3d[1], torch.nn.BatchNorm3d) and isinstance(net3d[3], torch.nn.MaxPool3d)
    got = net3d(x[:, :, None].repeat(1, 1, 6, 1, 1))  # the image repeated along depth
    torch.testing.assert_close(got[:, :, 1], want, atol=1e-5, rtol=1e-4)  # away from the depth edges


def test_a_layer_without_a_3d_twin_is_refused_by_name() -> None:
    from spinelab.models.segmentation import inflate_2d_to_3d

    with pytest.raises(ConfigError, match=r"cannot inflate layer '1' \(Upsample\)"):
        inflate_2d_to_3d(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Upsample(scale_factor=2)))


def test_timm_unet_inflates_a_2d_checkpoint_and_keeps_the_volume_shape(tmp_path) -> None:
    from spinelab.errors import InputError
    from spinelab.models.backbones import create_backbone

    torch.manual_seed(0)
    src = create_backbone("test_resnet", in_chans=1, features_only=True)
    ckpt = tmp_path / "test_resnet.pth"
    torch.save(src.state_dict(), ckpt)
    model = create_model("test_vertebra_seg3d_timm", pretrained_path=ckpt).eval()
    w2d, w3d = src.state_dict()["conv1.0.weight"], model.encoder.state_dict()["conv1.0.weight"]
    assert w3d.shape == (*w2d.shape[:2], w2d.shape[2], *w2d.shape[2:])
    torch.testing.assert_close(w3d.sum(2), w2d)  # repeated along depth, divided by the depth
    x = torch.rand(1, 1, 32, 32, 64)
    assert model.forward_features(x).shape == (1, model.num_features, 32, 32, 64)
    assert model(x)["mask"].shape == (1, 8, 32, 32, 64)
    with pytest.raises(InputError, match="missing.pth"):
        create_model("test_vertebra_seg3d_timm", pretrained_path=tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="4 channel counts"):
        create_model("test_vertebra_seg3d_timm", decoder_channels=(8, 8))


def test_segresnet_shape_and_level_check() -> None:
    model = create_model("test_vertebra_seg3d_segresnet", n_classes=9).eval()
    assert model(torch.rand(1, 1, 8, 16, 16))["mask"].shape == (1, 9, 8, 16, 16)
    with pytest.raises(ConfigError, match="one decoder level fewer"):
        create_model("test_vertebra_seg3d_segresnet", blocks_down=(1, 1), blocks_up=(1, 1))
