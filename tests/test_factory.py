from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

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
    assert isinstance(model.head.act1, nn.GELU)  # head_act=None -> same as act
    assert isinstance(model.head.norm2, nn.LayerNorm) and model.head.dropout1.p == 0.3
    model = build_cnn((1, 16, 16), 3, act="gelu", head_act="tanh")
    assert isinstance(model.head.act1, nn.Tanh)


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
        ({"input_shape": (28, 28)}, ValueError, r"`input_shape`.*three positive ints.*\(28, 28\)"),
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
