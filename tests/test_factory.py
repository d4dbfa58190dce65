from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import convkit
from convkit import CNN, ConvBlock, build_cnn
from helpers import NOTEBOOK

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from notebook_baseline import notebook_net


def test_notebook_network_layer_for_layer(sample_test) -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, **NOTEBOOK)
    ref = notebook_net()  # the benchmark's baseline: the notebook's network, torch.nn only
    ours = [m for m in model.modules() if not list(m.children())]
    theirs = [m for m in ref.modules() if not list(m.children())]
    assert len(ours) == len(theirs) == 16
    for a, b in zip(ours, theirs, strict=True):
        assert isinstance(a, type(b))  # convkit's Flatten subclasses nn.Flatten
        if not isinstance(a, nn.ReLU):  # ours run in place: same function, less memory
            assert a.extra_repr() == b.extra_repr()
    assert sum(p.numel() for p in model.parameters()) == 259_698
    assert sum(p.numel() for p in ref.parameters()) == 259_698

    # Make the BatchNorm statistics non-trivial on real data, then copy weights and
    # statistics over (same order of state tensors) and compare outputs in eval mode.
    with torch.no_grad():
        model(sample_test[0][:256])
    ref.load_state_dict(dict(zip(ref.state_dict(), model.state_dict().values(), strict=True)))
    model.eval(), ref.eval()
    x = sample_test[0][:64]
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_shape_inference_changes_no_parameter_or_buffer() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, **NOTEBOOK)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert module.num_batches_tracked.item() == 0
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean))
            assert torch.equal(module.running_var, torch.ones_like(module.running_var))
    assert model.training and all(m.training for m in model.modules())


def test_custom_features_keep_their_state_and_modes() -> None:
    features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    features[3].eval()  # a submodule the user put in eval mode stays so
    before = {k: v.clone() for k, v in features.state_dict().items()}
    model = build_cnn((3, 10, 12), 5, features=features, hidden=())
    after = features.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert features.training and features[1].training and not features[3].training
    assert model.feature_shape == (4, 8, 10) and model.num_features == 320


def test_head_is_a_plain_linear_and_works_with_optimizers_and_state_dict(tmp_path) -> None:
    model = build_cnn((1, 28, 28), 10)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert all(type(m) is nn.Linear for m in linears)
    assert not any(isinstance(m, nn.modules.lazy.LazyModuleMixin) for m in model.modules())
    assert linears[0].in_features == 64 * 7 * 7 == model.num_features
    torch.optim.Adam(model.parameters())  # no uninitialised parameters
    torch.save(model.state_dict(), tmp_path / "w.pt")
    other = build_cnn((1, 28, 28), 10)
    other.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))


def test_children_and_attributes() -> None:
    model = build_cnn((1, 28, 28), 10)
    assert isinstance(model, nn.Sequential) and isinstance(model, CNN)
    assert [n for n, _ in model.named_children()] == ["features", "flatten", "head"]
    assert [n for n, _ in model.features.named_children()] == ["block1", "block2"]
    assert model.input_shape == (1, 28, 28)
    assert model.feature_shape == (64, 7, 7)
    assert model.num_classes == 10
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("input_shape", [(3, 32, 32), (3, 40, 24), (1, 17, 29), (2, 9, 64)])
def test_non_square_and_multichannel_inputs(input_shape) -> None:
    model = build_cnn(input_shape, 7, channels=(8, 16), stride=(1, 2))
    out = model(torch.randn(2, *input_shape))
    assert out.shape == (2, 7)
    assert model.features(torch.randn(1, *input_shape)).shape[1:] == model.feature_shape


def test_per_block_options() -> None:
    model = build_cnn(
        (3, 32, 32),
        4,
        channels=(8, 16, 32),
        kernel_size=[5, 3, (1, 3)],
        stride=(1, 2, 1),
        padding=("same", 1, "valid"),
        norm=("batch", "group", None),
        act=("relu", "gelu", nn.SiLU),
        pool=("max", None, "avg"),
        pool_size=(2, 2, (1, 2)),
        dropout=(0.0, 0.1, 0.2),
        order=("conv-norm-act-pool-dropout", "conv-act-norm-dropout", "conv-act-pool-dropout"),
        hidden=(),
    )
    b1, b2, b3 = model.features
    assert b1.conv.kernel_size == (5, 5) and isinstance(b1.pool, nn.MaxPool2d)
    assert (
        b2.conv.stride == (2, 2)
        and isinstance(b2.norm, nn.GroupNorm)
        and isinstance(b2.act, nn.GELU)
    )
    assert [n for n, _ in b2.named_children()] == ["conv", "act", "norm", "dropout"]
    assert b3.conv.kernel_size == (1, 3) and not hasattr(b3, "norm") and isinstance(b3.act, nn.SiLU)
    assert isinstance(b3.pool, nn.AvgPool2d) and b3.pool.kernel_size == (1, 2)
    assert model.feature_shape == (32, 8, 3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_pair_means_one_value_unless_it_has_one_entry_per_block() -> None:
    one_block = build_cnn((1, 20, 20), 2, channels=(4,), kernel_size=(3, 5), hidden=())
    assert one_block.features.block1.conv.kernel_size == (3, 5)
    two_blocks = build_cnn((1, 20, 20), 2, channels=(4, 4), kernel_size=(3, 5), hidden=())
    assert [b.conv.kernel_size for b in two_blocks.features] == [(3, 3), (5, 5)]


def test_head_options() -> None:
    model = build_cnn(
        (1, 16, 16), 3, act="gelu", hidden=(32, 16), head_norm="layer", head_dropout=0.3
    )
    assert isinstance(model.head.act1, nn.GELU)  # the default head_act inherits act
    assert isinstance(model.head.norm2, nn.LayerNorm) and model.head.dropout1.p == 0.3
    model = build_cnn((1, 16, 16), 3, act="gelu", head_act="tanh")
    assert isinstance(model.head.act1, nn.Tanh)
    model = build_cnn((1, 16, 16), 3, act=("relu", "silu"), hidden=(8,))
    assert isinstance(model.head.act1, nn.SiLU)  # inherits act's last entry


def test_head_act_none_switches_the_head_activation_off() -> None:
    # None means "off", as for every other layer option; it used to mean "same as act".
    model = build_cnn((1, 16, 16), 3, act="gelu", hidden=(32, 16), head_act=None)
    assert [n for n, _ in model.head.named_children()] == ["linear1", "linear2", "output"]
    assert not any(isinstance(m, (nn.GELU, nn.ReLU)) for m in model.head.modules())
    x = torch.randn(4, 1, 16, 16)
    head = model.head
    expected = head.output(head.linear2(head.linear1(model.flatten(model.features(x)))))
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert build_cnn(**model.config).head.__repr__() == model.head.__repr__()


def test_custom_features_module() -> None:
    features = nn.Sequential(ConvBlock(3, 8, stride=2), nn.AdaptiveAvgPool2d(1))
    model = build_cnn((3, 64, 64), 10, features=features, hidden=(), act="relu")
    assert model.features is features
    assert model.feature_shape == (8, 1, 1) and model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert model.config is None


def test_config_is_plain_data() -> None:
    import json

    model = build_cnn((1, 28, 28), 10, **NOTEBOOK)
    assert model.config is not None
    rebuilt = build_cnn(**json.loads(json.dumps(model.config)))
    assert str(rebuilt) == str(model)
    assert build_cnn((1, 28, 28), 10, act=nn.SiLU).config is None


def test_wrong_input_size_in_forward_is_explained() -> None:
    model = build_cnn((1, 28, 28), 10)
    with pytest.raises(
        ValueError, match=r"\(N, 1, 28, 28\).*\(2, 1, 32, 32\).*input_shape=\(1, 32, 32\)"
    ):
        model(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_shape": (28,)}, ValueError, r"`input_shape`.*2, 3 or 4 positive ints.*\(28,\)"),
        ({"input_shape": (1, 2, 3, 4, 5)}, ValueError, r"`input_shape`.*\(channels, depth"),
        ({"input_shape": (1, 0, 28)}, ValueError, r"`input_shape`"),
        ({"input_shape": (1.0, 28, 28)}, ValueError, r"`input_shape`"),
        ({"num_classes": 0}, ValueError, r"`num_classes`"),
        ({"channels": ()}, ValueError, r"`channels`.*non-empty"),
        ({"channels": (32, 0)}, ValueError, r"`channels`.*\(32, 0\)"),
        ({"kernel_size": [3, 3, 3]}, ValueError, r"`kernel_size`.*one entry per block.*2 entries"),
        ({"norm": ["batch"]}, ValueError, r"`norm`.*2 entries.*1 entries"),
        ({"dropout": (0.1, 0.2, 0.3)}, ValueError, r"`dropout`.*one entry per block"),
        ({"norm": "bn"}, ValueError, r"`norm`.*'bn'.*'batch'"),
        ({"act": "swish"}, ValueError, r"`act`.*'swish'"),
        ({"pool": "median"}, ValueError, r"`pool`.*'median'"),
        ({"dropout": 1.5}, ValueError, r"`dropout`.*block 1 of 2"),
        ({"order": "conv-conv"}, ValueError, r"`order`.*more than once"),
        ({"kernel_size": 0}, ValueError, r"`kernel_size`.*block 1 of 2"),
        ({"head_pool": "mean"}, ValueError, r"`head_pool`.*'mean'.*'avg', 'max', 'avgmax'"),
        ({"head_pool": True}, TypeError, r"`head_pool`.*'avg', 'max', 'avgmax' or None"),
        ({"head_act": "swish"}, ValueError, r"`head_act`.*'swish'"),
        ({"head_norm": nn.BatchNorm2d}, ValueError, r"`head_norm`.*BatchNorm2d.*nn.BatchNorm1d"),
        ({"norm": nn.BatchNorm1d}, ValueError, r"`norm`.*BatchNorm1d.*2-D.*norm='batch'"),
        ({"head_dropout": 1.0}, ValueError, r"`head_dropout`"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"input_shape": (1, 28, 28), "num_classes": 10, **kwargs}
    with pytest.raises(error, match=match):
        build_cnn(**args)


def test_stack_that_shrinks_to_nothing_names_the_block() -> None:
    with pytest.raises(
        ValueError,
        match=r"block 3 of 3.*input of shape \(64, 4, 4\).*0x0.*padding='same'.*fewer blocks"
        r".*larger input",
    ):
        build_cnn((1, 28, 28), 10, channels=(32, 64, 128), kernel_size=5, padding="valid")


def test_features_with_block_options_is_an_error() -> None:
    with pytest.raises(
        ValueError, match=r"`channels`, `kernel_size`.*can't be combined with `features=`"
    ):
        build_cnn((1, 28, 28), 10, features=nn.Identity(), channels=(8,), kernel_size=5)


def test_features_that_fail_on_the_input_chain_the_error() -> None:
    features = nn.Conv2d(3, 8, 3)  # expects 3 channels
    with pytest.raises(ValueError, match=r"`features`.*input of shape \(1, 1, 28, 28\)") as info:
        build_cnn((1, 28, 28), 10, features=features)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_features_type_checked() -> None:
    with pytest.raises(TypeError, match=r"`features`"):
        build_cnn((1, 28, 28), 10, features=lambda x: x)  # type: ignore[arg-type]


# ------------------------------------------------------------ dims and global pooling


@pytest.mark.parametrize(
    ("input_shape", "conv", "norm", "pool"),
    [
        ((28, 28), nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d),
        ((1, 28, 28), nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d),
        ((2, 8, 12, 10), nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d),
    ],
)
def test_dims_follow_the_length_of_input_shape(input_shape, conv, norm, pool) -> None:
    model = build_cnn(input_shape, 5, channels=(4, 8), dropout=0.1, hidden=(6,))
    block = model.features.block1
    assert type(block.conv) is conv and type(block.norm) is norm and type(block.pool) is pool
    assert model.dims == len(input_shape) - 1 == block.dims
    assert model.feature_shape == (8, *(s // 4 for s in input_shape[1:]))
    assert model(torch.randn(3, *input_shape)).shape == (3, 5)


def test_global_pool_model_runs_on_three_input_sizes_and_refuses_smaller_ones() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(8, 16), kernel_size=5, padding="valid",
                      head_pool="avg", hidden=(12,)).eval()  # fmt: skip
    assert [n for n, _ in model.named_children()] == ["features", "global_pool", "flatten", "head"]
    assert model.head.in_features == model.num_features == 16
    # conv5 (-4) -> pool2 -> conv5 (-4) -> pool2: the smallest input that leaves 1x1 is 16
    assert model.min_input_shape == (1, 16, 16)
    for size in [(16, 16), (28, 28), (45, 33)]:
        x = torch.rand(2, 1, *size)
        pooled = model.features(x).mean(dim=(2, 3))  # global average pooling by hand
        torch.testing.assert_close(model(x), model.head(pooled))
    with pytest.raises(ValueError, match=r"\(N, 1, >=16, >=16\).*at least \(16, 16\).*"
                       r"\(2, 1, 15, 40\)"):  # fmt: skip
        model(torch.rand(2, 1, 15, 40))
    with pytest.raises(ValueError, match=r"\(N, 1, >=16, >=16\)"):
        model(torch.rand(2, 3, 28, 28))  # wrong channels: said before any layer runs


@pytest.mark.parametrize("kind", ["avg", "max", "avgmax"])
@pytest.mark.parametrize("input_shape", [(3, 20), (1, 12, 14), (2, 6, 8, 8)])
def test_head_pool_kinds_match_torch_reductions(kind: str, input_shape) -> None:
    torch.manual_seed(0)
    model = build_cnn(input_shape, 4, channels=(5,), head_pool=kind, hidden=()).eval()
    x = torch.randn(2, *input_shape)
    feats = model.features(x).flatten(2)
    pooled = {"avg": feats.mean(2), "max": feats.amax(2),
              "avgmax": 0.5 * (feats.mean(2) + feats.amax(2))}[kind]  # fmt: skip
    torch.testing.assert_close(model(x), model.head(pooled))


class _TooMuchWork(Exception):
    pass


def test_a_long_stack_that_shrinks_is_refused_at_its_first_block(monkeypatch) -> None:
    # 600 blocks on 8x8: block 4 would output 0x0. Nothing after it may be built or
    # measured: count the blocks built and the calls into convkit.shapes (capped, so
    # that a regression fails at once instead of running for minutes).
    built = []
    init = ConvBlock.__init__

    def counting_init(self, *args, **kwargs) -> None:
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(ConvBlock, "__init__", counting_init)
    shapes_dir = str(Path(convkit.shapes.__file__).parent)
    calls = 0

    def profile(frame, event, arg) -> None:
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.startswith(shapes_dir):
            calls += 1
            if calls > 5_000:
                raise _TooMuchWork(f"{calls} calls into convkit.shapes")

    rng = torch.get_rng_state()
    sys.setprofile(profile)
    try:
        with pytest.raises(
            ValueError,
            match=r"block 4 of 600 \(kernel_size=3.*receives an input of shape \(4, 1, 1\) and "
            r"would output a 0x0 map\. The smallest input that block1 to block4 take is "
            r"\(1, 16, 16\)\. Use pool=None there, fewer blocks \(channels=\(4, 4, 4\)\)",
        ):
            build_cnn((1, 8, 8), 3, channels=(4,) * 600, hidden=())
    finally:
        sys.setprofile(None)
    assert len(built) == 4  # blocks 1 to 4, on the meta device
    assert calls < 1_000
    assert torch.equal(torch.get_rng_state(), rng)  # nothing initialised


def test_min_input_shape_is_the_smallest_size_that_runs() -> None:
    model = build_cnn((1, 40, 40), 3, channels=(4, 4, 4), kernel_size=[3, (5, 3), 3],
                      stride=(1, 2, 1), padding="valid", head_pool="max").eval()  # fmt: skip
    c, h, w = model.min_input_shape
    model(torch.zeros(1, c, h, w))
    for smaller in [(h - 1, w), (h, w - 1)]:
        with pytest.raises(RuntimeError):  # torch itself fails: the bound is tight
            model.global_pool(model.features(torch.zeros(1, c, *smaller)))


def test_global_pool_over_custom_features() -> None:
    features = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2))
    model = build_cnn((1, 28, 28), 4, features=features, head_pool="avg", hidden=())
    assert model.min_input_shape == (1, 6, 6) and model.num_features == 6
    assert model(torch.rand(2, 1, 50, 7)).shape == (2, 4)
    flat = nn.Sequential(nn.Conv2d(1, 6, 5), nn.Flatten())
    with pytest.raises(ValueError, match=r"`head_pool`.*\(C, H, W\).*\(3456,\)"):
        build_cnn((1, 28, 28), 4, features=flat, head_pool="avg")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_shape": (1, 28, 28), "head_pool": "avgmax", "head_act": None},
        {"input_shape": (28, 28), "channels": (8, 16), "kernel_size": 5, "head_pool": "avg"},
        {"input_shape": (1, 6, 12, 12), "channels": (4,), "pool_size": (1, 2, 2)},
    ],
)
def test_config_round_trips_through_a_checkpoint(tmp_path, kwargs: dict) -> None:
    from convkit import load_model, save_checkpoint

    torch.manual_seed(0)
    model = build_cnn(num_classes=3, **kwargs).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_model(tmp_path / "m.pt").eval()
    assert str(loaded) == str(model) and loaded.min_input_shape == model.min_input_shape
    x = torch.randn(2, *model.input_shape)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_notebook_network_is_unchanged_by_the_new_options() -> None:
    model = build_cnn((1, 28, 28), 10, **NOTEBOOK)
    assert model.min_input_shape is None and not hasattr(model, "global_pool")
    assert model.config is not None and model.config["head_pool"] is None
    assert model.config["head_act"] == "inherit"


def test_training_side_takes_any_size_a_global_pool_model_takes(sample_test) -> None:
    from convkit import evaluate

    images, labels = sample_test[0][:64], sample_test[1][:64]
    bigger = torch.nn.functional.pad(images, (4, 4, 4, 4))  # the same digits on 36x36
    pooled = build_cnn((1, 28, 28), 10, channels=(8,), head_pool="avg")
    result = evaluate(pooled, (bigger, labels), device="cpu")
    assert 0.0 <= result["accuracy"] <= 1.0
    flat = build_cnn((1, 28, 28), 10, channels=(8,))
    with pytest.raises(ValueError, match=r"input_shape \(1, 28, 28\)"):
        evaluate(flat, (bigger, labels), device="cpu")


def test_min_input_shape_of_blocks_with_a_shortcut_branch() -> None:
    # A residual block's layers don't run in registration order (the shortcut's strided
    # 1x1 conv runs beside the branch, not after it): each block is asked for its size.
    from convkit import ResidualBlock

    features = nn.Sequential(
        ResidualBlock(1, 4, stride=2), nn.MaxPool2d(3), ResidualBlock(4, 8, stride=2)
    )
    model = build_cnn((1, 28, 28), 3, features=features, head_pool="avg", hidden=()).eval()
    c, h, w = model.min_input_shape
    assert (c, h, w) == (1, 5, 5)  # ceil(5 / 2) = 3 -> pool 3 -> 1 -> ceil(1 / 2) = 1
    assert model(torch.zeros(1, 1, h, w)).shape == (1, 3)
    with pytest.raises(RuntimeError):  # one smaller and torch's max-pool fails
        model.global_pool(model.features(torch.zeros(1, 1, h - 1, w)))
