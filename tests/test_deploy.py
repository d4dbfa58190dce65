"""export: ONNX files run in onnxruntime and .pt2 programs give the eager model's outputs.

Outputs are compared with ``ATOL``: float32 ONNX kernels sum in another order than
PyTorch's (the largest difference measured on these networks is below 1e-6).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from convkit import build_cnn, export
from convkit.checkpoints.files import temp_path
from helpers import NOTEBOOK

#: The tolerance between onnxruntime's (or the program's) outputs and the eager model's.
ATOL = 1e-5


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], list[int]]:
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return tensors, [m.training for m in model.modules()], [id(p) for p in model.parameters()]


def _assert_untouched(model: nn.Module, before: Any) -> None:
    tensors, modes, ids = _snapshot(model)
    assert tensors.keys() == before[0].keys()
    assert all(torch.equal(tensors[k], before[0][k]) for k in tensors)
    assert modes == before[1]  # every submodule's train/eval flag
    assert ids == before[2]


def _onnx_outputs(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {"input": inputs.numpy()})
    return torch.from_numpy(outputs)


def _eager(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    training = model.training
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    model.train(training)
    return outputs


NETWORKS = {
    "readme": lambda: build_cnn((1, 28, 28), 10, **NOTEBOOK),
    "residual": lambda: build_cnn((3, 32, 32), 5, channels=(8, 16), block="residual"),
    "1d": lambda: build_cnn((2, 64), 3, channels=(8, 16), hidden=(16,), dropout=0.1),
    "3d": lambda: build_cnn((1, 8, 16, 16), 4, channels=(4, 8)),
}


def _trained_looking(name: str) -> nn.Module:
    """A network whose BatchNorm statistics aren't the defaults (so eval mode matters)."""
    torch.manual_seed(0)
    model = NETWORKS[name]()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.train()
    model.features[0].eval()  # a mix of modes: each one must survive the export
    return model


# ------------------------------------------------------------------------- ONNX


def _check_onnx(model: nn.Module, path: Path) -> None:
    before = _snapshot(model)
    assert export(model, path) == path
    _assert_untouched(model, before)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["batch", *model.input_shape]]
    assert [o.shape for o in session.get_outputs()] == [["batch", model.num_classes]]
    for batch in (1, 5):  # one file, any batch size
        inputs = torch.randn(batch, *model.input_shape)
        outputs = _onnx_outputs(path, inputs)
        assert outputs.shape == (batch, model.num_classes)
        torch.testing.assert_close(outputs, _eager(model, inputs), atol=ATOL, rtol=0)
    assert not temp_path(path).exists()


def test_onnx_of_a_small_1d_network_runs_in_onnxruntime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_cnn((2, 32), 3, channels=(4,), hidden=())
    _check_onnx(model, tmp_path / "net.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_onnx_matches_the_eager_model(name: str, tmp_path: Path) -> None:
    _check_onnx(_trained_looking(name), tmp_path / f"{name}.onnx")


@pytest.mark.slow
def test_a_fixed_batch_onnx_file_takes_only_one_sample(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_cnn((2, 32), 3, channels=(4,), hidden=())
    export(model, tmp_path / "fixed.onnx", dynamic_batch=False)
    export(model, tmp_path / "dynamic.onnx")

    def batch_dim(name: str) -> Any:
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        return session.get_inputs()[0].shape[0]

    assert batch_dim("fixed.onnx") == 1
    assert batch_dim("dynamic.onnx") == "batch"  # a named, symbolic dimension
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=r"dimension"):
        _onnx_outputs(tmp_path / "fixed.onnx", torch.randn(5, 2, 32))


# ---------------------------------------------------------------- torch.export


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_pt2_program_loads_back_with_the_same_outputs(name: str, tmp_path: Path) -> None:
    model = _trained_looking(name)
    before = _snapshot(model)
    path = export(model, tmp_path / f"{name}.pt2", input_shape=model.input_shape)
    _assert_untouched(model, before)
    program = torch.export.load(path).module()
    for batch in (1, 5):
        inputs = torch.randn(batch, *model.input_shape)
        torch.testing.assert_close(program(inputs), _eager(model, inputs), atol=ATOL, rtol=0)


@pytest.mark.slow  # torch.compile's first use imports dynamo
def test_a_compiled_model_exports_the_module_it_wraps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_cnn((2, 32), 3, channels=(4,), hidden=())
    path = export(torch.compile(model), tmp_path / "m.pt2")
    inputs = torch.randn(3, 2, 32)
    torch.testing.assert_close(torch.export.load(path).module()(inputs), _eager(model, inputs))


def test_a_channels_last_model_as_fit_leaves_it_exports_to_pt2(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_cnn((3, 16, 16), 4, channels=(4, 8), hidden=()).to(
        memory_format=torch.channels_last
    )
    strides = [p.stride() for p in model.parameters()]
    before = _snapshot(model)
    program = torch.export.load(export(model, tmp_path / "model.pt2")).module()
    _assert_untouched(model, before)
    assert [p.stride() for p in model.parameters()] == strides  # still channels_last
    inputs = torch.randn(5, 3, 16, 16)
    torch.testing.assert_close(program(inputs), _eager(model, inputs), atol=ATOL, rtol=0)


# ------------------------------------------------------------- what can't export


class Branch(nn.Module):
    """Python control flow on a tensor's value: the graph can't hold it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return -x


class ItemScale(nn.Module):
    """``.item()`` used as a number (not in a condition): this one exports."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.abs().max().item()


class Bessel(nn.Module):
    """An operator torch.export records but ONNX has no translation for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)


def _with(layer: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), layer), nn.Linear(4, 2))


def _onnx_opset(path: Path) -> int:
    onnx = pytest.importorskip("onnx")
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain == "")


def test_an_opset_newer_than_onnx_knows_is_refused_before_any_work(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    newest = onnx.defs.onnx_opset_version()
    model = build_cnn((2, 16), 3, channels=(4,), hidden=())
    before = _snapshot(model)
    with pytest.raises(
        ValueError, match=rf"`opset_version`: .*up to {newest}\. Received opset_version=99"
    ):
        export(model, tmp_path / "m.onnx", opset_version=99)
    _assert_untouched(model, before)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_opset_the_exporter_cant_convert_to_is_refused_not_replaced(tmp_path: Path) -> None:
    model = build_cnn((2, 16), 3, channels=(4,), hidden=())
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"`opset_version`: .*can't convert this model to opset 5"):
        export(model, tmp_path / "m.onnx", opset_version=5)
    _assert_untouched(model, before)
    assert list(tmp_path.iterdir()) == []
    path = export(model, tmp_path / "m.onnx", opset_version=18)  # one it reaches is kept
    assert _onnx_opset(path) == 18


@pytest.mark.slow
def test_a_bfloat16_model_is_refused_for_onnx_and_its_float32_copy_runs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_cnn((2, 16), 3, channels=(4,), hidden=()).to(torch.bfloat16)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"not bfloat16: export a float32 copy.*\.float\(\)"):
        export(model, tmp_path / "m.onnx")
    _assert_untouched(model, before)
    assert list(tmp_path.iterdir()) == []
    float32 = copy.deepcopy(model).float()  # the advice
    path = export(float32, tmp_path / "m.onnx")
    inputs = torch.randn(4, 2, 16)
    torch.testing.assert_close(
        _onnx_outputs(path, inputs), _eager(float32, inputs), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_data_dependent_control_flow_is_refused_naming_the_layer(
    suffix: str, tmp_path: Path
) -> None:
    model = _with(Branch())
    before = _snapshot(model)
    with pytest.raises(
        ValueError, match=r"layer '1\.1' \(Branch\).*values in a tensor.*torch\.where"
    ):
        export(model, tmp_path / "new" / "folders" / f"m{suffix}", input_shape=(4,))
    _assert_untouched(model, before)
    assert list(tmp_path.iterdir()) == []  # no file, not even a temporary one or a folder


class BranchOnBatch(nn.Module):
    """Doubles batches of more than 100 samples: decided by the batch size, in Python."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] > 100 else x


@pytest.mark.slow
def test_a_branch_on_the_batch_size_is_refused_saying_so(tmp_path: Path) -> None:
    model = _with(BranchOnBatch())
    before = _snapshot(model)
    with pytest.raises(
        ValueError,
        match=r"decides something from it \(an `if` on x\.shape\[0\]\).*torch: Not all values "
        r"of batch.*dynamic_batch=False",
    ):
        export(model, tmp_path / "m.pt2", input_shape=(4,))
    _assert_untouched(model, before)
    assert list(tmp_path.iterdir()) == []
    path = export(model, tmp_path / "m.pt2", input_shape=(4,), dynamic_batch=False)  # the advice
    inputs = torch.randn(1, 4)
    torch.testing.assert_close(torch.export.load(path).module()(inputs), _eager(model, inputs))


@pytest.mark.slow
def test_an_operator_without_onnx_translation_is_refused_naming_the_layer(
    tmp_path: Path,
) -> None:
    model = _with(Bessel())
    with pytest.raises(ValueError, match=r"layer '1\.1' \(Bessel\).*bessel_j0.*format='pt2'"):
        export(model, tmp_path / "m.onnx", input_shape=(4,))
    assert list(tmp_path.iterdir()) == []
    inputs = torch.randn(3, 4)  # the error's advice works: the .pt2 program runs it
    program = torch.export.load(export(model, tmp_path / "m.pt2", input_shape=(4,))).module()
    torch.testing.assert_close(program(inputs), model(inputs))


@pytest.mark.slow
def test_item_as_a_number_exports_and_runs(tmp_path: Path) -> None:
    model = _with(ItemScale())
    path = export(model, tmp_path / "m.onnx", input_shape=(4,))
    for batch in (1, 5):
        inputs = torch.randn(batch, 4)
        torch.testing.assert_close(
            _onnx_outputs(path, inputs), _eager(model, inputs), atol=ATOL, rtol=0
        )


# -------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"path": 3}, TypeError, r"`path`.*Received path=3"),
        ({"path": "model.tflite"}, ValueError, r"`path`.*'model\.tflite'.*format='onnx'"),
        ({"format": "tflite"}, ValueError, r"`format`.*'onnx', 'pt2'.*format='tflite'"),
        (
            {"input_shape": (1, 32, 32)},
            ValueError,
            r"`input_shape`.*\(1, 28, 28\), not \(1, 32, 32\)",
        ),
        ({"input_shape": (1, 0, 28)}, ValueError, r"`input_shape`"),
        ({"dynamic_batch": "yes"}, TypeError, r"`dynamic_batch`.*True or False"),
        ({"opset_version": 0}, ValueError, r"`opset_version`"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    kwargs: dict[str, Any], error: type[Exception], match: str, tmp_path: Path
) -> None:
    model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
    before = _snapshot(model)
    kwargs = {"path": tmp_path / "model.onnx", **kwargs}
    with pytest.raises(error, match=match):
        export(model, **kwargs)
    _assert_untouched(model, before)
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_input_shape_needs_one(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match=r"Sequential declares no input_shape.*input_shape=\("):
        export(model, tmp_path / "m.pt2")
    with pytest.raises(TypeError, match=r"`model`.*torch\.nn\.Module"):
        export("model", tmp_path / "m.pt2")  # type: ignore[arg-type]
    (tmp_path / "folder.pt2").mkdir()
    with pytest.raises(ValueError, match=r"`path`.*existing directory"):
        export(model, tmp_path / "folder.pt2", input_shape=(3, 8, 8))


def test_an_input_shape_the_model_cant_take_is_blamed_not_the_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    before = _snapshot(model)
    with pytest.raises(
        ValueError,
        match=r"`input_shape`: the model fails on a batch of 2 sample\(s\) of shape \(1, 8, 8\) "
        r"before any export, in layer '0' \(Conv2d\): RuntimeError: .*3 channels",
    ):
        export(model, tmp_path / "m.pt2", input_shape=(1, 8, 8))
    _assert_untouched(model, before)
    assert list(tmp_path.iterdir()) == []
    path = export(model, tmp_path / "m.pt2", input_shape=(3, 8, 8))  # the advice works
    inputs = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(torch.export.load(path).module()(inputs), _eager(model, inputs))


def test_a_crash_while_writing_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_cnn((2, 32), 3, channels=(4,), hidden=())
    path = tmp_path / "model.pt2"
    export(model, path)
    good = path.read_bytes()

    def crash(program: Any, file: Any, **kwargs: Any) -> None:
        file.write(b"half a program")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.export, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        export(model, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]
