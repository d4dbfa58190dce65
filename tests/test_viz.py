"""convkit.viz on a real CNN trained briefly on the bundled MNIST sample.

Every computed figure is compared with a reference: the kernels with the weights, the
feature maps with a manual forward pass, Grad-CAM with a hand-written Grad-CAM, the
confusion matrix with NumPy counts and the top losses with a sort of per-sample losses.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convkit import ConvBlock, build_cnn, fit, viz
from convkit.shapes import receptive_field
from convkit.viz import Interpretation

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def trained(sample_train: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """A small CNN after one epoch on 2,000 real digits (about 80 % test accuracy)."""
    inputs, targets = sample_train
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(8, 16), pool="max", hidden=())
    fit(model, (inputs[:2000], targets[:2000]), epochs=1, batch_size=64, device="cpu",
        progress=False, seed=0)  # fmt: skip
    return model


@pytest.fixture
def model(trained: nn.Module) -> nn.Module:
    return copy.deepcopy(trained)


@pytest.fixture(scope="module")
def digits(sample_test: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = sample_test
    return inputs[:300], targets[:300]


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------------------- hygiene

CALLS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]] = {
    "plot_filters": lambda m, x, y: viz.plot_filters(m, "features.block2"),
    "feature_maps": lambda m, x, y: viz.feature_maps(m, x[:4]),
    "plot_feature_maps": lambda m, x, y: viz.plot_feature_maps(m, x[0]),
    "grad_cam": lambda m, x, y: viz.grad_cam(m, x[:4]),
    "plot_grad_cam": lambda m, x, y: viz.plot_grad_cam(m, x[:2], target=3),
    "Interpretation": lambda m, x, y: Interpretation.from_model(m, (x, y), batch_size=64),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_modes_buffers_grads_and_hooks_untouched(
    name: str, model: nn.Module, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model.train()
    model.features.block2.eval()  # a mixed state that a plain model.train() would lose
    modes = {n: m.training for n, m in model.named_modules()}
    params = dict(model.named_parameters())
    for i, p in enumerate(params.values()):
        p.grad = torch.randn_like(p) if i % 2 else None
    grads = {k: None if p.grad is None else p.grad.clone() for k, p in params.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    CALLS[name](model, *digits)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    for key, p in params.items():
        before = grads[key]
        assert (p.grad is None) if before is None else torch.equal(p.grad, before), key
    assert _no_hooks(model)


def test_hooks_removed_and_modes_restored_when_forward_fails(model: nn.Module) -> None:
    model.train()
    # 32x32 runs through the conv blocks (hooked) and fails at the head's size check.
    with pytest.raises(ValueError, match="built for inputs of shape"):
        viz.feature_maps(model, torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="built for inputs of shape"):
        viz.grad_cam(model, torch.zeros(1, 32, 32))
    assert _no_hooks(model)
    assert all(m.training for m in model.modules())


# ---------------------------------------------------------------------- feature maps


def test_feature_maps_match_a_manual_forward(model: nn.Module, digits: Any) -> None:
    x = digits[0][:5]
    layers = ["features.block1", "features.block1.norm", "features.block2.conv"]
    maps = viz.feature_maps(model, x, layers)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        block = reference.features.block1
        norm = block.norm(block.conv(x))
        torch.testing.assert_close(maps["features.block1.norm"], norm)
        torch.testing.assert_close(maps["features.block1"], block(x))
        torch.testing.assert_close(
            maps["features.block2.conv"], reference.features.block2.conv(block(x))
        )
    # the in-place ReLU after the norm did not overwrite the recorded norm output
    assert (maps["features.block1.norm"] < 0).any()
    assert list(maps) == layers


def test_a_module_called_twice_records_its_last_call() -> None:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2, self.act = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv2(self.act(self.conv1(x))))

    net, x = Net(), torch.randn(1, 1, 8, 8)
    maps = viz.feature_maps(net, x, ["act", "conv2"])
    torch.testing.assert_close(maps["act"], torch.relu(maps["conv2"]))
    assert list(viz.feature_maps(net, x)) == ["conv1", "conv2"]  # no blocks: the convolutions


def test_plot_feature_maps_draws_one_panel_per_channel(model: nn.Module, digits: Any) -> None:
    fig = viz.plot_feature_maps(model, digits[0][0], max_channels=12)
    images = [len(ax.images) for ax in fig.axes]
    assert len(fig.axes) == 2 * 12  # two conv blocks, 12 columns
    assert sum(images) == 8 + 12  # block1 has 8 channels, block2 16 (12 shown)
    first = fig.axes[0].images[0].get_array()
    expected = viz.feature_maps(model, digits[0][0])["features.block1"][0, 0]
    np.testing.assert_allclose(np.asarray(first), expected.numpy(), rtol=1e-6)
    assert "features.block1" in fig.axes[0].get_ylabel()


def test_plot_feature_maps_rejects_batches_and_flat_layers(model: nn.Module, digits: Any) -> None:
    with pytest.raises(ValueError, match=r"Expected one sample \(C, H, W\).*\(2, 1, 28, 28\)"):
        viz.plot_feature_maps(model, digits[0][:2])
    with pytest.raises(ValueError, match=r"head\.output returned no feature map"):
        viz.plot_feature_maps(model, digits[0][0], ["head.output"])
    with pytest.raises(ValueError, match=r"layers`.*'block9'.*features\.block1"):
        viz.feature_maps(model, digits[0][0], "block9")
    with pytest.raises(TypeError, match="argument `x`"):
        viz.feature_maps(model, digits[0][0].numpy())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ filters


def test_plot_filters_shows_the_kernels_on_a_symmetric_scale(model: nn.Module) -> None:
    weight = model.features.block1.conv.weight.detach()
    fig = viz.plot_filters(model)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 8 and len(fig.axes) == 9  # 8 filters and a colour bar
    np.testing.assert_array_equal(panels[3].images[0].get_array(), weight[3, 0].numpy())
    limit = float(weight.abs().max())
    assert all(ax.images[0].get_clim() == (-limit, limit) for ax in panels)
    # a block name selects its convolution; its 8 input channels tile each panel
    fig = viz.plot_filters(model, "features.block2", max_filters=5)
    array = fig.axes[0].images[0].get_array()
    assert len([ax for ax in fig.axes if ax.images]) == 5
    assert array.shape == (3 * 4 - 1, 3 * 4 - 1)  # a 3x3 grid of 3x3 kernels
    second = model.features.block2.conv.weight.detach()[0, 1]
    np.testing.assert_array_equal(array[0:3, 4:7], second.numpy())


def test_plot_filters_rgb_and_plain_convolutions() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 5)
    fig = viz.plot_filters(conv)  # three input channels: colour by default
    assert len(fig.axes) == 6  # no colour bar
    image = fig.axes[0].images[0].get_array()
    weight = conv.weight.detach()
    limit = weight.abs().max()
    expected = weight[0].permute(1, 2, 0) / (2 * limit) + 0.5
    np.testing.assert_allclose(image, expected.numpy(), rtol=1e-6)
    assert len(viz.plot_filters(conv, rgb=False).axes) == 7
    conv1d = nn.Conv1d(2, 4, 7)
    assert viz.plot_filters(conv1d).axes[0].images[0].get_array().shape == (2, 7)


def test_plot_filters_errors_name_the_valid_choices(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"rgb=True needs a 2-D convolution with 3 input"):
        viz.plot_filters(model, rgb=True)
    with pytest.raises(ValueError, match=r"'conv9'.*features\.block1\.conv"):
        viz.plot_filters(model, "conv9")
    with pytest.raises(ValueError, match=r"exactly one.*'features'.*features\.block1\.conv"):
        viz.plot_filters(model, "features")
    with pytest.raises(TypeError, match="model_or_conv"):
        viz.plot_filters("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="without one"):
        viz.plot_filters(nn.Linear(3, 4))


# ----------------------------------------------------------------------------- Grad-CAM


def _reference_cam(
    head: Callable[[torch.Tensor], torch.Tensor], activation: torch.Tensor, classes: Any
) -> torch.Tensor:
    """Grad-CAM by hand: dy_c/dA, mean per channel, weighted sum, ReLU, upsampling."""
    activation = activation.detach().requires_grad_()
    logits = head(activation)
    if classes is None:
        classes = logits.argmax(1)
    score = logits[torch.arange(len(logits)), classes].sum()
    (grads,) = torch.autograd.grad(score, activation)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(1, keepdim=True)).detach()
    return F.interpolate(cam, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]


def test_grad_cam_matches_a_hand_computed_grad_cam(model: nn.Module, digits: Any) -> None:
    x = digits[0][:6]
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        a1 = ref.features.block1(x)
        a2 = ref.features.block2(a1)
    expected = _reference_cam(lambda a: ref.head(ref.flatten(a)), a2, None)
    cam = viz.grad_cam(model, x)  # default layer: the last conv block
    torch.testing.assert_close(cam, expected)
    assert cam.amax(dim=(1, 2)).gt(0).sum() >= 3  # not trivially zero
    expected = _reference_cam(lambda a: ref.head(ref.flatten(ref.features.block2(a))), a1, 7)
    torch.testing.assert_close(viz.grad_cam(model, x, target=7, layer="features.block1"), expected)
    single = viz.grad_cam(model, x[2], target=[7], layer=model.features.block1)
    torch.testing.assert_close(single, expected[2])


def test_grad_cam_works_with_frozen_parameters_and_under_no_grad(
    model: nn.Module, digits: Any
) -> None:
    x = digits[0][:3]
    expected = viz.grad_cam(model, x)
    model.requires_grad_(False)
    with torch.no_grad():
        torch.testing.assert_close(viz.grad_cam(model, x), expected)


def test_grad_cam_for_any_module_and_1d_convolutions() -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 4, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14, 3))  # fmt: skip
    x = torch.randn(5, 2, 16)
    cam = viz.grad_cam(seq, x, target=1)  # default: the last convolution, "2"
    activation = seq[:3](x).detach().requires_grad_()
    score = seq[3:](activation)[:, 1].sum()
    (grads,) = torch.autograd.grad(score, activation)
    expected = torch.relu((grads.mean(2, keepdim=True) * activation).sum(1, keepdim=True))
    expected = F.interpolate(expected.detach(), size=16, mode="linear", align_corners=False)
    torch.testing.assert_close(cam, expected[:, 0])


def test_default_layers_are_the_outermost_blocks_such_as_residual_blocks() -> None:
    from convkit import ResidualBlock

    torch.manual_seed(0)
    seq = nn.Sequential(ConvBlock(1, 4), nn.Sequential(ResidualBlock(4, 8, stride=2)),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()  # fmt: skip
    x = torch.randn(2, 1, 12, 12)
    assert list(viz.feature_maps(seq, x)) == ["0", "1.0"]  # not conv1/conv2/shortcut inside
    activation = seq[:2](x).detach().requires_grad_()
    logits = seq[2:](activation)
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (grads,) = torch.autograd.grad(score, activation)
    expected = torch.relu((grads.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True))
    expected = F.interpolate(expected.detach(), size=(12, 12), mode="bilinear")
    torch.testing.assert_close(viz.grad_cam(seq, x), expected[:, 0])
    # a flat Sequential of layers has no blocks: its convolutions stand in
    flat = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    assert list(viz.feature_maps(flat, x)) == ["0", "2"]


def test_grad_cam_errors(model: nn.Module, digits: Any) -> None:
    x = digits[0][:2]
    with pytest.raises(ValueError, match=r"class indices in \[0, 9\]. Received \[10, 10\]"):
        viz.grad_cam(model, x, target=10)
    with pytest.raises(ValueError, match=r"one class index per sample \(2\)"):
        viz.grad_cam(model, x, target=[1, 2, 3])
    with pytest.raises(TypeError, match="argument `target`"):
        viz.grad_cam(model, x, target=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"spatial outputs.*flatten gave shape \(2, 784\)"):
        viz.grad_cam(model, x, layer="flatten")
    with pytest.raises(ValueError, match=r"Valid names: .*features\.block2"):
        viz.grad_cam(model, x, layer="features.block3")
    with pytest.raises(ValueError, match=r"argument `alpha`"):
        viz.plot_grad_cam(model, x, alpha=2)


def test_plot_grad_cam_overlays_each_image(model: nn.Module, digits: Any) -> None:
    x = digits[0][:3]
    fig = viz.plot_grad_cam(model, x)
    assert [len(ax.images) for ax in fig.axes] == [2, 2, 2]
    heat = np.asarray(fig.axes[1].images[1].get_array())
    cam = viz.grad_cam(model, x[1])
    np.testing.assert_allclose(heat, (cam / cam.max()).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), x[1, 0].numpy())
    predicted = model.eval()(x).argmax(1).tolist()
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == [f"class {c}" for c in predicted]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grad_cam_and_interpretation_on_cuda(model: nn.Module, digits: Any) -> None:
    x, y = digits
    expected = viz.grad_cam(model, x[:4])
    on_cpu = Interpretation.from_model(model, (x, y))
    model.cuda()
    cam = viz.grad_cam(model, x[:4])
    assert cam.device.type == "cuda"
    torch.testing.assert_close(cam.cpu(), expected, atol=1e-4, rtol=1e-3)
    interp = Interpretation.from_model(model, (x, y))
    assert torch.equal(interp.confusion, on_cpu.confusion)


# ------------------------------------------------------------------------ Interpretation


def _numpy_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        logits = ref(x)
    predicted = logits.argmax(1).numpy()
    counts = np.zeros((10, 10), dtype=np.int64)
    np.add.at(counts, (y.numpy(), predicted), 1)
    losses = F.cross_entropy(logits, y, reduction="none").numpy()
    return counts, losses, predicted, logits.softmax(1).max(1).values.numpy()


def test_interpretation_matches_numpy(model: nn.Module, digits: Any) -> None:
    x, y = digits
    counts, losses, predicted, probs = _numpy_reference(model, x, y)
    interp = Interpretation.from_model(model, (x, y), batch_size=64)  # 300 = 4x64 + 44
    np.testing.assert_array_equal(interp.confusion.numpy(), counts)
    assert 0.6 < np.trace(counts) / 300 < 1.0  # a trained model, mistakes included
    np.testing.assert_allclose(interp.losses.numpy(), losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(interp.predictions.numpy(), predicted)
    np.testing.assert_array_equal(interp.targets.numpy(), y.numpy())
    np.testing.assert_allclose(interp.probabilities.numpy(), probs, rtol=1e-5)
    normalised = interp.confusion_matrix(normalize=True).numpy()
    np.testing.assert_allclose(normalised, counts / counts.sum(1, keepdims=True))
    table = interp.per_class()
    np.testing.assert_allclose(table.precision, np.diag(counts) / counts.sum(0))
    np.testing.assert_allclose(table.recall, np.diag(counts) / counts.sum(1))
    assert table.support == counts.sum(1).tolist()
    assert str(table).splitlines()[0].split() == ["class", "precision", "recall", "support"]


def test_most_confused_lists_the_off_diagonal_counts(model: nn.Module, digits: Any) -> None:
    x, y = digits
    counts, _, _, _ = _numpy_reference(model, x, y)
    interp = Interpretation.from_model(model, (x, y))
    expected = sorted(
        ((str(i), str(j), int(counts[i, j])) for i in range(10) for j in range(10)
         if i != j and counts[i, j] >= 2),
        key=lambda t: -t[2],
    )  # fmt: skip
    got = interp.most_confused(min_count=2)
    assert sorted(got) == sorted(expected) and [c for *_, c in got] == [c for *_, c in expected]
    assert got and sum(c for *_, c in interp.most_confused()) == 300 - np.trace(counts)


def test_class_table_marks_classes_never_predicted() -> None:
    confusion = torch.tensor([[3, 0, 1], [2, 0, 0], [0, 0, 0]])
    interp = Interpretation(confusion, *[torch.zeros(6)] * 4, classes=["a", "b", "c"],
                            sample=lambda i: torch.zeros(1, 2, 2))  # fmt: skip
    table = interp.per_class()
    assert table.precision[0] == 0.6 and np.isnan(table.precision[1])
    assert table.recall == [0.75, 0.0, table.recall[2]] and np.isnan(table.recall[2])
    assert str(table).splitlines()[2].split() == ["b", "n/a", "0.000", "2"]


def test_top_losses_are_the_sorted_per_sample_losses(model: nn.Module, digits: Any) -> None:
    x, y = digits
    _, losses, _, _ = _numpy_reference(model, x, y)
    interp = Interpretation.from_model(model, (x, y))
    values, indices = interp.top_losses(7)
    np.testing.assert_allclose(values.numpy(), np.sort(losses)[::-1][:7], rtol=1e-5)
    np.testing.assert_allclose(losses[indices.numpy()], values.numpy(), rtol=1e-5)
    assert len(interp.top_losses(1000)[0]) == 300


def test_interpretation_reads_back_to_the_host_once(
    model: nn.Module, digits: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = digits
    calls = {"cpu": 0, "item": 0, "tolist": 0, "__bool__": 0}

    def counting(name: str) -> Any:
        original = getattr(torch.Tensor, name)

        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    Interpretation.from_model(model, (x, y), batch_size=32)  # 10 batches
    assert calls == {"cpu": 1, "item": 0, "tolist": 0, "__bool__": 0}


def test_interpretation_takes_datasets_and_loaders_alike(model: nn.Module, digits: Any) -> None:
    x, y = digits
    by_pair = Interpretation.from_model(model, (x, y))
    for data in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=50)):
        other = Interpretation.from_model(model, data)
        assert torch.equal(other.confusion, by_pair.confusion)
        torch.testing.assert_close(other.losses, by_pair.losses)


def test_interpretation_errors(model: nn.Module, digits: Any) -> None:
    x, y = digits
    with pytest.raises(ValueError, match="shuffle=False"):
        Interpretation.from_model(model, DataLoader(TensorDataset(x, y), shuffle=True))
    with pytest.raises(ValueError, match=r"2 targets are outside.*\[0, 9\]"):
        Interpretation.from_model(model, (x[:4], torch.tensor([1, 10, 3, -1])))
    with pytest.raises(ValueError, match="Expected 10 names"):
        Interpretation.from_model(model, (x, y), classes=["a", "b"])
    with pytest.raises(ValueError, match="300 inputs but 299 targets"):
        Interpretation.from_model(model, (x, y[:-1]))
    with pytest.raises(ValueError, match="class indices of shape"):
        Interpretation.from_model(model, (x, y.float()))
    with pytest.raises(ValueError, match="no samples"):
        Interpretation.from_model(model, (x[:0], y[:0]))
    with pytest.raises(TypeError, match="argument `data`"):
        Interpretation.from_model(model, [1, 2, 3])
    with pytest.raises(ValueError, match=r"scores of shape \(N, classes\).*\(4, 8, 14, 14\)"):
        Interpretation.from_model(model.features.block1, (x[:4], y[:4]))


def test_confusion_and_top_loss_figures(model: nn.Module, digits: Any) -> None:
    x, y = digits
    names = [f"d{i}" for i in range(10)]
    interp = Interpretation.from_model(model, (x, y), classes=names)
    fig = viz.plot_confusion_matrix(interp, normalize=True)
    np.testing.assert_allclose(
        fig.axes[0].images[0].get_array(), interp.confusion_matrix(normalize=True).numpy()
    )
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == names
    fig = viz.plot_top_losses(interp, 5)
    _, indices = interp.top_losses(5)
    assert len(fig.axes) == 5
    for ax, i in zip(fig.axes, indices.tolist(), strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), x[i, 0].numpy())
        true, pred = names[y[i]], names[interp.predictions[i]]
        assert ax.get_title().startswith(f"true {true}, pred {pred}\n")
    with pytest.raises(TypeError, match=r"Interpretation\.from_model"):
        viz.plot_top_losses((x, y))  # type: ignore[arg-type]


def test_missing_matplotlib_names_the_extra(
    model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "torch-convkit\[plot\]"'):
        viz.plot_filters(model)


# ------------------------------------------------------------------------- History.plot


def test_history_plot_has_integer_epoch_ticks_and_one_axes_per_metric() -> None:
    from convkit import History

    history = History()
    for epoch, (loss, acc) in enumerate([(1.2, 0.6), (0.7, 0.8), (0.5, 0.85)], start=1):
        history.append(epoch, {"loss": loss, "accuracy": acc, "val_loss": loss + 0.1,
                               "val_accuracy": acc - 0.05}, seconds=1.0)  # fmt: skip
    fig = history.plot()
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
    for ax in fig.axes:
        assert [line.get_label() for line in ax.lines] == ["train", "validation"]
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks == [1, 2, 3] and all(float(t).is_integer() for t in ax.get_xticks())


# ----------------------------------------------------------------------- receptive field


def _footprint(
    features: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], position: Any
) -> tuple[int, int, int, int]:
    """Bounding box (top, left, height, width) of the input pixels with a non-zero gradient."""
    torch.manual_seed(1)
    x = torch.randn(1, *shape, requires_grad=True)
    (grad,) = torch.autograd.grad(features(x)[0, :, position[0], position[1]].sum(), x)
    rows = grad[0].abs().sum(0).sum(1).nonzero()[:, 0]
    cols = grad[0].abs().sum(0).sum(0).nonzero()[:, 0]
    top, left = int(rows.min()), int(cols.min())
    return top, left, int(rows.max()) - top + 1, int(cols.max()) - left + 1


def _clip(region: tuple[int, int, int, int], size: int) -> tuple[int, int, int, int]:
    top, left, h, w = region
    bottom, right = min(top + h, size), min(left + w, size)
    return max(top, 0), max(left, 0), bottom - max(top, 0), right - max(left, 0)


CHAINS = {
    "pad-pool-stride-dilation": lambda: nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.AvgPool2d(2),
        nn.Conv2d(2, 2, 3, stride=2, dilation=2, padding=2),
        nn.Conv2d(2, 3, (3, 5), padding=(0, 1)),
    ),
    "same-even-kernel-stride": lambda: nn.Sequential(
        ConvBlock(1, 2, 4, stride=2, norm=None, act=None),
        ConvBlock(2, 2, 3, padding="same", norm=None, act=None, pool="avg"),
    ),
}


@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_receptive_field_region_is_the_gradient_footprint(chain: str, where: str) -> None:
    torch.manual_seed(0)
    model = CHAINS[chain]()  # linear layers only: every pixel in the field gets a gradient
    shape = (1, 30, 30)
    out_h, out_w = model(torch.zeros(1, *shape)).shape[2:]
    position = {"first": (0, 0), "middle": (out_h // 2, out_w // 2),
                "last": (out_h - 1, out_w - 1)}[where]  # fmt: skip
    last = str(len(model) - 1)
    region = viz.receptive_field_region(model, shape, position, layer=last)
    assert _clip(region, 30) == _footprint(model, shape, position)


def test_receptive_field_of_the_trained_cnn_covers_its_gradient(model: nn.Module) -> None:
    features = copy.deepcopy(model).eval().features
    region = viz.receptive_field_region(model, (1, 28, 28), (3, 4))  # last block, 7x7 output
    assert region[2:] == receptive_field(features) == (10, 10)
    top, left, h, w = _footprint(features, (1, 28, 28), (3, 4))
    c_top, c_left, c_h, c_w = _clip(region, 28)
    # max-pooling and ReLU pass gradients to some pixels only: inside the field
    assert c_top <= top and c_left <= left and top + h <= c_top + c_h and left + w <= c_left + c_w


def test_plot_receptive_field_outlines_the_region(model: nn.Module, digits: Any) -> None:
    image = digits[0][0]
    fig = viz.plot_receptive_field(model, (1, 28, 28), (0, 6), image=image)
    top, left, h, w = viz.receptive_field_region(model, (1, 28, 28), (0, 6))
    # rows -1..6: the first conv reads one row of zero padding above the image; the
    # second conv's padding depends on no pixel, so the field ends there (8, not 10)
    assert (top, left, h, w) == (-1, 21, 8, 8)
    solid, dashed = fig.axes[0].patches
    box = (solid.get_y() + 0.5, solid.get_x() + 0.5, solid.get_height(), solid.get_width())
    assert box == (0, 21, 7, 7)  # the part inside the image
    assert (dashed.get_y() + 0.5, dashed.get_x() + 0.5) == (top, left) and dashed.get_ls() == "--"
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), image[0].numpy())
    assert np.argwhere(np.asarray(fig.axes[1].images[0].get_array()) == 1).tolist() == [[0, 6]]


def test_receptive_field_errors(model: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"position`.*7x7 output.*Received position=\(7, 0\)"):
        viz.receptive_field_region(model, (1, 28, 28), (7, 0))
    with pytest.raises(
        ValueError, match=r"input_shape`.*\(C, H, W\).*Received input_shape=\(28, 28\)"
    ):
        viz.receptive_field_region(model, (28, 28), (0, 0))
    with pytest.raises(ValueError, match=r"2-D feature maps; head\.output"):
        viz.receptive_field_region(model, (1, 28, 28), (0, 0), layer="head.output")
    with pytest.raises(ValueError, match=r"1-D/3-D layers: 0"):
        viz.receptive_field_region(nn.Sequential(nn.Conv1d(1, 1, 3)), (1, 8, 8), (0, 0))
    with pytest.raises(ValueError, match=r"image`.*\(1, 28, 28\).*\(28, 28\)"):
        viz.plot_receptive_field(model, (1, 28, 28), (0, 0), image=torch.zeros(28, 28))


@pytest.mark.slow
def test_visualise_example_writes_its_figures(tmp_path: Any) -> None:
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "visualise_cnn.py"
    result = subprocess.run(
        [sys.executable, str(script), "--epochs", "1", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    names = {"filters", "feature-maps", "grad-cam", "receptive-field", "confusion-matrix",
             "top-losses"}  # fmt: skip
    assert {p.stem for p in tmp_path.glob("*.png")} == names
    assert "class  precision  recall  support" in result.stdout


def test_1d_and_3d_models_plot_their_filters_and_feature_maps() -> None:
    torch.manual_seed(0)
    net1 = nn.Sequential(nn.Conv1d(2, 3, 5), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 12, 4))
    x1 = torch.randn(2, 16)  # one (C, L) sample
    fig = viz.plot_feature_maps(net1, x1)
    assert [len(ax.lines) for ax in fig.axes] == [1, 1, 1]  # a curve per channel
    expected = viz.feature_maps(net1, x1)["0"][0, 2].numpy()
    np.testing.assert_allclose(fig.axes[2].lines[0].get_ydata(), expected)
    net3 = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4 * 4, 3))
    x3 = torch.randn(1, 6, 6, 6)
    maps = viz.feature_maps(net3, x3)["0"]  # (1, 2, 4, 4, 4)
    fig = viz.plot_feature_maps(net3, x3)
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), maps[0, 1, 2].numpy())
    assert viz.grad_cam(net3, x3, target=2).shape == (6, 6, 6)
    image = viz.plot_filters(net3).axes[0].images[0].get_array()
    assert image.shape == (3, 3 * 4 - 1)  # one input channel: its 3 depth slices side by side
    np.testing.assert_array_equal(image[:, 4:7], net3[0].weight.detach()[0, 0, 1].numpy())


@pytest.mark.parametrize("shape", [(2, 16), (1, 8, 8, 8)], ids=["1d", "3d"])
def test_build_cnn_in_1d_and_3d_has_blocks_feature_maps_and_grad_cam(
    shape: tuple[int, ...],
) -> None:
    torch.manual_seed(0)
    net = build_cnn(shape, 4, channels=(3, 5), hidden=())
    x = torch.randn(2, *shape)
    maps = viz.feature_maps(net, x)
    assert list(maps) == ["features.block1", "features.block2"]
    assert maps["features.block2"].shape[:2] == (2, 5)
    assert viz.grad_cam(net, x).shape == (2, *shape[1:])
    assert _no_hooks(net)


# ---------------------------------------------------------------------------- layering

VIZ_MODULES = {"viz", "_hooks", "_interpretation", "_plotting", "_receptive"}
TRAINING_SIDE = {"training", "_loop", "_epochs", "_optim", "history", "callbacks", "_data",
                 "_data_check", "_runtime", "_distributed", "_metrics", "_tasks"}  # fmt: skip


def _convkit_imports(path: Any) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("convkit"):
            names.add((node.module or "").removeprefix("convkit").strip(".") or "convkit")
    return names


def test_viz_sits_above_both_halves() -> None:
    from pathlib import Path

    import convkit

    src = Path(convkit.__file__).parent
    for path in src.glob("*.py"):
        imported = _convkit_imports(path)
        if path.stem in VIZ_MODULES:
            assert not imported & TRAINING_SIDE, (path.name, imported & TRAINING_SIDE)
        elif path.stem != "__init__":
            assert not imported & VIZ_MODULES, (path.name, imported & VIZ_MODULES)


# ------------------------------------------------- the same batching path as fit and predict


def test_uint8_images_are_scaled_as_fit_scales_them(model: nn.Module, digits: Any) -> None:
    x, y = digits
    raw = (x * 255).round().to(torch.uint8)  # images as stored: 0..255
    scaled = raw.float() / 255
    maps = viz.feature_maps(model, raw[0])
    expected = viz.feature_maps(model, scaled[0])
    assert maps.keys() == expected.keys()
    for name in maps:
        torch.testing.assert_close(maps[name], expected[name])
    torch.testing.assert_close(viz.grad_cam(model, raw[:3]), viz.grad_cam(model, scaled[:3]))
    from_raw = Interpretation.from_model(model, (raw, y))
    from_float = Interpretation.from_model(model, (scaled, y))
    assert torch.equal(from_raw.confusion, from_float.confusion)
    torch.testing.assert_close(from_raw.losses, from_float.losses)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused_naming_the_sample(
    model: nn.Module, digits: Any, bad: float
) -> None:
    x, y = digits
    x = x.clone()
    x[7, 0, 3, 3] = bad
    with pytest.raises(ValueError, match=r"`data`: 1 sample\(s\) hold NaN or inf .*index 7"):
        Interpretation.from_model(model, (x, y))
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    with pytest.raises(ValueError, match=r"`data`: 1 sample\(s\) .*index 7"):
        Interpretation.from_model(model, loader)
    for draw in (viz.feature_maps, viz.grad_cam):
        with pytest.raises(ValueError, match=r"`x`: 1 sample\(s\) hold NaN or inf"):
            draw(model, x[7])
