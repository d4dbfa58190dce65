from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import SqueezeExcitation

from convkit import ConvBlock, DropPath, ResidualBlock, SqueezeExcite


def randomise(model: nn.Module) -> nn.Module:
    """Random weights and BatchNorm statistics, so that a wrong order shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=gen) * 0.5
                if name.endswith("running_var"):
                    values = values.abs() + 0.5
                tensor.copy_(values)
    return model


def copy_in_order(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s state into ``target`` entry by entry (same order, same shapes)."""
    src, dst = source.state_dict(), target.state_dict()
    assert [v.shape for v in src.values()] == [v.shape for v in dst.values()]
    target.load_state_dict(dict(zip(dst, src.values(), strict=True)))


def assert_same(ours: nn.Module, reference: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    for train in (False, True):
        ours.train(train)
        reference.train(train)
        torch.testing.assert_close(ours(x.clone()), reference(x.clone()), rtol=0, atol=0)


def tv_downsample(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


@pytest.mark.parametrize(
    ("c_in", "c_out", "stride"), [(8, 8, 1), (8, 16, 1), (8, 16, 2), (8, 8, 2)]
)
def test_basic_block_is_torchvisions_basic_block(c_in: int, c_out: int, stride: int) -> None:
    ours = randomise(ResidualBlock(c_in, c_out, stride=stride))
    down = tv_downsample(c_in, c_out, stride) if (c_in, stride) != (c_out, 1) else None
    reference = BasicBlock(c_in, c_out, stride, downsample=down)
    copy_in_order(ours, reference)
    assert_same(ours, reference, (2, c_in, 9, 9))


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(32, 32, 1), (16, 32, 2), (32, 32, 2)])
def test_bottleneck_is_torchvisions_bottleneck(c_in: int, c_out: int, stride: int) -> None:
    ours = randomise(ResidualBlock(c_in, c_out, stride=stride, bottleneck=True))
    assert [ours.conv1.conv.out_channels, ours.conv3.conv.out_channels] == [c_out // 4, c_out]
    down = tv_downsample(c_in, c_out, stride) if (c_in, stride) != (c_out, 1) else None
    reference = Bottleneck(c_in, c_out // 4, stride, downsample=down)  # stride on its 3x3
    copy_in_order(ours, reference)
    assert_same(ours, reference, (2, c_in, 7, 7))


class PreActBasic(nn.Module):
    """timm ResNetV2's PreActBasic, written out: the projection reads the pre-activation."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.norm1, self.act1 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm2, self.act2 = nn.BatchNorm2d(c_out), nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        needed = c_in != c_out or stride != 1
        self.down = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if needed else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.norm1(x))
        shortcut = x if self.down is None else self.down(pre)
        return self.conv2(self.act2(self.norm2(self.conv1(pre)))) + shortcut


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(8, 8, 1), (8, 16, 2)])
def test_preact_block_matches_hand_built(c_in: int, c_out: int, stride: int) -> None:
    ours = randomise(ResidualBlock(c_in, c_out, stride=stride, preact=True))
    assert [n for n, _ in ours.conv1.named_children()] == ["norm", "act", "conv"]
    assert ours.act is None
    reference = PreActBasic(c_in, c_out, stride)
    copy_in_order(ours, reference)
    assert_same(ours, reference, (2, c_in, 8, 8))


def test_preact_identity_shortcut_adds_the_raw_input() -> None:
    block = ResidualBlock(4, 4, preact=True, init="zero_last").eval()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)  # branch is zero: x + 0


@pytest.mark.parametrize("size", [8, 9])
def test_resnet_d_shortcut_is_avg_pool_then_conv(size: int) -> None:
    ours = randomise(ResidualBlock(8, 16, stride=2, shortcut="avg"))
    assert [n for n, _ in ours.shortcut.named_children()] == ["pool", "conv", "norm"]
    assert ours.shortcut.conv.stride == (1, 1)
    reference = nn.Sequential(
        nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
        nn.Conv2d(8, 16, 1, bias=False),
        nn.BatchNorm2d(16),
    )
    copy_in_order(ours.shortcut, reference)
    assert_same(ours.shortcut, reference, (2, 8, size, size))
    # the pooled shortcut and the strided branch agree on odd sizes: ceil(9 / 2) = 5
    assert ours(torch.randn(2, 8, size, size)).shape == (2, 16, -(-size // 2), -(-size // 2))


def test_resnet_d_without_stride_has_no_pool() -> None:
    block = ResidualBlock(8, 16, shortcut="avg")
    assert [n for n, _ in block.shortcut.named_children()] == ["conv", "norm"]


@pytest.mark.parametrize(
    ("c_in", "c_out", "stride", "needed"),
    [
        (8, 8, 1, False),
        (8, 16, 1, True),
        (8, 8, 2, True),
        (8, 8, (1, 2), True),
        (8, 8, (1, 1), False),
        (16, 8, 1, True),
    ],
)
@pytest.mark.parametrize("bottleneck", [False, True])
@pytest.mark.parametrize("preact", [False, True])
def test_shortcut_projection_exactly_when_needed(
    c_in: int, c_out: int, stride, needed: bool, bottleneck: bool, preact: bool
) -> None:
    block = ResidualBlock(c_in, c_out, stride=stride, bottleneck=bottleneck, preact=preact)
    assert (block.shortcut is not None) is needed
    assert ("shortcut" in dict(block.named_children())) is needed
    if needed:
        assert block.shortcut.conv.kernel_size == (1, 1)
        assert ("norm" in dict(block.shortcut.named_children())) is not preact
    x = torch.randn(2, c_in, 6, 6)
    s = block.stride
    assert block(x).shape == (2, c_out, -(-6 // s[0]), -(-6 // s[1]))
    assert block.output_size((6, 6)) == tuple(block(x).shape[2:])


def test_squeeze_excite_sits_at_the_end_of_the_branch() -> None:
    ours = randomise(ResidualBlock(16, 16, se_reduction=4))
    assert isinstance(ours.se, SqueezeExcite) and ours.se.squeeze_channels == 4
    tv_se = SqueezeExcitation(16, 4)
    with torch.no_grad():
        tv_se.fc1.weight.copy_(ours.se.fc1.weight[..., None, None])
        tv_se.fc1.bias.copy_(ours.se.fc1.bias)
        tv_se.fc2.weight.copy_(ours.se.fc2.weight[..., None, None])
        tv_se.fc2.bias.copy_(ours.se.fc2.bias)
    ours.eval()
    x = torch.randn(2, 16, 6, 6)
    expected = torch.relu(tv_se(ours.conv2(ours.conv1(x))) + x)
    torch.testing.assert_close(ours(x), expected)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_train() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(4, 4, drop_path=0.5).eval()
    assert isinstance(block.drop_path, DropPath)
    plain = ResidualBlock(4, 4)
    plain.load_state_dict(block.state_dict())
    plain.eval()
    x = torch.randn(64, 4, 5, 5)
    torch.testing.assert_close(block(x), plain(x), rtol=0, atol=0)

    block.train()
    for module in block.modules():  # BatchNorm in eval, so only drop_path is random
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    branch = block.conv2(block.conv1(x))
    dropped, kept = torch.relu(x), torch.relu(branch / 0.5 + x)
    out = block(x)
    is_dropped = [torch.equal(o, d) for o, d in zip(out, dropped, strict=True)]
    is_kept = [torch.allclose(o, k) for o, k in zip(out, kept, strict=True)]
    assert all(d != k for d, k in zip(is_dropped, is_kept, strict=True))  # one or the other
    assert 10 < sum(is_dropped) < 54  # p = 0.5 of 64 samples


def test_no_optional_children_by_default() -> None:
    block = ResidualBlock(8, 8)
    assert [n for n, _ in block.named_children()] == ["conv1", "conv2", "act"]
    assert block.se is None and block.drop_path is None and block.shortcut is None


def test_layer_specs_are_convblocks() -> None:
    block = ResidualBlock(8, 8, norm="group", act=nn.GELU, kernel_size=5)
    assert all(isinstance(b, ConvBlock) for b in block.branch_blocks())
    assert isinstance(block.conv1.norm, nn.GroupNorm) and isinstance(block.act, nn.GELU)
    assert block.conv1.conv.kernel_size == (5, 5)
    assert block(torch.randn(2, 8, 7, 7)).shape == (2, 8, 7, 7)


def test_zero_last_starts_as_the_shortcut() -> None:
    block = ResidualBlock(8, 16, stride=2, init="zero_last").eval()
    assert block.conv2.norm.weight.count_nonzero() == 0
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(block(x), torch.relu(block.shortcut(x)), rtol=0, atol=0)


def test_zero_last_without_norm_zeroes_the_last_conv() -> None:
    block = ResidualBlock(8, 8, bottleneck=True, expansion=2, norm=None, init="zero_last")
    assert block.conv3.conv.weight.count_nonzero() == 0 and block.conv3.conv.bias is not None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"out_channels": 30, "bottleneck": True}, ValueError, r"expansion.*divisor of\s+out_c"),
        ({"expansion": 2}, ValueError, r"`expansion`.*bottleneck=False"),
        ({"bottleneck": True, "expansion": 0}, ValueError, "strictly positive"),
        ({"bottleneck": 1}, TypeError, r"`bottleneck`.*True or False"),
        ({"preact": "yes"}, TypeError, r"`preact`"),
        ({"shortcut": "pool"}, ValueError, r"`shortcut`.*'conv'.*'avg'.*shortcut='pool'"),
        ({"se_reduction": 0}, ValueError, r"`se_reduction`"),
        ({"drop_path": 1.0}, ValueError, r"`drop_path`.*\[0, 1\)"),
        ({"init": "xavier"}, ValueError, r"`init`.*'torch', 'kaiming', 'zero_last'"),
        ({"norm": "batchnorm"}, ValueError, r"`norm`.*unknown name 'batchnorm'"),
        ({"act": 3}, TypeError, r"`act`"),
        ({"stride": 0}, ValueError, r"`stride`"),
        ({"kernel_size": (3, 3, 3)}, ValueError, r"`kernel_size`"),
        ({"in_channels": 0}, ValueError, r"`in_channels`"),
    ],
)
def test_bad_arguments_raise_before_any_work(kwargs: dict, error: type, match: str) -> None:
    args = {"in_channels": 16, "out_channels": 32, **kwargs}
    rng = torch.get_rng_state()
    with pytest.raises(error, match=match):
        ResidualBlock(**args)
    assert torch.equal(torch.get_rng_state(), rng)  # no layer was built


def test_forward_rejects_the_wrong_input_naming_its_shape() -> None:
    with pytest.raises(ValueError, match=r"\(N, 8, H, W\).*\(2, 4, 5, 5\)"):
        ResidualBlock(8, 8)(torch.zeros(2, 4, 5, 5))


CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
AVG = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


class HandBuiltBasic(nn.Module):
    """A post-activation basic block in ``dims`` dimensions, ResNet-D shortcut, SE."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        conv, bn = CONV[dims], BN[dims]
        self.conv1, self.bn1 = conv(c_in, c_out, 3, stride, 1, bias=False), bn(c_out)
        self.conv2, self.bn2 = conv(c_out, c_out, 3, 1, 1, bias=False), bn(c_out)
        self.fc1, self.fc2 = nn.Linear(c_out, c_out // 4), nn.Linear(c_out // 4, c_out)
        self.pool = AVG[dims](stride, stride, ceil_mode=True, count_include_pad=False)
        self.proj, self.bn3 = conv(c_in, c_out, 1, bias=False), bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        spatial = tuple(range(2, x.dim()))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(out.mean(spatial)))))
        out = out * gate.view(*gate.shape, *[1] * len(spatial))
        return torch.relu(out + self.bn3(self.proj(self.pool(x))))


@pytest.mark.parametrize(("dims", "size"), [(1, (11,)), (2, (7, 6)), (3, (5, 4, 5))])
def test_every_dims_matches_hand_built(dims: int, size: tuple[int, ...]) -> None:
    ours = randomise(ResidualBlock(4, 8, dims=dims, stride=2, shortcut="avg", se_reduction=4))
    assert ours.dims == dims and isinstance(ours.conv1.conv, CONV[dims])
    assert isinstance(ours.shortcut.pool, AVG[dims])
    reference = HandBuiltBasic(dims, 4, 8, 2)
    # same tensors, registered in another order: conv1, bn1, conv2, bn2, se, shortcut
    ref = dict(reference.named_children())
    order = ["conv1", "bn1", "conv2", "bn2", "fc1", "fc2", "proj", "bn3"]
    flat = [t for name in order for t in ref[name].state_dict().values()]
    with torch.no_grad():
        for mine, theirs in zip(ours.state_dict().values(), flat, strict=True):
            theirs.copy_(mine)
    assert_same(ours, reference, (2, 4, *size))
    assert ours.output_size(size) == tuple(-(-s // 2) for s in size)


@pytest.mark.parametrize("dims", [0, 4])
def test_dims_outside_1_to_3_is_refused(dims: int) -> None:
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=rf"`dims`.*1 .*2 .*3.*dims={dims}"):
        ResidualBlock(4, 8, dims=dims)
    assert torch.equal(torch.get_rng_state(), rng)


def test_stride_per_dimension_must_match_dims() -> None:
    with pytest.raises(ValueError, match=r"`stride`.*tuple of 3"):
        ResidualBlock(4, 8, dims=3, stride=(2, 2))


def test_1d_block_rejects_images_naming_the_shape() -> None:
    with pytest.raises(ValueError, match=r"\(N, 4, L\).*\(2, 4, 5, 5\)"):
        ResidualBlock(4, 4, dims=1)(torch.zeros(2, 4, 5, 5))


@pytest.mark.parametrize("preact", [False, True])
def test_exports_with_torch_export(preact: bool) -> None:
    block = ResidualBlock(4, 8, stride=2, preact=preact, se_reduction=2, drop_path=0.1).eval()
    x = torch.randn(2, 4, 7, 7)
    exported = torch.export.export(block, (x,))
    torch.testing.assert_close(exported.module()(x), block(x), rtol=0, atol=0)
