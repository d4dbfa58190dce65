"""Receptive fields and their regions against the gradient footprint, over block families.

The footprint of an output unit is the set of input pixels that get a nonzero gradient
when only that unit's gradient is 1. With positive weights, positive biases, a positive
input, BatchNorm in eval mode and average pooling, nothing cancels and no activation is
cut off, so the footprint is exactly the set of pixels the unit depends on.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convkit import ConvBlock, ResidualBlock, SeparableConv, build_cnn, viz
from convkit.shapes import output_size, receptive_field
from convkit.shapes.receptive import region
from convkit.shapes.walk import walk


def _positive(model: nn.Module) -> nn.Module:
    model = model.double().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 + torch.rand(p.shape, generator=generator, dtype=p.dtype))
    return model


def footprint(model: nn.Module, shape: tuple[int, ...], unit: tuple[int, ...]) -> tuple[int, ...]:
    """``(*first, *length)`` of the input pixels with a nonzero gradient of one unit."""
    x = torch.ones(1, *shape, dtype=torch.float64, requires_grad=True)
    out = model(x)
    out[(0, 0, *unit)].backward()
    assert x.grad is not None
    hit = x.grad[0].abs().sum(0)  # over the channels
    firsts, lengths = [], []
    for d in range(hit.dim()):
        others = tuple(i for i in range(hit.dim()) if i != d)
        along = (hit.sum(others) if others else hit).nonzero()[:, 0]
        if len(along) == 0:
            firsts.append(0)
            lengths.append(0)
        else:
            firsts.append(int(along.min()))
            lengths.append(int(along.max() - along.min() + 1))
    return (*firsts, *lengths)


def clip(found: tuple[int, ...], size: tuple[int, ...]) -> tuple[int, ...]:
    """The part of a region inside the input."""
    dims = len(size)
    firsts, lengths = [], []
    for first, length, n in zip(found[:dims], found[dims:], size, strict=True):
        lo, hi = max(first, 0), min(first + length, n) - 1
        firsts.append(lo if hi >= lo else 0)
        lengths.append(max(hi - lo + 1, 0))
    return (*firsts, *lengths)


def units(out: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The first, the middle and the last unit of an output, and one off the diagonal."""
    picks = {tuple(0 for _ in out), tuple(n // 2 for n in out), tuple(n - 1 for n in out)}
    picks.add(tuple(n - 1 if d == 0 else 0 for d, n in enumerate(out)))
    return sorted(picks)


def check_regions(model: nn.Module, shape: tuple[int, ...]) -> None:
    model = _positive(model)
    size = shape[1:]
    steps = walk(model)
    out = output_size(model, size)
    assert tuple(model(torch.zeros(1, *shape, dtype=torch.float64)).shape[2:]) == out
    for unit in units(out):
        found = region(steps, unit, size)
        assert clip(found, size) == footprint(model, shape, unit), (unit, found)


SLOW = pytest.mark.slow

ORDERS = [
    "conv-norm-act-pool",
    "pool-conv-norm-act",
    "conv-pool-act-norm",
    "norm-act-conv-pool",
    "act-pool-conv-norm",
]


def _grid(names: list[tuple], default: list[tuple]) -> list:
    """Every combination; those not in ``default`` are slow (run with -m slow)."""
    return [p if p in default else pytest.param(*p, marks=SLOW) for p in names]


PLAIN = _grid(
    [
        (order, stride, padding, kernel)
        for order in ORDERS
        for stride in (1, 2)
        for padding in ("same", "valid", 1)
        for kernel in (3, 4)
    ],
    default=[(order, 1, "same", 3) for order in ORDERS]
    + [(order, 2, "valid", 3) for order in ORDERS]
    + [("pool-conv-norm-act", 2, 1, 4)],
)


@pytest.mark.parametrize(("order", "stride", "padding", "kernel_size"), PLAIN)
def test_plain_regions_are_the_gradient_footprint(order, stride, padding, kernel_size) -> None:
    options = {"kernel_size": kernel_size, "stride": stride, "padding": padding, "order": order}
    for size in (17, 33, 67):  # odd sizes, the smallest these two blocks take
        try:
            model = build_cnn((2, size, size), 2, channels=(3, 3), pool="avg", **options)
        except ValueError:
            continue
        check_regions(model.features, (2, size, size))
        return
    raise AssertionError(f"no size fits {options}")


RESIDUAL = _grid(
    [
        (block, shortcut, preact, size)
        for block in ("residual", "bottleneck")
        for shortcut in ("conv", "avg")
        for preact in (False, True)
        for size in (16, 17)
    ],
    default=[
        ("residual", "conv", False, 17),
        ("residual", "avg", True, 16),
        ("bottleneck", "avg", False, 17),
        ("bottleneck", "conv", True, 17),
    ],
)


@pytest.mark.parametrize(("block", "shortcut", "preact", "size"), RESIDUAL)
def test_residual_regions_follow_the_branch(block, shortcut, preact, size) -> None:
    options = {"block": block, "shortcut": shortcut, "preact": preact, "stem": (4, 3, 1)}
    shape = (2, size, size)
    model = build_cnn(shape, 2, channels=(4, 8), stride=(2, 2), pool=None, **options).features
    check_regions(model, shape)


SEPARABLE = _grid(
    [(s, p, d) for s in (1, 2) for p in ("same", "valid") for d in (1, 2)],
    default=[(2, "same", 1), (1, "valid", 2)],
)


@pytest.mark.parametrize(("stride", "padding", "dilation"), SEPARABLE)
def test_separable_regions_are_the_gradient_footprint(stride, padding, dilation) -> None:
    model = nn.Sequential(
        SeparableConv(2, 4, stride=stride, padding=padding, dilation=dilation),
        SeparableConv(4, 4, 5, stride=stride, padding=padding),
    )
    check_regions(model, (2, 19, 19))


def test_max_pooling_has_the_region_of_average_pooling() -> None:
    # max pooling sends the gradient to one pixel per window, so compare geometries
    for order in ORDERS:
        regions = []
        for pool in ("max", "avg"):
            model = build_cnn((1, 17, 17), 2, channels=(2, 2), pool=pool, order=order)
            regions.append(region(walk(model.features), (1, 3), (17, 17)))
        assert regions[0] == regions[1]


def test_issue_examples_pool_first_and_residual() -> None:
    # pool first on 17 pixels: the last pooled row drops pixel 16, and the next conv's
    # padding stands where it would be, so no unit depends on pixel 16
    model = build_cnn((1, 17, 17), 2, channels=(4, 4), order="pool-conv-norm-act", pool="avg")
    assert viz.receptive_field_region(model, (1, 17, 17), (3, 3)) == (6, 6, 10, 10)
    assert footprint(_positive(model.features), (1, 17, 17), (3, 3)) == (6, 6, 10, 10)
    # residual: the strided shortcut runs beside the branch and doesn't move the field
    res = build_cnn((1, 28, 28), 2, block="residual", channels=(4, 8), stride=2, pool=None)
    top, left, h, w = viz.receptive_field_region(res, (1, 28, 28), (3, 3))
    assert (h, w) == receptive_field(res.features) == (19, 19)
    assert (top, left, h, w) == footprint(_positive(res.features), (1, 28, 28), (3, 3))


def test_receptive_field_of_residual_stacks_ignores_the_shortcut() -> None:
    branch = nn.Sequential(
        ConvBlock(1, 4, stride=2, norm=None), ConvBlock(4, 4, norm=None, act=None)
    )
    assert receptive_field(ResidualBlock(1, 4, stride=2)) == receptive_field(branch) == (7, 7)


# ------------------------------------- layers whose field varies with the position


def _stack(kind: str, dims: int) -> list[nn.Module]:
    """A conv, the layer under test, a conv; 1-D or 2-D; no zero padding anywhere."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    pads = {
        1: (nn.ReflectionPad1d, nn.ReplicationPad1d, nn.CircularPad1d, nn.ConstantPad1d),
        2: (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d, nn.ConstantPad2d),
    }[dims]
    transpose = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[dims]
    middle = {
        "transpose": transpose(2, 2, 3, stride=2, padding=1, output_padding=1),
        "transpose-dilated": transpose(2, 2, 2, stride=3, dilation=4),
        "nearest": nn.Upsample(scale_factor=3, mode="nearest"),
        "nearest-exact": nn.Upsample(scale_factor=1.5, mode="nearest-exact"),
        "linear": nn.Upsample(scale_factor=2, mode="linear" if dims == 1 else "bilinear"),
        "linear-corners": nn.Upsample(
            size=(13,) * dims, mode="linear" if dims == 1 else "bilinear", align_corners=True
        ),
        "adaptive": {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims](5),
        "reflect": pads[0](3),
        "replicate": pads[1](2),
        "circular": pads[2](2),
        "crop": pads[3]((-1, 2) * dims, 0.5),
        "conv-reflect": conv(2, 2, 3, padding=2, padding_mode="reflect"),
        "lp": {1: nn.LPPool1d, 2: nn.LPPool2d}[dims](2, 3, stride=2, ceil_mode=True),
    }[kind]
    return [conv(1, 2, 3), middle, conv(2, 1, 2)]


VARYING = [
    "transpose",
    "transpose-dilated",
    "nearest",
    "nearest-exact",
    "linear",
    "linear-corners",
    "adaptive",
    "reflect",
    "replicate",
    "circular",
    "crop",
    "conv-reflect",
    "lp",
]


@pytest.mark.parametrize("kind", VARYING)
def test_every_unit_of_varying_layers_has_its_footprint_1d(kind: str) -> None:
    model = _positive(nn.Sequential(*_stack(kind, 1)))
    size = (11,)
    steps = walk(model)
    out = output_size(model, size)
    assert tuple(model(torch.zeros(1, 1, *size, dtype=torch.float64)).shape[2:]) == out
    largest = 0
    for unit in range(out[0]):
        found = region(steps, (unit,), size)
        assert clip(found, size) == footprint(model, (1, *size), (unit,)), unit
        largest = max(largest, found[1])
    # no zero padding: the field is the largest footprint over the units
    assert receptive_field(model, size) == (largest,)


@pytest.mark.parametrize("kind", ["transpose", "linear", "adaptive", "reflect", "lp"])
def test_varying_layers_in_2d(kind: str) -> None:
    check_regions(nn.Sequential(*_stack(kind, 2)), (1, 9, 10))


def test_pixel_shuffle_and_unshuffle_regions() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.PixelUnshuffle(2),
        nn.Conv2d(32, 16, 2),
        nn.PixelShuffle(2),
        nn.Conv2d(4, 2, 3, padding=1),
    )
    check_regions(model, (1, 16, 12))
    assert receptive_field([nn.Conv2d(1, 4, 3), nn.PixelUnshuffle(2)]) == (4, 4)


def test_receptive_field_after_a_varying_layer_needs_the_input_size() -> None:
    layers = [nn.Conv2d(1, 1, 3), nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1)]
    with pytest.raises(ValueError, match=r"`input_size`.*ConvTranspose2d \(1\).*position"):
        receptive_field(layers)
    assert receptive_field(layers, (7, 7)) == (4, 4)  # 2 inputs of the conv per output
    model = build_cnn((1, 12, 12), 2, channels=(4,), head_pool="avg")
    assert receptive_field(model) == receptive_field(model, (12, 12)) == (14, 14)
