"""Flip TTA: each model on the input and on its mirror, the mirror's output mapped back."""

from __future__ import annotations

import torch

from spinelab.infer.tta import flip_outputs, swap_channels


def test_a_mirror_symmetric_model_gives_the_same_output_both_ways_once_unmirrored() -> None:
    x = torch.arange(12.0).view(1, 2, 6)
    models = [torch.nn.Identity(), torch.nn.Identity()]
    outs = flip_outputs(models, x, lambda m, inp: m(inp), tta=True, unmirror=lambda y: y.flip(-1))
    assert len(outs) == 4 and all(torch.equal(o, x) for o in outs)
    plain = flip_outputs(models, x, lambda m, inp: m(inp), tta=True)
    assert torch.equal(plain[1], x.flip(-1)) and torch.equal(plain[0], x)  # order: model 1, model 1 mirrored
    assert len(flip_outputs(models, x, lambda m, inp: m(inp), tta=False)) == 2


def test_custom_mirror_and_channel_swap() -> None:
    t = torch.arange(6.0).view(1, 3, 2)
    assert swap_channels(t, [(0, 1)])[0, :, 0].tolist() == [2.0, 0.0, 4.0]
    outs = flip_outputs([torch.nn.Identity()], {"a": 1}, lambda m, inp: inp["a"], tta=True,
                        mirror=lambda d: {"a": -d["a"]}, unmirror=lambda y: -y)
    assert outs == [1, 1]
