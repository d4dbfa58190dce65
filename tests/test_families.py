"""build_cnn's block families: plain, residual and bottleneck stages, stems, dims."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from convkit import ConvBlock, ResidualBlock, build_cnn, load_model, save_checkpoint
from convkit.shapes import min_input_size, output_size, receptive_field, summary

RESNET20 = {
    "block": "residual",
    "stem": 16,
    "channels": (16, 32, 64),
    "depths": 3,
    "stride": (1, 2, 2),
    "pool": None,
    "head_pool": "avg",
    "hidden": (),
}


def randomise(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=gen) * 0.3
                tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return model


def torchvision_resnet20() -> nn.Sequential:
    """He et al.'s CIFAR ResNet-20 from torchvision's BasicBlock (projection shortcuts)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    c_in = 16
    for c_out, stride in ((16, 1), (32, 2), (64, 2)):
        for j in range(3):
            s = stride if j == 0 else 1
            down = None
            if (c_in, s) != (c_out, 1):
                down = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, s, bias=False), nn.BatchNorm2d(c_out)
                )
            layers.append(BasicBlock(c_in, c_out, s, downsample=down))
            c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def test_resnet20_in_one_call_is_torchvisions_resnet20() -> None:
    model = randomise(build_cnn((3, 32, 32), 10, **RESNET20))
    assert [n for n, _ in model.features.named_children()] == ["stem", "stage1", "stage2", "stage3"]
    assert [len(model.features.get_submodule(f"stage{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    reference = torchvision_resnet20()
    assert sum(p.numel() for p in model.parameters()) == 272_474
    assert sum(p.numel() for p in reference.parameters()) == 272_474
    reference.load_state_dict(
        dict(zip(reference.state_dict(), model.state_dict().values(), strict=True))
    )
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    reference.eval()
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    # any input at least the minimum: a global pool frees the head from one size
    assert model.min_input_shape == (3, 1, 1)
    for size in ((32, 32), (17, 9), (1, 1)):
        assert model(torch.zeros(2, 3, *size)).shape == (2, 10)


def test_1d_cnn_for_sequences_in_one_call() -> None:
    model = build_cnn(
        (28, 28), 10, block="residual", channels=(32, 64), depths=2, stride=(1, 2),
        pool=None, head_pool="avg", hidden=(),
    )  # fmt: skip
    block = model.features.stage2.block1
    assert isinstance(block, ResidualBlock) and block.dims == 1
    assert isinstance(block.conv1.conv, nn.Conv1d) and block.stride == (2,)
    assert isinstance(block.shortcut.conv, nn.Conv1d)
    for length in (28, 100, 3):
        assert model(torch.zeros(2, 28, length)).shape == (2, 10)


def test_3d_bottleneck_preact_with_se_and_drop_path() -> None:
    model = build_cnn(
        (1, 8, 16, 16), 5, block="bottleneck", channels=(16, 32), depths=(1, 2),
        stride=(1, 2), pool=None, head_pool="avg", hidden=(), preact=True, shortcut="avg",
        se_reduction=4, drop_path=0.2,
    )  # fmt: skip
    blocks = [b for b in model.modules() if isinstance(b, ResidualBlock)]
    assert len(blocks) == 3 and all(b.dims == 3 and b.preact for b in blocks)
    assert isinstance(blocks[1].shortcut.pool, nn.AvgPool3d)
    # stochastic depth grows linearly from 0 to drop_path over the blocks (timm)
    assert [0.0 if b.drop_path is None else b.drop_path.p for b in blocks] == [0.0, 0.1, 0.2]
    assert isinstance(model.features.final.norm, nn.BatchNorm3d)  # pre-activation ends normed
    assert model(torch.zeros(2, 1, 8, 16, 16)).shape == (2, 5)


def test_stride_or_pool_downsampling_and_strided_stem() -> None:
    pooled = build_cnn((1, 28, 28), 10, block="residual", channels=(8, 16), pool="max")
    assert [n for n, _ in pooled.features.stage1.named_children()] == ["block1", "pool"]
    assert pooled.feature_shape == (16, 7, 7)
    strided = build_cnn(
        (1, 28, 28), 10, block="residual", stem=(8, 7, 2), channels=(8, 16), stride=(1, 2),
        pool=None, dropout=0.1,
    )  # fmt: skip
    assert strided.features.stem.conv.kernel_size == (7, 7) and strided.feature_shape == (16, 7, 7)
    assert isinstance(strided.features.stage1.dropout, nn.Dropout2d)


def test_defaults_are_the_plain_stack_exactly() -> None:
    torch.manual_seed(0)
    default = build_cnn((1, 28, 28), 10)
    torch.manual_seed(0)
    explicit = build_cnn((1, 28, 28), 10, block="plain", depths=1, stem=None, init="torch")
    torch.manual_seed(0)
    features = nn.Sequential(  # the plain stack, by hand
        OrderedDict(block1=ConvBlock(1, 32, pool="max"), block2=ConvBlock(32, 64, pool="max"))
    )
    for a, b, c in zip(
        default.features.state_dict().items(),
        explicit.features.state_dict().items(),
        features.state_dict().items(),
        strict=True,
    ):
        assert a[0] == b[0] == c[0] and torch.equal(a[1], b[1]) and torch.equal(a[1], c[1])


def test_plain_family_takes_a_stem_and_init() -> None:
    model = build_cnn((1, 28, 28), 10, stem=(8, 5, 2), channels=(16,), init="kaiming")
    assert [n for n, _ in model.features.named_children()] == ["stem", "block1"]
    assert model.feature_shape == (16, 7, 7)
    conv = model.features.block1.conv  # kaiming_normal_(fan_out): std sqrt(2 / (16 * 9))
    assert conv.weight.std().item() == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.15)
    torch.manual_seed(0)
    default = build_cnn((1, 28, 28), 10, stem=(8, 5, 2), channels=(16,))
    torch_std = (3 * 8 * 9) ** -0.5  # torch's default: kaiming_uniform_(a=sqrt(5)), fan_in
    assert default.features.block1.conv.weight.std().item() == pytest.approx(torch_std, rel=0.15)


def test_zero_last_makes_every_stage_start_as_its_shortcuts() -> None:
    torch.manual_seed(0)
    model = build_cnn((3, 8, 8), 2, block="residual", channels=(4, 8), depths=2, init="zero_last")
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    h = x
    for stage in (model.features.stage1, model.features.stage2):
        for block in stage:
            if isinstance(block, ResidualBlock):
                h = torch.relu(h if block.shortcut is None else block.shortcut(h))
            else:
                h = block(h)
    torch.testing.assert_close(model.features(x), h, rtol=0, atol=0)


def test_shapes_follow_the_branch_not_the_shortcut() -> None:
    model = build_cnn(
        (3, 32, 32), 10, block="residual", channels=(16, 32), stride=2, pool="max",
        shortcut="avg", head_pool="avg",
    )  # fmt: skip
    real = model.features(torch.zeros(1, 3, 32, 32)).shape[2:]
    assert output_size(model.features, (32, 32)) == tuple(real) == (2, 2)
    # stage1: conv3 s2 -> 3, conv3 -> 7, pool2 -> 9; stage2 (jump 4): 17, 33 (jump 8), pool: 41
    assert receptive_field(model.features) == (41, 41)
    assert min_input_size(model.features, 2) == (11, 11) and model.min_input_shape == (3, 11, 11)
    rows = {row["name"]: row for row in summary(model, (3, 32, 32)).rows}
    assert rows["features.stage1.pool"]["receptive_field"] == (9, 9)
    with pytest.raises(ValueError, match=r"at least \(11, 11\).*\(2, 3, 10, 12\)"):
        model(torch.zeros(2, 3, 10, 12))
    model(torch.zeros(2, 3, 11, 11))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"depths": (2, 2, 2)}, ValueError, r"`depths`.*2 entries for channels=\(16, 32\)"),
        ({"depths": 0}, ValueError, r"`depths`"),
        ({"block": "bottleneck", "channels": (16, 30)}, ValueError,
         r"`channels`.*divisible by its expansion 4.*channels\[1\]=30.*32 would work"),
        ({"block": "dense"}, ValueError, r"`block`.*'plain', 'residual', 'bottleneck'"),
        ({"block": "plain", "depths": 2}, ValueError, r"`depths`.*one ConvBlock per entry"),
        ({"block": "plain", "preact": True}, ValueError, r"`preact` configure residual"),
        ({"block": "plain", "init": "zero_last"}, ValueError, r"`init` configure residual"),
        ({"padding": "valid"}, ValueError, r"`padding`.*residual blocks.*'same'"),
        ({"order": "norm-act-conv"}, ValueError, r"`order`.*preact=True"),
        ({"stem": (16, 3)}, TypeError, r"`stem`.*\(channels, kernel_size, stride\)"),
        ({"stem": (16, 0, 1)}, ValueError, r"`stem`.*positive ints"),
        ({"shortcut": "pool"}, ValueError, r"`shortcut`.*'conv', 'avg'"),
        ({"drop_path": 1.5}, ValueError, r"`drop_path`"),
        ({"init": "he"}, ValueError, r"`init`.*'kaiming'"),
        ({"stride": 3, "pool": "max", "pool_size": 3}, ValueError,
         r"shrinks to nothing: stage 2 of 2.*\(16, 1, 1\)"),
    ],
)  # fmt: skip
def test_bad_arguments_raise_before_any_work(kwargs: dict, error: type, match: str) -> None:
    args = {"block": "residual", "channels": (16, 32), **kwargs}
    rng = torch.get_rng_state()
    with pytest.raises(error, match=match):
        build_cnn((1, 8, 8), 10, **args)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing was built


def test_dims_4_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`input_shape`.*2, 3 or 4 positive ints"):
        build_cnn((1, 4, 4, 4, 4), 10, block="residual")


FAMILIES = {
    "plain-stem": ((1, 28, 28), {"stem": [8, 5, 2], "channels": (8,), "init": "kaiming"}),
    "resnet20": ((3, 32, 32), RESNET20),
    "bottleneck-3d": (
        (1, 4, 8, 8),
        {"block": "bottleneck", "channels": (8, 16), "depths": (1, 2), "preact": True,
         "shortcut": "avg", "se_reduction": 2, "drop_path": 0.1, "head_pool": "avgmax"},
    ),
    "residual-1d": ((28, 28), {"block": "residual", "channels": (16,), "pool": None}),
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_config_is_plain_data_and_round_trips_in_process(family: str, tmp_path: Path) -> None:
    shape, kwargs = FAMILIES[family]
    model = randomise(build_cnn(shape, 3, **kwargs)).eval()
    assert model.config is not None and model.config["input_shape"] == list(shape)
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_model(tmp_path / "m.pt").eval()
    x = torch.randn(2, *shape)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


FRESH = """
import sys, torch
from convkit import load_model
model = load_model(sys.argv[1]).eval()
torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
"""


@pytest.mark.slow
def test_every_family_round_trips_in_a_fresh_process(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[1] / "src"
    for family, (shape, kwargs) in FAMILIES.items():
        model = randomise(build_cnn(shape, 3, **kwargs)).eval()
        x = torch.randn(2, *shape)
        save_checkpoint(tmp_path / f"{family}.pt", model)
        torch.save(x, tmp_path / "x.pt")
        subprocess.run(
            [sys.executable, "-c", FRESH, tmp_path / f"{family}.pt", tmp_path / "x.pt",
             tmp_path / "y.pt"],
            check=True, env={"PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}, timeout=300,
        )  # fmt: skip
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x), rtol=0, atol=0)


@pytest.mark.slow
def test_residual_cnn_reaches_97_percent_on_bundled_mnist_test_split() -> None:
    from convkit import evaluate, fit, mnist_sample

    train, test = mnist_sample(train=True), mnist_sample(train=False)  # 4,000 / 1,000 images
    torch.manual_seed(0)
    model = build_cnn(
        (1, 28, 28), 10, block="residual", channels=(16, 32), pool="max", hidden=(128,),
        head_dropout=0.3, init="kaiming",
    )  # fmt: skip
    epochs, steps = 5, 5 * 32  # 4,000 images in batches of 128

    def one_cycle(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=steps)

    start = time.perf_counter()
    fit(model, train, epochs=epochs, lr=5e-3, scheduler=one_cycle, progress=False, seed=0,
        device="cpu")  # fmt: skip
    metrics = evaluate(model, test, device="cpu")
    print(f"residual MNIST: {metrics} in {time.perf_counter() - start:.1f} s")
    assert metrics["accuracy"] >= 0.97


def test_feature_table_convkit_column_names_exist() -> None:
    """Every name in the convkit column of the guide's comparison table is real."""
    import inspect
    import re

    import convkit

    page = Path(__file__).resolve().parents[1] / "docs" / "guide" / "residual-blocks.md"
    table = page.read_text(encoding="utf-8").split("## Compared with")[1]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")][2:]
    arguments = {
        name
        for fn in (convkit.ConvBlock, convkit.ResidualBlock, convkit.build_cnn)
        for name in inspect.signature(fn).parameters
    }
    assert len(rows) >= 14
    for row in rows:
        for span in re.findall(r"`([^`]+)`", row[1]):
            name = re.split(r"[=(. ]", span)[0]
            assert hasattr(convkit, name) or name in arguments or name == "convkit", span
