from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from convkit import ConvBlock, ResidualBlock, SeparableConv, init_weights
from convkit.layers.init import ZeroInitLast


def test_torch_init_is_pytorchs_default() -> None:
    torch.manual_seed(0)
    default = ResidualBlock(16, 32, stride=2)
    torch.manual_seed(0)
    explicit = ResidualBlock(16, 32, stride=2, init="torch")
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_kaiming_is_fan_out_normal_for_every_conv() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(64, 128, stride=2, bottleneck=True, init="kaiming")
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4  # three in the branch, one projection
    for conv in convs:
        fan_out = conv.out_channels * math.prod(conv.kernel_size)
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
        assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / fan_out)


def test_kaiming_resets_norms_and_conv_biases() -> None:
    block = ConvBlock(8, 8, norm="group", order="conv-act-norm")
    with torch.no_grad():
        block.norm.weight.fill_(3.0)
        block.norm.bias.fill_(2.0)
    init_weights(block, "kaiming")
    assert torch.equal(block.norm.weight, torch.ones(8)) and torch.equal(
        block.norm.bias, torch.zeros(8)
    )
    assert torch.equal(block.conv.bias, torch.zeros(8))


def test_linear_layers_keep_their_init() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    before = model[2].weight.clone()
    init_weights(model, "zero_last")
    assert torch.equal(model[2].weight, before)


@pytest.mark.parametrize("bottleneck", [False, True])
@pytest.mark.parametrize("preact", [False, True])
def test_zero_last_makes_every_block_its_shortcut(bottleneck: bool, preact: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        ResidualBlock(8, 16, stride=2, bottleneck=bottleneck, preact=preact),
        ResidualBlock(16, 16, bottleneck=bottleneck, preact=preact),
    )
    init_weights(net, "zero_last").eval()
    assert all(isinstance(b, ZeroInitLast) for b in net)
    x = torch.randn(2, 8, 6, 6)
    first = net[0]
    if preact:
        pre = first.conv1.act(first.conv1.norm(x))
        expected = first.shortcut(pre)  # then the identity block adds zero
    else:
        expected = torch.relu(torch.relu(first.shortcut(x)))
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


def test_modules_without_residual_branches_are_fine() -> None:
    assert not isinstance(SeparableConv(4, 4), ZeroInitLast)
    init_weights(SeparableConv(4, 4), "zero_last")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`init`.*'torch', 'kaiming', 'zero_last'.*init='he'"):
        init_weights(nn.Conv2d(1, 1, 1), "he")
    with pytest.raises(TypeError, match=r"`module`.*nn.Module.*Received list"):
        init_weights([nn.Conv2d(1, 1, 1)], "kaiming")  # type: ignore[arg-type]
