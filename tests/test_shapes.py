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
