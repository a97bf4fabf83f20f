"""``FractureDynUNet``: full-resolution logits, deep-supervision heads only while training, config errors."""

from __future__ import annotations

import pytest
import torch

from spinelab.errors import ConfigError
from spinelab.models import create_model


def test_deep_supervision_heads_while_training_only() -> None:
    model = create_model("test_fracture_dynunet", in_chans=2, n_classes=2)
    out = model(torch.zeros(2, 2, 16, 16, 16))
    assert out["mask"].shape == (2, 2, 16, 16, 16) and out["deep"].shape == (2, 1, 2, 16, 16, 16)
    model.eval()
    with torch.no_grad():
        assert set(model(torch.zeros(1, 2, 16, 16, 16))) == {"mask"}
    plain = create_model("test_fracture_dynunet", deep_supervision=False).train()
    assert set(plain(torch.zeros(1, 1, 8, 8, 8))) == {"mask"}


def test_seed_architecture_has_five_pools_and_32_features() -> None:
    model = create_model("fracture_dynunet")
    assert model.divisor == 32
    assert model.body.input_block.conv1.conv.out_channels == 32


def test_bad_depths_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="deep_levels"):
        create_model("test_fracture_dynunet", deep_levels=2)
    with pytest.raises(ConfigError, match="pools"):
        create_model("test_fracture_dynunet", pools=0)
