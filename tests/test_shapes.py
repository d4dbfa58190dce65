from __future__ import annotations

import contextlib
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
        (lambda: conv_params(6, 4, (3, 3, 0)), r"`kernel_size`.*tuple of 3"),
        (lambda: conv_macs(1, 4, (3, 3), (5, 5, 5)), r"`output_size`.*tuple of 2"),
        (lambda: conv_output_size(5, 3, padding=(1, 1, 1)), r"`padding`.*\(before, after\)"),
    ],
)
def test_bad_arguments(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------- receptive field and summary

from convkit import build_cnn  # noqa: E402
from convkit.shapes import receptive_field, summary  # noqa: E402
from helpers import NOTEBOOK  # noqa: E402


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
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["conv", "avg"]),
            st.integers(1, 4),
            st.integers(1, 2),
            st.integers(1, 2),
        ),
        min_size=1,
        max_size=4,
    )
)
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
    model = build_cnn((1, 28, 28), 10, **NOTEBOOK)
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


# ------------------------------------------------------------------ per dimension

from convkit.shapes import layer_output_size, min_input_size, output_size  # noqa: E402

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {
    ("max", 1): nn.MaxPool1d,
    ("max", 2): nn.MaxPool2d,
    ("max", 3): nn.MaxPool3d,
    ("avg", 1): nn.AvgPool1d,
    ("avg", 2): nn.AvgPool2d,
    ("avg", 3): nn.AvgPool3d,
}


@pytest.mark.parametrize(("kernel", "padding"), [(2, 2), (3, 2), (5, 3), (1, 1)])
def test_pool_output_size_refuses_what_torch_refuses(kernel: int, padding: int) -> None:
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        nn.MaxPool2d(kernel, padding=padding)(torch.zeros(1, 1, 9, 9))
    with pytest.raises(
        ValueError,
        match=rf"`padding`.*kernel_size // 2 = {kernel // 2}.*"
        rf"padding={padding} with kernel_size={kernel}",
    ):
        pool_output_size(5, kernel, padding=padding)


def _layer(dims: int, kind: str, kernel, stride, padding, dilation, ceil_mode) -> nn.Module:
    if kind == "conv":
        return _CONV[dims](1, 1, kernel, stride=stride, padding=padding, dilation=dilation)
    if kind == "max":
        return _POOL["max", dims](kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    return _POOL["avg", dims](kernel, stride, padding, ceil_mode=ceil_mode)


@settings(max_examples=80, deadline=None)
@given(
    dims=st.sampled_from([1, 2, 3]), kind=st.sampled_from(["conv", "max", "avg"]), data=st.data()
)
def test_layer_output_size_matches_torch_per_dim(dims: int, kind: str, data) -> None:
    tup = lambda lo, hi: st.tuples(*[st.integers(lo, hi)] * dims)  # noqa: E731
    kernel, stride, dilation = data.draw(tup(1, 4)), data.draw(tup(1, 3)), data.draw(tup(1, 2))
    padding = tuple(data.draw(st.integers(0, k // 2)) for k in kernel)
    size = data.draw(tup(1, 9))
    layer = _layer(dims, kind, kernel, stride, padding, dilation, data.draw(st.booleans()))
    expected = layer_output_size(layer, size)
    if min(expected) < 1:
        with pytest.raises(RuntimeError):
            layer(torch.zeros(1, 1, *size))
    else:
        assert tuple(layer(torch.zeros(1, 1, *size)).shape[2:]) == expected


def test_layer_output_size_of_torch_same_adaptive_and_other_layers() -> None:
    assert layer_output_size(nn.Conv1d(1, 1, 4, padding="same", dilation=2), (9,)) == (9,)
    assert layer_output_size(nn.Conv2d(1, 1, 3, padding="valid"), (9, 5)) == (7, 3)
    assert layer_output_size(nn.AdaptiveAvgPool2d((None, 1)), (9, 5)) == (9, 1)
    assert layer_output_size(nn.ReLU(), (4, 4, 4)) == (4, 4, 4)
    with pytest.raises(ValueError, match=r"`size`.*Conv3d is 3-D.*3 entries"):
        layer_output_size(nn.Conv3d(1, 1, 3), (9, 9))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["conv", "max", "avg"]),
            st.integers(1, 5),
            st.integers(1, 3),
            st.integers(1, 2),
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([1, 2]),
)
def test_min_input_size_is_the_smallest_input_that_runs(spec, dims: int) -> None:
    layers = [
        _layer(dims, kind, k, s, 0, d if kind != "avg" else 1, False) for kind, k, s, d in spec
    ]
    net = nn.Sequential(*layers)
    smallest = min_input_size(net, dims)
    assert all(n >= 1 for n in net(torch.zeros(1, 1, *smallest)).shape[2:])
    for d in range(dims):
        if smallest[d] > 1:
            size = list(smallest)
            size[d] -= 1
            assert min(output_size(net, size)) < 1
            with pytest.raises(RuntimeError):
                net(torch.zeros(1, 1, *size))


def _gradient_footprint(layers: list[nn.Module], dims: int, size: int = 40) -> tuple[int, ...]:
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    x = torch.zeros(1, 1, *(size,) * dims, dtype=torch.float64, requires_grad=True)
    out = net(x)
    out[(0, 0, *(n // 2 for n in out.shape[2:]))].backward()
    grad = x.grad[0, 0].abs()
    extent = []
    for d in range(dims):
        others = tuple(i for i in range(dims) if i != d)
        hit = (grad.sum(others) if others else grad).nonzero()
        extent.append(int(hit.max() - hit.min() + 1))
    return tuple(extent)


@pytest.mark.parametrize("dims", [1, 3])
def test_receptive_field_per_dim_matches_the_gradient_footprint(dims: int) -> None:
    layers = [
        _CONV[dims](1, 1, 3, dilation=2, bias=False),
        _POOL["avg", dims](2),
        _CONV[dims](1, 1, 2, stride=2, bias=False),
        _POOL["avg", dims](3, 1),
    ]
    field = receptive_field(layers)
    assert len(field) == dims
    assert field == _gradient_footprint(layers, dims)
    with pytest.raises(ValueError, match=r"`layers`.*mix 1-D and 2-D"):
        receptive_field([nn.Conv1d(1, 1, 3), nn.Conv2d(1, 1, 3)])


@pytest.mark.parametrize("kernel", [3, (3, 5), (2, 3, 4)])
def test_conv_params_and_macs_per_dim_match_torch(kernel) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    dims = 2 if isinstance(kernel, int) else len(kernel)
    conv = _CONV[dims](4, 6, kernel, groups=2)
    assert conv_params(4, 6, kernel, groups=2) == sum(p.numel() for p in conv.parameters())
    with FlopCounterMode(display=False) as counter:
        out = conv(torch.zeros(1, 4, *(7,) * dims))
    macs = conv_macs(4, 6, kernel, tuple(out.shape[2:]), groups=2)
    assert 2 * macs == counter.get_total_flops()
    assert conv_params(4, 6, 3, dims=1) == 6 * 4 * 3 + 6


def test_summary_uses_the_models_own_input_shape() -> None:
    model = build_cnn((28, 28), 10, channels=(8,), hidden=(), head_pool="max")  # 1-D
    table = summary(model)
    assert table.input_shape == (28, 28)
    conv = table.rows[0]
    assert conv["output_shape"] == (8, 28) and conv["receptive_field"] == (3,)
    assert conv["macs"] == conv_macs(28, 8, 3, (28,))
    assert table.rows[-1]["output_shape"] == (10,)
    assert summary(model, (28, 40)).rows[0]["output_shape"] == (8, 40)  # explicit shape wins
    with pytest.raises(TypeError, match=r"`input_shape`.*no `input_shape` attribute.*Linear"):
        summary(nn.Linear(2, 2))


def test_top_level_summary_is_shapes_summary() -> None:
    import convkit

    assert convkit.summary is summary
    model = build_cnn((1, 12, 12), 3, channels=(4,), hidden=(), head_pool="avg")
    assert isinstance(model, convkit.DescribedModel)
    assert str(convkit.summary(model)) == str(summary(model, (1, 12, 12)))


def test_min_input_size_of_a_size_function() -> None:
    # e.g. blocks measured by their own output_size: "same" conv with stride 3, then pool 4
    def measure(size: tuple[int, ...]) -> tuple[int, ...]:
        return tuple((-(-n // 3)) // 4 for n in size)

    assert min_input_size(measure, 2) == (10, 10)  # ceil(10 / 3) = 4 -> 1; ceil(9 / 3) = 3 -> 0
    with pytest.raises(TypeError, match=r"`layers`"):
        min_input_size(3, 2)  # type: ignore[arg-type]


# ------------------------------------------- every layer computed, or refused by name

from convkit.shapes import conv_transpose_output_size, tf_same_padding  # noqa: E402

_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _runs_as_predicted(layer: nn.Module, size: tuple[int, ...], channels: int = 1) -> None:
    """``layer_output_size`` is the real output's size, or torch refuses the input too."""
    try:
        expected = layer_output_size(layer, size)
    except ValueError:
        with pytest.raises(RuntimeError):
            layer(torch.zeros(1, channels, *size))
        return
    if min(expected) < 1:  # torch refuses it, or returns an empty map (transposed convs)
        try:
            out = layer(torch.zeros(1, channels, *size))
        except RuntimeError:
            return
        assert out.numel() == 0 and tuple(out.shape[2:]) == tuple(max(n, 0) for n in expected)
    else:
        assert tuple(layer(torch.zeros(1, channels, *size)).shape[2:]) == expected


@settings(max_examples=60, deadline=None)
@given(dims=st.sampled_from([1, 2, 3]), data=st.data())
def test_conv_transpose_output_size_matches_torch(dims: int, data) -> None:
    kernel, stride = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    dilation, padding = data.draw(st.integers(1, 3)), data.draw(st.integers(0, 3))
    output_padding = data.draw(st.integers(0, max(stride, dilation) - 1))
    size = tuple(data.draw(st.integers(1, 7)) for _ in range(dims))
    layer = _TRANSPOSE[dims](1, 1, kernel, stride, padding, output_padding, dilation=dilation)
    _runs_as_predicted(layer, size)
    out = conv_transpose_output_size(
        size[0],
        kernel,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
    )
    assert out == layer_output_size(layer, size)[0]


def test_the_issue_examples_are_no_longer_identities() -> None:
    up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
    assert layer_output_size(up, (7, 7)) == (14, 14)
    assert layer_output_size(nn.LPPool2d(2, 3, stride=2), (9, 9)) == (4, 4)
    assert receptive_field([nn.LPPool2d(2, 3, stride=2), nn.Conv2d(1, 1, 3)]) == (7, 7)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), up)
    table = summary(model, (1, 9, 9))
    assert table.rows[1]["macs"] == 7 * 7 * 8 * 8 * 16 > 0
    assert table.rows[1]["receptive_field"] == (4, 4)


UPSAMPLES = [
    {"scale_factor": 2},
    {"scale_factor": 1.5, "mode": "nearest-exact"},
    {"scale_factor": 0.5},
    {"scale_factor": 2.5, "mode": "linear", "align_corners": True},
    {"size": 13},
    {"scale_factor": 3, "recompute_scale_factor": True},
]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("options", UPSAMPLES)
@pytest.mark.parametrize("length", [1, 5, 7])
def test_upsample_output_size_matches_torch(dims: int, options: dict, length: int) -> None:
    options = dict(options)
    if options.get("mode") == "linear":
        options["mode"] = {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]
    _runs_as_predicted(nn.Upsample(**options), (length,) * dims)


@pytest.mark.parametrize(
    "layer",
    [
        nn.PixelShuffle(2),
        nn.PixelUnshuffle(2),
        nn.PixelUnshuffle(3),
        nn.UpsamplingNearest2d(scale_factor=2),
        nn.UpsamplingBilinear2d(size=(5, 9)),
        nn.Upsample(scale_factor=(2, 3)),
        nn.LPPool2d(3, 2),
        nn.LPPool2d(2, (3, 2), stride=(1, 2), ceil_mode=True),
        nn.AdaptiveMaxPool2d((3, None)),
        nn.ZeroPad2d((1, 2, 0, 3)),
        nn.ConstantPad2d((-1, 2, 3, -2), 0.5),
        nn.ReflectionPad2d((2, 1, 3, 0)),
        nn.ReplicationPad2d(3),
        nn.CircularPad2d((4, 1, 2, 2)),
        nn.Conv2d(4, 4, 3, padding=2, padding_mode="circular"),
        nn.Conv2d(4, 4, (3, 2), stride=2, padding="valid", padding_mode="reflect"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("size", [(1, 1), (2, 5), (3, 4), (6, 6), (9, 7)])
def test_2d_layers_output_size_matches_torch(layer: nn.Module, size: tuple[int, int]) -> None:
    _runs_as_predicted(layer, size, channels=4)


@pytest.mark.parametrize("dims", [1, 3])
def test_1d_and_3d_padding_and_lp_pooling_match_torch(dims: int) -> None:
    tables = {
        1: (nn.ZeroPad1d, nn.ReflectionPad1d, nn.ReplicationPad1d, nn.CircularPad1d),
        3: (nn.ZeroPad3d, nn.ReflectionPad3d, nn.ReplicationPad3d, nn.CircularPad3d),
    }
    pool = {1: nn.LPPool1d, 3: nn.LPPool3d}[dims]
    layers = [cls(2) for cls in tables[dims]] + [pool(2, 2, ceil_mode=True)]
    for layer in layers:
        for length in (1, 2, 3, 5):
            _runs_as_predicted(layer, (length,) * dims)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from(["conv", "transpose", "up", "down", "reflect", "adaptive", "lp", "crop"]),
        min_size=1,
        max_size=4,
    )
)
def test_min_input_size_of_any_layers_is_the_smallest_that_runs(kinds: list[str]) -> None:
    layers = {
        "conv": lambda: nn.Conv2d(4, 4, 3, stride=2),
        "transpose": lambda: nn.ConvTranspose2d(4, 4, 2, stride=2, padding=2),
        "up": lambda: nn.Upsample(scale_factor=1.5),
        "down": lambda: nn.Upsample(scale_factor=0.4),
        "reflect": lambda: nn.ReflectionPad2d(3),
        "adaptive": lambda: nn.AdaptiveAvgPool2d((6, None)),
        "lp": lambda: nn.LPPool2d(2, 3, ceil_mode=True),
        "crop": lambda: nn.ConstantPad2d(-2, 0.0),
    }
    net = nn.Sequential(*(layers[kind]() for kind in kinds))
    if "adaptive" in kinds and output_size(net, (1 << 20, 1 << 20))[0] < 1:
        # a fixed size too small for what follows: no input runs, and none is claimed to
        with pytest.raises(ValueError, match="no input is large enough"):
            min_input_size(net, 2)
        with pytest.raises(RuntimeError):
            net(torch.zeros(1, 4, 64, 64))
        return
    smallest = min_input_size(net, 2)
    assert all(n >= 1 for n in net(torch.zeros(1, 4, *smallest)).shape[2:])
    for d in range(2):
        if smallest[d] > 1:
            size = list(smallest)
            size[d] -= 1
            with contextlib.suppress(RuntimeError):  # torch refuses it, or
                assert net(torch.zeros(1, 4, *size)).numel() == 0  # a crop leaves nothing


def test_min_input_size_of_pixel_unshuffle_is_a_multiple_of_its_factor() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.PixelUnshuffle(2), nn.Conv2d(16, 1, (2, 1)))
    assert min_input_size(net, 2) == (6, 4)
    assert net(torch.zeros(1, 1, 6, 4)).shape[2:] == (1, 1)


def test_min_input_size_refuses_a_fixed_size_that_is_too_small() -> None:
    net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Conv2d(1, 1, 3))
    with pytest.raises(
        ValueError,
        match=r"no input is large enough.*AdaptiveAvgPool2d \(0\).*2 "
        r"positions.*at least 3",
    ):
        min_input_size(net, 2)


def test_summary_macs_of_transposed_convs_and_linears_match_torch_flop_counter() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, groups=1),
        nn.ConvTranspose2d(8, 4, 3, stride=2, groups=4),
        nn.Upsample(scale_factor=2),
        nn.LPPool2d(2, 2),
        nn.Linear(17, 6),
        nn.Flatten(),
        nn.Linear(4 * 17 * 6, 5),
    )
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 17, 17))
    table = summary(model, (3, 17, 17))
    assert 2 * table.total_macs == counter.get_total_flops()
    assert [row["macs"] > 0 for row in table.rows] == [True, True, False, False, True, False, True]


class Blur(nn.Module):
    """A layer of its own: convkit can't know what it does to positions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + x.roll(1, -1)) / 2


class Scale(nn.Module):
    """An element-wise layer of its own that says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def spatial_path(self) -> list[nn.Module]:
        return []


@pytest.mark.parametrize(
    ("layer", "name"),
    [
        (Blur(), "Blur"),
        (nn.Fold((4, 4), 2), "Fold"),
        (nn.Softmax(dim=-1), "Softmax"),
        (nn.Unfold(2), "Unfold"),
    ],
)
def test_unknown_layers_are_refused_by_name(layer: nn.Module, name: str) -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3), layer)
    calls = []
    model[0].register_forward_hook(lambda *args: calls.append(1))
    message = rf"`layers`: convkit.shapes doesn't know how {name} \(1\) changes sizes.*spatial_path"
    with pytest.raises(ValueError, match=message):
        output_size(model, (8, 8))
    with pytest.raises(ValueError, match=message):
        receptive_field(model)
    with pytest.raises(ValueError, match=message):
        min_input_size(model, 2)
    with pytest.raises(ValueError, match=message.replace("`layers`", "`model`")):
        summary(model, (1, 8, 8))
    assert calls == []  # refused before running anything
    with pytest.raises(ValueError, match=rf"`layer`: convkit.shapes doesn't know how {name} chan"):
        layer_output_size(layer, (8, 8))


def test_layers_that_say_they_are_element_wise_are_measured() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3), Scale(), nn.Softmax(dim=1), nn.MaxPool2d(2))
    assert output_size(model, (8, 8)) == (3, 3)
    assert receptive_field(model) == (4, 4)
    assert [row["type"] for row in summary(model, (1, 8, 8)).rows][1:3] == ["Scale", "Softmax"]


def test_tf_same_padding_is_tensorflows_rule() -> None:
    for size in range(1, 30):
        for kernel, stride, dilation in [(3, 2, 1), (4, 2, 1), (3, 1, 2), (5, 3, 1), (1, 2, 1)]:
            before, after = tf_same_padding(size, kernel, stride=stride, dilation=dilation)
            assert 0 <= after - before <= 1
            options = {"stride": stride, "dilation": dilation}
            out = conv_output_size(size, kernel, padding=(before, after), **options)
            assert out == math.ceil(size / stride)
            # the smallest total that gives ceil(size / stride): one zero less loses it
            if before + after:
                less = conv_output_size(size, kernel, padding=(0, before + after - 1), **options)
                assert less < out
    assert tf_same_padding(16, 3, stride=2) == (0, 1) and same_padding(3) == (1, 1)
