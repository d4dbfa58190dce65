from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convkit.shapes import conv_macs, conv_output_size, conv_params, pool_output_size, same_padding

FAST = settings(max_examples=60, deadline=None)


@FAST
@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    padding=st.integers(0, 4),
    dilation=st.integers(1, 3),
)
def test_conv_output_size_matches_conv2d(size, kernel, stride, padding, dilation) -> None:
    expected = conv_output_size(size, kernel, stride=stride, padding=padding, dilation=dilation)
    conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation)
    if expected < 1:
        with pytest.raises(RuntimeError):
            conv(torch.zeros(1, 1, size, size))
    else:
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == expected


@FAST
@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 4),
    data=st.data(),
    dilation=st.integers(1, 2),
    ceil_mode=st.booleans(),
)
def test_pool_output_size_matches_maxpool(size, kernel, stride, data, dilation, ceil_mode) -> None:
    padding = data.draw(st.integers(0, kernel // 2))  # torch's own limit
    expected = pool_output_size(
        size, kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode
    )
    pool = nn.MaxPool2d(
        kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode
    )
    if expected < 1:
        with pytest.raises(RuntimeError):
            pool(torch.zeros(1, 1, size, size))
    else:
        assert pool(torch.zeros(1, 1, size, size)).shape[-1] == expected


@FAST
@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 8),
    stride=st.integers(1, 4),
    dilation=st.integers(1, 3),
)
def test_same_padding_gives_ceil(size, kernel, stride, dilation) -> None:
    before, after = same_padding(kernel, dilation=dilation)
    assert after - before in (0, 1)
    out = conv_output_size(size, kernel, stride=stride, padding=(before, after), dilation=dilation)
    assert out == math.ceil(size / stride)
    x = torch.nn.functional.pad(torch.zeros(1, 1, size, size), (before, after, before, after))
    real = nn.Conv2d(1, 1, kernel, stride=stride, dilation=dilation)(x)
    assert real.shape[-1] == out


@FAST
@given(
    groups=st.integers(1, 4),
    cin_mult=st.integers(1, 4),
    cout_mult=st.integers(1, 4),
    kh=st.integers(1, 5),
    kw=st.integers(1, 5),
    bias=st.booleans(),
)
def test_conv_params_matches_conv2d(groups, cin_mult, cout_mult, kh, kw, bias) -> None:
    cin, cout = groups * cin_mult, groups * cout_mult
    conv = nn.Conv2d(cin, cout, (kh, kw), groups=groups, bias=bias)
    assert conv_params(cin, cout, (kh, kw), groups=groups, bias=bias) == sum(
        p.numel() for p in conv.parameters()
    )


def test_conv_macs_counts_multiplies_of_the_notebook_conv() -> None:
    # conv1 of the notebook: 24*24 outputs per channel, 32 channels, 25 taps each
    assert conv_macs(1, 32, 5, 24) == 24 * 24 * 32 * 25
    assert conv_macs(32, 32, 3, (8, 8), groups=32) == 8 * 8 * 32 * 9


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: conv_output_size(0, 3), r"`size`"),
        (lambda: conv_output_size(5, 3, stride=0), r"`stride`"),
        (lambda: conv_output_size(5, 3, padding=-1), r"`padding`"),
        (lambda: same_padding(0), r"`kernel_size`"),
        (lambda: conv_params(6, 4, 3, groups=4), r"`groups`.*divisor"),
    ],
)
def test_bad_arguments(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------- receptive field and summary

from convkit import build_cnn  # noqa: E402
from convkit.shapes import receptive_field, summary  # noqa: E402


def _empirical_rf(layers: list[nn.Module], size: int = 96) -> tuple[int, int]:
    """Measure the receptive field: which inputs move the centre output pixel."""
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)  # positive weights: no accidental cancellation
    x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    out = net(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    cols = x.grad[0, 0].abs().sum(0).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["conv", "avg"]), st.integers(1, 4), st.integers(1, 2),
                          st.integers(1, 2)), min_size=1, max_size=4))  # fmt: skip
def test_receptive_field_matches_the_gradient_footprint(spec) -> None:
    layers: list[nn.Module] = []
    for kind, kernel, stride, dilation in spec:
        if kind == "conv":
            layers.append(nn.Conv2d(1, 1, kernel, stride=stride, dilation=dilation, bias=False))
        else:
            layers.append(nn.AvgPool2d(kernel, stride=stride))
    assert receptive_field(layers) == _empirical_rf(layers)


def test_receptive_field_of_the_notebook_cnn() -> None:
    model = build_cnn((1, 28, 28), 10, channels=(32, 64), kernel_size=5, padding="valid")
    # conv5 (5) -> pool2 (+1, jump 2) -> conv5 (+4*2) -> pool2 (+1*2, jump 4)
    assert receptive_field(model) == (16, 16)
    assert receptive_field(model.features.block1) == (6, 6)


def test_summary_rows_and_totals_and_no_side_effects() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(32, 64), kernel_size=5, padding="valid",
                      order="conv-pool-act-norm-dropout", dropout=0.25, hidden=(200,),
                      head_norm="batch", head_dropout=0.25)  # fmt: skip
    model.head.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = summary(model, (1, 28, 28))
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    by_name = {row["name"]: row for row in table.rows}
    conv1 = by_name["features.block1.conv"]
    assert conv1["output_shape"] == (32, 24, 24) and conv1["params"] == 832
    assert conv1["macs"] == conv_macs(1, 32, 5, 24)
    assert by_name["features.block2.pool"]["output_shape"] == (64, 4, 4)
    assert by_name["features.block2.pool"]["receptive_field"] == (16, 16)
    assert by_name["head.linear1"]["macs"] == 1024 * 200
    assert table.total_params == 259_698 == sum(row["params"] for row in table.rows)
    text = str(table)
    assert "features.block1.conv" in text and "Total params: 259,698" in text


def test_summary_bad_input() -> None:
    with pytest.raises(ValueError, match=r"`input_shape`"):
        summary(nn.Linear(2, 2), (0, 2))
    with pytest.raises(TypeError, match=r"`layers`"):
        receptive_field(3)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 3),
    cin_mult=st.integers(1, 3),
    cout_mult=st.integers(1, 3),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 2),
    size=st.integers(4, 12),
)
def test_conv_macs_matches_torch_flop_counter(
    groups, cin_mult, cout_mult, kernel, stride, size
) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    cin, cout = groups * cin_mult, groups * cout_mult
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, groups=groups, bias=False)
    with FlopCounterMode(display=False) as counter:
        out = conv(torch.zeros(1, cin, size, size))
    macs = conv_macs(cin, cout, kernel, (out.shape[2], out.shape[3]), groups=groups)
    assert 2 * macs == counter.get_total_flops()  # one multiply-accumulate is two FLOPs
