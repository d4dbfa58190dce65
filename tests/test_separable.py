from __future__ import annotations

import pytest
import torch
from torch import nn

from convkit import ConvBlock, SeparableConv
from convkit.shapes import conv_macs, conv_params, summary


def randomise(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=gen) * 0.5
                tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return model


@pytest.mark.parametrize(("stride", "multiplier"), [(1, 1), (2, 1), (1, 2)])
def test_matches_hand_built_mobilenet_pair(stride: int, multiplier: int) -> None:
    ours = randomise(SeparableConv(8, 16, stride=stride, depth_multiplier=multiplier))
    mid = 8 * multiplier
    reference = nn.Sequential(
        nn.Conv2d(8, mid, 3, stride, 1, groups=8, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.Conv2d(mid, 16, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
    )
    reference.load_state_dict(
        dict(zip(reference.state_dict(), ours.state_dict().values(), strict=True))
    )
    x = torch.randn(2, 8, 9, 9)
    for train in (False, True):
        ours.train(train)
        reference.train(train)
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
    assert ours.output_size((9, 9)) == tuple(ours(x).shape[2:])


def test_xception_variant_has_one_norm_and_act() -> None:
    sep = SeparableConv(8, 16, depthwise_norm=None, depthwise_act=None)
    assert [n for n, _ in sep.depthwise.named_children()] == ["conv"]
    assert sep.depthwise.conv.bias is not None  # no norm follows: ConvBlock's bias rule
    assert [n for n, _ in sep.pointwise.named_children()] == ["conv", "norm", "act"]


@pytest.mark.parametrize(("c_in", "c_out", "k"), [(32, 64, 3), (16, 16, 5), (3, 24, 3)])
def test_summary_shows_the_saving(c_in: int, c_out: int, k: int) -> None:
    size = (1, c_in, 12, 12)
    sep = summary(
        SeparableConv(c_in, c_out, k, norm=None, depthwise_norm=None, bias=False), size[1:]
    )
    dense = summary(ConvBlock(c_in, c_out, k, norm=None, bias=False), size[1:])
    rows = {row["name"]: row for row in sep.rows}
    assert rows["depthwise.conv"]["params"] == conv_params(c_in, c_in, k, groups=c_in, bias=False)
    assert rows["pointwise.conv"]["params"] == conv_params(c_in, c_out, 1, bias=False)
    assert rows["depthwise.conv"]["macs"] == conv_macs(c_in, c_in, k, 12, groups=c_in)
    # the factorisation's ratio, 1 / C_out + 1 / K^2, in parameters and in MACs
    ratio = 1 / c_out + 1 / k**2
    assert sep.total_params / dense.total_params == pytest.approx(ratio)
    assert sep.total_macs / dense.total_macs == pytest.approx(ratio)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"depthwise_norm": "bn"}, ValueError, r"`depthwise_norm`.*unknown name 'bn'"),
        ({"depthwise_act": 5}, TypeError, r"`depthwise_act`"),
        ({"norm": "bn"}, ValueError, r"`norm`.*unknown name 'bn'"),
        ({"depth_multiplier": 0}, ValueError, r"`depth_multiplier`"),
        ({"stride": -1}, ValueError, r"`stride`"),
        ({"out_channels": 0}, ValueError, r"`out_channels`"),
    ],
)
def test_bad_arguments_raise_before_any_work(kwargs: dict, error: type, match: str) -> None:
    args = {"in_channels": 8, "out_channels": 16, **kwargs}
    rng = torch.get_rng_state()
    with pytest.raises(error, match=match):
        SeparableConv(**args)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(
    ("dims", "conv", "bn"), [(1, nn.Conv1d, nn.BatchNorm1d), (3, nn.Conv3d, nn.BatchNorm3d)]
)
def test_other_dims_match_hand_built(dims: int, conv: type, bn: type) -> None:
    ours = randomise(SeparableConv(4, 6, dims=dims, stride=2))
    reference = nn.Sequential(
        conv(4, 4, 3, 2, 1, groups=4, bias=False), bn(4), nn.ReLU(),
        conv(4, 6, 1, bias=False), bn(6), nn.ReLU(),
    )  # fmt: skip
    reference.load_state_dict(
        dict(zip(reference.state_dict(), ours.state_dict().values(), strict=True))
    )
    x = torch.randn(2, 4, *[7] * dims)
    ours.eval()
    reference.eval()
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
    assert ours.dims == dims and ours.output_size((7,) * dims) == (4,) * dims


def test_summary_shows_the_saving_in_1d() -> None:
    sep = summary(
        SeparableConv(28, 64, 5, dims=1, norm=None, depthwise_norm=None, bias=False), (28, 28)
    )
    dense = summary(ConvBlock(28, 64, 5, dims=1, norm=None, bias=False), (28, 28))
    assert sep.total_macs / dense.total_macs == pytest.approx(1 / 64 + 1 / 5)


def test_dims_4_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`dims`.*dims=4"):
        SeparableConv(4, 4, dims=4)
