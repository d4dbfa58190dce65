"""Errors whose suggested fix is right: each test reads the advice in the message, follows
it, and checks that the run then works."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from convkit import build_cnn, export, fit, lr_find, predict

CPU = {"device": "cpu", "progress": False, "epochs": 1}


def test_1d_inputs_without_a_channel_axis_get_x_none() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 128), 3, channels=(4,), hidden=())
    x, y = torch.randn(64, 128), torch.arange(64) % 3
    with pytest.raises(ValueError, match=r"no channel axis; add it: x\[:, None\]") as err:
        fit(model, (x, y), **CPU)
    assert "input_shape=(128,)" not in str(err.value)  # build_cnn((128,), 3) is refused
    with pytest.raises(ValueError, match=r"`input_shape`. Expected 2, 3 or 4"):
        build_cnn((128,), 3)
    assert len(fit(model, (x[:, None], y), **CPU)) == 1  # the advice works


def test_keras_style_uint8_images_get_x_none_not_a_1d_model() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    x = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    y = np.arange(64) % 10
    with pytest.raises(ValueError, match=r"no channel axis; add it: x\[:, None\]") as err:
        fit(model, (x, y), **CPU)
    assert "input_shape=(28, 28)" not in str(err.value)
    assert len(fit(model, (x[:, None], y), **CPU)) == 1


def test_one_channels_last_image_gets_permute_for_predict() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    image = torch.rand(28, 28, 1)
    with pytest.raises(ValueError, match=r"one channels-last image .*image\.permute\(2, 0, 1\)"):
        predict(model, image)
    assert predict(model, image.permute(2, 0, 1)).shape == (10,)


class PILDigits(Dataset):  # a dataset that forgot transforms.ToTensor()
    def __init__(self, transform=None) -> None:  # type: ignore[no-untyped-def]
        from convkit import mnist_sample

        self.x, self.y = mnist_sample().tensors
        self.transform = transform

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        from PIL import Image

        image = Image.fromarray((self.x[i, 0] * 255).byte().numpy())
        return (self.transform(image) if self.transform else image), int(self.y[i])


def test_a_dataset_of_pil_images_names_the_transform() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"returns PIL images .*transforms\.ToTensor\(\)"):
        fit(model, PILDigits(), **CPU)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(fit(model, PILDigits(transforms.ToTensor()), **CPU)) == 1


def test_predict_on_one_pil_image_names_to_tensor() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    image, _ = PILDigits()[0]
    with pytest.raises(TypeError, match=r"`data`: a PIL image .*transforms\.ToTensor\(\)\(image\)"):
        predict(model, image)
    assert predict(model, transforms.ToTensor()(image)).shape == (10,)


def test_labels_in_a_python_list_get_torch_tensor() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    x, labels = torch.rand(16, 1, 28, 28), [i % 10 for i in range(16)]
    with pytest.raises(TypeError, match=r"\(Tensor, list\).*\(inputs, torch\.tensor\(targets\)\)"):
        fit(model, (x, labels), **CPU)
    assert len(fit(model, (x, torch.tensor(labels)), **CPU)) == 1


def test_one_sample_with_batchnorm_says_why_and_what_to_pass() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=(8,), head_norm="batch")
    x, y = torch.rand(1, 1, 28, 28), torch.tensor([3])
    with pytest.raises(ValueError, match=r"1 sample, and the model's BatchNorm .*torch\.cat"):
        fit(model, (x, y), **CPU)
    history = fit(model, (torch.cat([x, x]), torch.cat([y, y])), **{**CPU, "epochs": 20})
    assert history["loss"][-1] < history["loss"][0]  # the overfit-one-batch check works


@pytest.mark.parametrize("form", ["tensors", "loader"])
def test_batches_of_one_sample_with_batchnorm_say_why_and_what_to_pass(form: str) -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    before = _weights(model)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)

    def data(batch_size: int) -> Any:
        if form == "loader":
            return DataLoader(TensorDataset(x, y), batch_size=batch_size), {}
        return (x, y), {"batch_size": batch_size}

    train, kwargs = data(1)
    argument, advice = {
        "tensors": ("batch_size", r"Pass batch_size=2 or more"),
        "loader": ("train_data", r"Make it with DataLoader\(\.\.\., batch_size=2\) or more"),
    }[form]
    with pytest.raises(
        ValueError,
        match=rf"`{argument}`: every training batch holds 1 sample .*BatchNorm.*{advice}",
    ):
        fit(model, train, **kwargs, **CPU)
    assert _same(model, before)
    train, kwargs = data(2)
    assert len(fit(model, train, **kwargs, **CPU)) == 1


def test_drop_last_that_leaves_no_batch_says_so() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    x, y = torch.rand(10, 1, 28, 28), torch.arange(10)
    with pytest.raises(ValueError, match=r"10 samples make no full batch of batch_size=128"):
        fit(model, (x, y), drop_last=True, **CPU)
    assert len(fit(model, (x, y), drop_last=True, batch_size=10, **CPU)) == 1


def test_float64_numpy_labels_are_reported_with_their_own_dtype() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    y = (np.arange(64) % 10).astype(np.float64)
    with pytest.raises(ValueError, match=r"pass targets\.long\(\).*passed as torch\.float64"):
        fit(model, (x, y), **CPU)
    assert len(fit(model, (x, y.astype(np.int64)), **CPU)) == 1


def test_advice_on_numpy_targets_is_numpy_code_that_works() -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    classifier = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    labels = (np.arange(64) % 10).astype(np.float64)
    with pytest.raises(ValueError, match=r"\(NumPy: targets\.astype\(np\.int64\)\)"):
        fit(classifier, (x, labels), **CPU)
    assert len(fit(classifier, (x, labels.astype(np.int64)), **CPU)) == 1
    regressor = build_cnn((1, 28, 28), 1, channels=(4,), hidden=())
    values = x.mean(axis=(1, 2, 3))  # shape (64,) for one output per sample
    with pytest.raises(ValueError, match=r"\(NumPy: targets\[:, None\]\)"):
        fit(regressor, (x, values), task="regression", **CPU)
    assert len(fit(regressor, (x, values[:, None]), task="regression", **CPU)) == 1


@pytest.mark.parametrize("call", ["fit", "lr_find", "export"])
def test_a_lazy_layer_without_weights_gets_one_batch_first(call: str, tmp_path: Any) -> None:
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32) % 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    run = {
        "fit": lambda: fit(model, (x, y), **CPU),
        "lr_find": lambda: lr_find(model, (x, y), num_iter=10, device="cpu"),
        "export": lambda: export(model, tmp_path / "m.pt2", input_shape=(1, 8, 8)),
    }[call]
    with pytest.raises(
        ValueError, match=r"`model`: layer '1' \(LazyLinear\) is lazy .*model\(x\[:2\]\)"
    ):
        run()
    model(x[:2])  # the advice
    run()
    assert model[1].weight.shape == (3, 64)


# ------------------------------------------- raw torch errors that become clear, up front


class Segmenter(nn.Module):
    """Per-pixel scores (N, 3, H, W) for 3 classes, no input_shape attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_segmentation_label_outside_the_classes_is_refused_before_training() -> None:
    torch.manual_seed(0)
    model, x = Segmenter(), torch.rand(8, 1, 8, 8)
    labels = torch.randint(0, 3, (8, 8, 8))
    labels[5, 2, 2] = 4
    before = _weights(model)
    with pytest.raises(ValueError, match=r"target 4 is outside \[0, 3\) for a model with 3"):
        fit(model, (x, labels), **CPU)
    assert _same(model, before)
    assert len(fit(model, (x, labels.clamp(max=2)), **CPU)) == 1


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (nn.CrossEntropyLoss(reduction="none"), r"reduction='none'.*one number per batch"),
        (lambda o, t: (o - o).sum(1), r"returns \(8,\) for a batch, not one number"),
        (nn.ReLU(), r"ReLU\(\) fails on the first batch as loss\(outputs, targets\)"),
    ],
)
def test_a_loss_that_cannot_train_is_refused_before_training(loss: Any, message: str) -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 8, 8), 3, channels=(4,), hidden=())
    before = _weights(model)
    with pytest.raises(ValueError, match=message):
        fit(model, (torch.rand(8, 1, 8, 8), torch.arange(8) % 3), loss=loss, **CPU)
    assert _same(model, before)


def test_a_model_with_nothing_to_train_is_refused() -> None:
    torch.manual_seed(0)
    data = (torch.rand(8, 1, 8, 8), torch.arange(8) % 3)
    frozen = build_cnn((1, 8, 8), 3, channels=(4,), hidden=())
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match=r"`model`: all \d+ parameter tensors are frozen"):
        fit(frozen, data, **CPU)
    with pytest.raises(ValueError, match=r"`model`: it has no parameters"):
        fit(nn.Sequential(nn.Flatten(), nn.Identity()), data, **CPU)
    frozen.requires_grad_(True)
    assert len(fit(frozen, data, **CPU)) == 1


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.linear(x.flatten(1)), x.mean()


class Named(Pair):
    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return {"logits": self.linear(x.flatten(1))}


class Pick(nn.Module):
    def __init__(self, key: object) -> None:
        super().__init__()
        self.key = key

    def forward(self, outputs):  # type: ignore[no-untyped-def]
        return outputs[self.key]


@pytest.mark.parametrize(
    ("model", "message", "key"),
    [
        (Pair(), r"returned a tuple of 2 items; .*returns outputs\[0\]", 0),
        (Named(), r"returned a dict with keys \['logits'\]; .*outputs\['logits'\]", "logits"),
    ],
)
def test_predict_on_a_model_returning_a_tuple_or_dict_says_how_to_wrap_it(
    model: nn.Module, message: str, key: object
) -> None:
    x = torch.rand(5, 1, 8, 8)
    with pytest.raises(TypeError, match=message):
        predict(model, x, device="cpu")
    assert predict(nn.Sequential(model, Pick(key)), x, device="cpu").shape == (5, 3)


def test_inputs_on_the_meta_device_are_refused() -> None:
    model = build_cnn((1, 8, 8), 3, channels=(4,), hidden=())
    x = torch.empty(8, 1, 8, 8, device="meta")
    with pytest.raises(ValueError, match=r"on the meta device, which holds shapes but no values"):
        fit(model, (x, torch.arange(8) % 3), **CPU)
