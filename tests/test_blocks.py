from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from convkit import ConvBlock, Flatten, build_cnn
from convkit.shapes import conv_output_size, pool_output_size

STAGES = ["conv", "norm", "act", "pool", "dropout"]


def test_default_block_is_conv_bn_relu_without_bias() -> None:
    block = ConvBlock(3, 16)
    assert [name for name, _ in block.named_children()] == ["conv", "norm", "act"]
    assert isinstance(block.conv, nn.Conv2d) and block.conv.bias is None
    assert isinstance(block.norm, nn.BatchNorm2d) and block.norm.num_features == 16
    assert isinstance(block.act, nn.ReLU)
    assert block.in_channels == 3 and block.out_channels == 16
    assert block(torch.randn(2, 3, 9, 11)).shape == (2, 16, 9, 11)


@pytest.mark.parametrize(
    "order",
    [
        "conv-norm-act-pool-dropout",
        "conv-pool-act-norm-dropout",
        "norm-act-conv-pool-dropout",
        "dropout-conv-act-pool-norm",
    ],
)
def test_children_follow_order(order: str) -> None:
    block = ConvBlock(4, 8, pool="max", dropout=0.1, order=order)
    assert [name for name, _ in block.named_children()] == order.split("-")
    conv_at = order.split("-").index("conv")
    norm_at = order.split("-").index("norm")
    assert block.norm.num_features == (4 if norm_at < conv_at else 8)
    assert block(torch.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)


def test_forward_is_the_children_in_order() -> None:
    torch.manual_seed(0)
    block = ConvBlock(
        2, 6, 3, norm="batch", act="gelu", pool="avg", order="conv-pool-act-norm"
    ).eval()
    x = torch.randn(3, 2, 10, 10)
    expected = block.norm(block.act(block.pool(block.conv(x))))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "switch_off", [{"norm": None}, {"act": None}, {"pool": None}, {"dropout": 0.0}]
)
def test_switched_off_stage_is_left_out(switch_off: dict) -> None:
    kwargs = {"norm": "batch", "act": "relu", "pool": "max", "dropout": 0.2, **switch_off}
    block = ConvBlock(1, 4, **kwargs)
    missing = next(iter(switch_off))
    names = [name for name, _ in block.named_children()]
    assert missing not in names
    assert len(names) == 4


@pytest.mark.parametrize(
    ("norm", "cls", "check"),
    [
        ("batch", nn.BatchNorm2d, lambda m: m.num_features == 48),
        ("group", nn.GroupNorm, lambda m: m.num_groups == 24 and m.num_channels == 48),
        ("instance", nn.InstanceNorm2d, lambda m: m.affine),
        ("layer", nn.GroupNorm, lambda m: m.num_groups == 1),
    ],
)
def test_norms(norm: str, cls: type, check) -> None:
    block = ConvBlock(3, 48, norm=norm)
    assert isinstance(block.norm, cls) and check(block.norm)
    assert block(torch.randn(2, 3, 6, 6)).shape == (2, 48, 6, 6)


@pytest.mark.parametrize(("channels", "groups"), [(64, 32), (96, 32), (20, 20), (7, 7), (34, 17)])
def test_group_norm_groups_divide_channels(channels: int, groups: int) -> None:
    block = ConvBlock(3, channels, norm="group")
    assert block.norm.num_groups == groups
    assert channels % block.norm.num_groups == 0


def test_norm_callable() -> None:
    block = ConvBlock(3, 10, norm=lambda c: nn.BatchNorm2d(c, momentum=0.5))
    assert block.norm.momentum == 0.5 and block.norm.num_features == 10


@pytest.mark.parametrize(
    ("act", "cls"),
    [
        ("relu", nn.ReLU),
        ("leaky_relu", nn.LeakyReLU),
        ("gelu", nn.GELU),
        ("silu", nn.SiLU),
        ("elu", nn.ELU),
        ("tanh", nn.Tanh),
        ("sigmoid", nn.Sigmoid),
        (nn.Hardswish, nn.Hardswish),
        (lambda: nn.LeakyReLU(0.3), nn.LeakyReLU),
    ],
)
def test_activations(act, cls: type) -> None:
    assert isinstance(ConvBlock(1, 2, act=act).act, cls)


def test_activation_instance_is_copied() -> None:
    prelu = nn.PReLU()
    a, b = ConvBlock(1, 2, act=prelu), ConvBlock(2, 2, act=prelu)
    assert isinstance(a.act, nn.PReLU) and a.act is not prelu and a.act is not b.act


@pytest.mark.parametrize(("pool", "cls"), [("max", nn.MaxPool2d), ("avg", nn.AvgPool2d)])
@pytest.mark.parametrize("pool_size", [2, 3, (2, 1)])
def test_pooling(pool: str, cls: type, pool_size) -> None:
    block = ConvBlock(1, 2, pool=pool, pool_size=pool_size)
    assert isinstance(block.pool, cls)
    assert block.pool.kernel_size == block.pool.stride
    out = block(torch.randn(1, 1, 12, 12))
    ph, pw = (pool_size, pool_size) if isinstance(pool_size, int) else pool_size
    assert out.shape == (1, 2, 12 // ph, 12 // pw)


def test_dropout_is_channelwise() -> None:
    block = ConvBlock(1, 2, dropout=0.3)
    assert isinstance(block.dropout, nn.Dropout2d) and block.dropout.p == 0.3


@pytest.mark.parametrize(
    ("kwargs", "has_bias"),
    [
        ({}, False),  # conv -> norm
        ({"norm": None}, True),
        ({"order": "conv-pool-act-norm", "pool": "max"}, True),  # the notebook's order
        ({"order": "norm-act-conv"}, True),
        ({"bias": True}, True),
        ({"norm": None, "bias": False}, False),
    ],
)
def test_bias_default(kwargs: dict, has_bias: bool) -> None:
    assert (ConvBlock(3, 8, **kwargs).conv.bias is not None) is has_bias


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("size", [7, 8, 13, 16])
def test_same_padding_gives_ceil_of_input_over_stride(
    kernel: int, stride: int, dilation: int, size: int
) -> None:
    block = ConvBlock(2, 3, kernel, stride=stride, dilation=dilation, norm=None, act=None)
    out = block(torch.randn(1, 2, size, size + 1))
    assert out.shape[2:] == (math.ceil(size / stride), math.ceil((size + 1) / stride))
    assert block.output_size((size, size + 1)) == tuple(out.shape[2:])


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_same_padding_matches_torch_same_for_stride_one() -> None:
    # nn.Conv2d(padding="same") exists for stride 1: our result must be identical, even kernel too.
    torch.manual_seed(0)
    for kernel in (2, 3, 4, 5):
        block = ConvBlock(2, 3, kernel, norm=None, act=None, bias=True)
        ref = nn.Conv2d(2, 3, kernel, padding="same")
        ref.load_state_dict(block.conv.state_dict())
        x = torch.randn(2, 2, 9, 10)
        torch.testing.assert_close(block(x), ref(x))


def test_even_kernel_same_pads_bottom_right_like_tensorflow() -> None:
    block = ConvBlock(1, 1, 2, norm=None, act=None, bias=False)
    assert isinstance(block.conv, nn.Conv2d)
    assert block.conv.pad == (0, 1, 0, 1)
    with torch.no_grad():
        block.conv.weight.fill_(1.0)
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    out = block(x)[0, 0]
    # bottom-right window sees only x[2, 2] (the rest is zero padding)
    assert out[2, 2].item() == 8.0 and out[0, 0].item() == 0 + 1 + 3 + 4


@pytest.mark.parametrize("padding", [0, 1, 2, (1, 0), "valid"])
@pytest.mark.parametrize("kernel", [1, 3, (3, 5)])
@pytest.mark.parametrize("stride", [1, 2])
def test_explicit_padding_matches_conv2d_formula(padding, kernel, stride) -> None:
    block = ConvBlock(3, 4, kernel, stride=stride, padding=padding, norm=None)
    ph, pw = (
        (0, 0)
        if padding == "valid"
        else ((padding, padding) if isinstance(padding, int) else padding)
    )
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    out = block(torch.randn(1, 3, 15, 14))
    assert out.shape[2:] == (
        conv_output_size(15, kh, stride=stride, padding=ph),
        conv_output_size(14, kw, stride=stride, padding=pw),
    )


def test_groups_and_dilation_passed_to_conv() -> None:
    block = ConvBlock(8, 16, 3, groups=4, dilation=2, norm=None)
    assert block.conv.groups == 4 and block.conv.dilation == (2, 2)
    assert block.conv.weight.shape == (16, 2, 3, 3)


def test_pool_output_formula() -> None:
    block = ConvBlock(1, 1, 5, padding="valid", pool="max")
    h = pool_output_size(conv_output_size(28, 5), 2)
    assert block(torch.zeros(1, 1, 28, 28)).shape[2:] == (h, h) == block.output_size((28, 28))


def test_block_composes_and_saves(tmp_path) -> None:
    model = nn.Sequential(
        ConvBlock(1, 4, pool="max"), ConvBlock(4, 8, 2, stride=2), Flatten(), nn.LazyLinear(3)
    )
    out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 3)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert "0.conv.weight" in torch.load(tmp_path / "m.pt", weights_only=True)


def test_flatten_is_torch_flatten() -> None:
    assert issubclass(Flatten, nn.Flatten)
    x = torch.randn(4, 3, 5, 6)
    torch.testing.assert_close(Flatten()(x), nn.Flatten()(x))
    assert Flatten()(x).shape == (4, 90)


@pytest.mark.parametrize("channels_last", [True, False])
def test_flatten_gradient_equals_torch_in_value_and_layout(channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 3, 5, 6).contiguous(memory_format=fmt)
    w = torch.randn(90, 7)
    grads = {}
    for name, flatten in (("ours", Flatten()), ("torch", nn.Flatten())):
        # a non-leaf, as in a network: a leaf's .grad is re-strided to match the leaf
        hidden = x.clone().requires_grad_() * 1.0
        hidden.register_hook(lambda g, name=name: grads.__setitem__(name, g))
        out = flatten(hidden)
        torch.testing.assert_close(out, nn.Flatten()(x), rtol=0, atol=0)
        (out @ w).square().sum().backward()
    torch.testing.assert_close(grads["ours"], grads["torch"], rtol=0, atol=0)
    assert grads["ours"].stride() == grads["torch"].stride()


@pytest.mark.parametrize(("start_dim", "end_dim"), [(1, -1), (2, 3), (0, 1), (1, 2), (-3, -1)])
def test_flatten_output_can_be_modified_in_place(start_dim: int, end_dim: int) -> None:
    # Where flattening returns a view (not dims 1..3 together), an in-place op on it must
    # work as with nn.Flatten.
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    grads = []
    for flatten in (Flatten(start_dim, end_dim), nn.Flatten(start_dim, end_dim)):
        leaf = x.clone().requires_grad_()
        out = flatten(leaf * 2.0)
        out.relu_()
        out.sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_flatten_scripts_and_a_channels_last_cnn_traces(tmp_path) -> None:
    # Scripting and tracing (with gradients on, channels_last weights) must give plain,
    # saveable graphs; and
    # torch.fx must be able to trace through Flatten as through nn.Flatten.
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), Flatten(), nn.Linear(2704, 3))
    net.to(memory_format=torch.channels_last)
    graph = torch.fx.symbolic_trace(net)
    image = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(graph(image), net(image))
    x = torch.randn(4, 3, 5, 6).contiguous(memory_format=torch.channels_last)
    model = build_cnn((1, 28, 28), 10, channels=(4, 8), hidden=(16,))
    model.to(memory_format=torch.channels_last).eval()
    images = torch.rand(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in new torch
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # ConvBlock's shape check
        scripted = torch.jit.script(Flatten())
        torch.jit.save(torch.jit.trace(model, images), tmp_path / "traced.pt")
        loaded = torch.jit.load(tmp_path / "traced.pt")
    torch.testing.assert_close(scripted(x), nn.Flatten()(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded(images), model(images))
    exported = torch.export.export(model, (images,)).module()
    torch.testing.assert_close(exported(images), model(images))


# torch's forward-mode AD loads TorchScript decompositions and warns about them itself
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_channels_last_cnn_works_under_torch_func_transforms() -> None:
    # A channels_last CNN must work under torch.func: per-sample gradients
    # (vmap over grad, as differential-privacy libraries do) and forward-mode AD.
    from torch.func import functional_call, grad, jvp, vmap

    torch.manual_seed(0)
    model = build_cnn((1, 12, 12), 3, channels=(4, 8), norm=None, hidden=(8,))
    model.to(memory_format=torch.channels_last)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.rand(5, 1, 12, 12).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (5,))

    def loss(p: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xb[None],)), yb[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, param in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], param.grad)
    out, tangent = jvp(model, (x,), (torch.ones_like(x),))
    torch.testing.assert_close(out, model(x))
    assert tangent.shape == (5, 3)


def test_forward_shape_error_names_input_shape() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 1, 8, 8\)"):
        ConvBlock(3, 4)(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": 0}, ValueError, r"`in_channels`.*strictly positive.*in_channels=0"),
        ({"out_channels": -2}, ValueError, r"`out_channels`.*out_channels=-2"),
        ({"in_channels": 2.0}, TypeError, r"`in_channels`.*Expected an int"),
        ({"kernel_size": 0}, ValueError, r"`kernel_size`.*kernel_size=0"),
        ({"kernel_size": (3, 0)}, ValueError, r"`kernel_size`.*\(3, 0\)"),
        ({"stride": 0}, ValueError, r"`stride`"),
        ({"padding": "full"}, ValueError, r"`padding`.*'same', 'valid'.*'full'"),
        ({"padding": -1}, ValueError, r"`padding`"),
        ({"groups": 3}, ValueError, r"`groups`.*divisor.*groups=3"),
        (
            {"norm": "batchnorm"},
            ValueError,
            r"`norm`.*'batchnorm'.*'batch', 'group', 'instance', 'layer'",
        ),
        ({"norm": 3}, TypeError, r"`norm`"),
        ({"act": "swish"}, ValueError, r"`act`.*'swish'.*'relu'.*'sigmoid'"),
        ({"act": 1.5}, TypeError, r"`act`"),
        ({"pool": "min"}, ValueError, r"`pool`.*'min'.*'max', 'avg'"),
        ({"dropout": 1.0}, ValueError, r"`dropout`.*\[0, 1\).*dropout=1.0"),
        ({"dropout": -0.1}, ValueError, r"`dropout`"),
        ({"order": "conv-norm-relu"}, ValueError, r"`order`.*unknown stage 'relu'"),
        ({"order": "conv-norm-conv-act"}, ValueError, r"`order`.*'conv' appears more than once"),
        ({"order": "norm-act"}, ValueError, r"`order`.*must contain 'conv'"),
        ({"order": "conv-act", "norm": "batch"}, ValueError, r"norm='batch' is switched on"),
        ({"bias": "yes"}, TypeError, r"`bias`"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"in_channels": 4, "out_channels": 8, **kwargs}
    with pytest.raises(error, match=match):
        ConvBlock(**args)


def test_every_order_permutation_builds() -> None:
    for perm in itertools.permutations(STAGES):
        block = ConvBlock(2, 4, pool="max", dropout=0.1, order="-".join(perm))
        assert [n for n, _ in block.named_children()] == list(perm)
        assert block(torch.randn(2, 2, 8, 8)).shape == (2, 4, 4, 4)


def test_relu_runs_in_place_except_as_the_first_stage() -> None:
    assert ConvBlock(2, 4).act.inplace
    first = ConvBlock(2, 4, norm=None, order="act-conv")
    assert not first.act.inplace
    x = torch.randn(2, 2, 6, 6)
    before = x.clone()
    first(x)
    assert torch.equal(x, before)  # the caller's tensor is untouched


@pytest.mark.parametrize(
    "order",
    [
        "conv-norm-act-pool-dropout",
        "conv-pool-act-norm-dropout",
        "conv-norm-dropout-act",
        "norm-act-conv",
        "conv-pool-norm-act",
    ],
)
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "elu"])
def test_in_place_activations_give_the_same_gradients(order: str, act: str) -> None:
    torch.manual_seed(0)
    kwargs = {
        "pool": "max" if "pool" in order else None,
        "dropout": 0.0,
        "act": act,
        "order": order,
    }
    block = ConvBlock(3, 4, **kwargs)  # train mode: BatchNorm uses batch statistics
    reference = ConvBlock(3, 4, **kwargs)
    reference.load_state_dict(block.state_dict())
    for module in reference.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.no_grad():
        y.copy_(x)
    block(x).square().sum().backward()
    reference(y).square().sum().backward()
    torch.testing.assert_close(x.grad, y.grad)
    for p, q in zip(block.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


# ------------------------------------------------------- geometry, dims and early checks

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@pytest.mark.parametrize("perm", list(itertools.permutations(STAGES)), ids="-".join)
def test_output_size_follows_order_like_a_real_forward(perm: tuple[str, ...]) -> None:
    # The pool may come before the conv: the size must follow the block's own order.
    block = ConvBlock(1, 2, 3, padding="valid", pool="max", pool_size=(2, 3), dropout=0.1,
                      norm="group", order="-".join(perm)).eval()  # fmt: skip
    for size in [(7, 7), (9, 14), (12, 8), (5, 20)]:
        predicted = block.output_size(size)
        if min(predicted) < 1:
            with pytest.raises(RuntimeError):
                block(torch.zeros(1, 1, *size))
        else:
            assert tuple(block(torch.zeros(1, 1, *size)).shape[2:]) == predicted


def test_output_size_of_pool_then_conv_is_the_real_one() -> None:
    block = ConvBlock(1, 4, 3, order="pool-conv-norm-act", pool="max", padding="valid").eval()
    assert block.output_size((7, 7)) == (1, 1) == tuple(block(torch.zeros(1, 1, 7, 7)).shape[2:])


@pytest.mark.parametrize(
    ("dims", "norm", "pool", "dropout"),
    [
        (1, nn.BatchNorm1d, nn.MaxPool1d, nn.Dropout1d),
        (2, nn.BatchNorm2d, nn.MaxPool2d, nn.Dropout2d),
        (3, nn.BatchNorm3d, nn.MaxPool3d, nn.Dropout3d),
    ],
)
def test_dims_pick_matching_layers(dims: int, norm, pool, dropout) -> None:
    block = ConvBlock(2, 4, dims=dims, pool="max", dropout=0.2)
    assert type(block.conv) is CONVS[dims] and type(block.norm) is norm
    assert type(block.pool) is pool and type(block.dropout) is dropout
    assert block.dims == dims and block.conv.weight.shape == (4, 2, *(3,) * dims)
    assert isinstance(
        ConvBlock(2, 4, dims=dims, norm="instance").norm, getattr(nn, f"InstanceNorm{dims}d")
    )
    assert block(torch.randn(2, 2, *(8,) * dims)).shape == (2, 4, *(4,) * dims)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_block_equals_a_hand_built_torch_stack(dims: int) -> None:
    torch.manual_seed(0)
    block = ConvBlock(3, 4, 3, dims=dims, stride=2, pool="avg", order="conv-pool-norm-act").eval()
    ref = nn.Sequential(
        CONVS[dims](3, 4, 3, stride=2, padding=1, bias=True),
        getattr(nn, f"AvgPool{dims}d")(2),
        getattr(nn, f"BatchNorm{dims}d")(4),
        nn.ReLU(),
    ).eval()
    ref.load_state_dict(dict(zip(ref.state_dict(), block.state_dict().values(), strict=True)))
    x = torch.randn(2, 3, *(9,) * dims)
    torch.testing.assert_close(block(x), ref(x), rtol=0, atol=0)


@settings(max_examples=80, deadline=None)
@given(
    dims=st.sampled_from([1, 2, 3]),
    data=st.data(),
)
def test_same_padding_per_dim_matches_torch_conv(dims: int, data) -> None:
    # "same" for any kernel, stride and dilation per dimension: ceil(size / stride), and
    # exactly a torch ConvNd on the input zero-padded D(K-1)//2 before, the rest after.
    ints = lambda lo, hi: st.tuples(*[st.integers(lo, hi)] * dims)  # noqa: E731
    kernel, stride = data.draw(ints(1, 5)), data.draw(ints(1, 3))
    dilation, size = data.draw(ints(1, 2)), data.draw(ints(1, 9))
    block = ConvBlock(1, 2, kernel, dims=dims, stride=stride, dilation=dilation,
                      norm=None, act=None, bias=True)  # fmt: skip
    x = torch.randn(1, 1, *size)
    out = block(x)
    assert tuple(out.shape[2:]) == tuple(-(-s // st_) for s, st_ in zip(size, stride, strict=True))
    assert block.output_size(size) == tuple(out.shape[2:])
    ref = CONVS[dims](1, 2, kernel, stride=stride, dilation=dilation)
    ref.load_state_dict(block.conv.state_dict())
    pads = []
    for k, d in reversed(list(zip(kernel, dilation, strict=True))):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    torch.testing.assert_close(out, ref(F.pad(x, pads)))


@pytest.mark.parametrize(
    ("act", "match"),
    [
        (torch.relu, r"`act`.*function applied to tensors.*'relu' or the module class nn.ReLU"),
        (F.relu, r"`act`.*function applied to tensors.*'relu' or the module class nn.ReLU"),
        (F.gelu, r"`act`.*'gelu' or the module class nn.GELU"),
        (torch.tanh, r"`act`.*'tanh' or the module class nn.Tanh"),
        (torch.nn.functional.softplus, r"`act`.*a name such as 'relu', an nn.Module subclass"),
    ],
)
def test_activation_function_instead_of_layer_says_what_to_pass(act, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        ConvBlock(1, 2, act=act)


@pytest.mark.parametrize(
    ("dims", "norm", "fix"),
    [
        (2, nn.BatchNorm1d, r"norm='batch'.*nn.BatchNorm2d"),
        (1, nn.BatchNorm2d, r"norm='batch'.*nn.BatchNorm1d"),
        (3, nn.InstanceNorm2d, r"norm='instance'.*nn.InstanceNorm3d"),
    ],
)
def test_norm_class_for_other_dims_says_what_to_pass(dims: int, norm, fix: str) -> None:
    with pytest.raises(ValueError, match=rf"`norm`.*{norm.__name__}.*{dims}-D.*{fix}"):
        ConvBlock(1, 2, dims=dims, norm=norm)
    right = getattr(nn, f"BatchNorm{dims}d")
    assert type(ConvBlock(1, 2, dims=dims, norm=right).norm) is right


@pytest.mark.parametrize(
    ("order", "norm"),
    [
        ("dropout-act-conv", None),  # dropout returns its input itself in eval mode
        ("dropout-norm-act-conv", "batch"),
        ("norm-act-conv", lambda c: nn.Identity()),  # a norm of your own may, too
        ("dropout-pool-act-conv", None),
    ],
)
@pytest.mark.parametrize("training", [False, True])
def test_the_callers_input_is_never_overwritten(order: str, norm, training: bool) -> None:
    torch.manual_seed(0)
    pool = "max" if "pool" in order else None
    dropout = 0.5 if "dropout" in order else 0.0
    block = ConvBlock(2, 4, norm=norm, pool=pool, dropout=dropout, order=order).train(training)
    x = torch.randn(2, 2, 6, 6)
    before = x.clone()
    block(x)
    assert torch.equal(x, before)
    # in place where a stage made a new tensor: after a pool or a named norm
    fresh = "pool" in order or (isinstance(norm, str) and order.index("norm") < order.index("act"))
    assert block.act.inplace is fresh


@pytest.mark.parametrize(
    ("act", "function"),
    [
        (nn.ReLU(inplace=True), F.relu),
        (lambda: nn.ReLU(inplace=True), F.relu),
        (nn.LeakyReLU(0.1, inplace=True), lambda x: F.leaky_relu(x, 0.1)),
    ],
)
def test_in_place_activation_as_first_stage_leaves_the_input_alone(act, function) -> None:
    block = ConvBlock(2, 4, norm=None, act=act, order="act-conv")
    x = torch.randn(2, 2, 6, 6)
    before = x.clone()
    out = block(x)
    assert torch.equal(x, before)  # the caller's tensor still has its negative values
    torch.testing.assert_close(out, block.conv(function(before)), rtol=0, atol=0)
    assert ConvBlock(2, 4, act=act).act.inplace  # elsewhere the user's in-place choice stays


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dims": 4}, ValueError, r"`dims`.*1 \(sequences.*2 \(images.*3 \(volumes.*dims=4"),
        ({"dims": 2.0}, TypeError, r"`dims`.*dims=2.0"),
        ({"dims": 1, "kernel_size": (3, 3)}, ValueError,
         r"`kernel_size`.*tuple of 1 positive ints.*\(3, 3\)"),
        ({"dims": 3, "stride": (1, 2)}, ValueError, r"`stride`.*tuple of 3 positive ints"),
        ({"groups": 3}, ValueError, r"`groups`.*one of 1, 2, 4.*groups=3"),
    ],
)  # fmt: skip
def test_bad_dims_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ConvBlock(4, 8, **kwargs)


@pytest.mark.parametrize(("dims", "shape"), [(1, r"\(N, 3, L\)"), (3, r"\(N, 3, D, H, W\)")])
def test_forward_shape_error_names_the_dims(dims: int, shape: str) -> None:
    with pytest.raises(ValueError, match=rf"{shape}.*\(2, 3, 8, 8\)"):
        ConvBlock(3, 4, dims=dims)(torch.randn(2, 3, 8, 8))
