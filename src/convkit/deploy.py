"""Export a model for deployment: an ONNX file or a ``torch.export`` program.

Both formats come from one ``torch.export.export`` of the model in eval mode on a sample
of its input shape, with a dynamic batch dimension: the ``.pt2`` file is that program
(``torch.export.save``; load it with ``torch.export.load``), the ``.onnx`` file its
translation by PyTorch's dynamo-based ONNX exporter (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnx`` and ``onnxscript``: convkit's ``export`` extra). See
the PyTorch documentation of ``torch.export`` and ``torch.onnx``.

Files are written atomically (``convkit.checkpoints.files.atomic_write``): a crash
leaves the previous file or none, never half of one. A model that can't be exported is
refused with an error naming the layer whose code stopped the export.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .checkpoints.files import atomic_write, unwritable_reason
from .utils.probe import eval_mode, model_dtype_device, probe_tensor
from .utils.typing import model_input_shape, takes_sample_shape
from .utils.validation import (
    check_bool,
    check_choice,
    check_module,
    check_positive_int,
    check_sample_shape,
)

__all__ = ["FORMATS", "export"]

#: ``format=`` values, and the file suffix ``format="auto"`` reads each from.
FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}

#: The install command of the packages the ONNX format needs.
ONNX_HINT = 'pip install "torch-convkit[export]" (onnx and onnxscript)'


def _check_format(format: Any, target: Path) -> str:
    check_choice("format", format, ("auto", *FORMATS))
    if format != "auto":
        return str(format)
    by_suffix = {suffix: name for name, suffix in FORMATS.items()}
    if target.suffix.lower() not in by_suffix:
        raise ValueError(
            f"Invalid value for argument `path`: format='auto' reads the format from the "
            f"file's suffix, and {str(target)!r} ends in neither .onnx nor .pt2. Name the "
            "file model.onnx or model.pt2, or pass format='onnx' or format='pt2'."
        )
    return by_suffix[target.suffix.lower()]


def _check_input_shape(model: nn.Module, input_shape: Any) -> tuple[int, ...]:
    declared = model_input_shape(model)
    if input_shape is None:
        if declared is None:
            raise ValueError(
                f"Invalid value for argument `input_shape`: {type(model).__name__} declares no "
                "input_shape, so the shape of one sample must be given, without the batch "
                "dimension: e.g. input_shape=(3, 224, 224) for RGB images."
            )
        return declared
    shape = check_sample_shape("input_shape", input_shape, None, "(1, 28, 28)")
    if not takes_sample_shape(model, shape):
        raise ValueError(
            f"Invalid value for argument `input_shape`: the model takes samples of shape "
            f"{declared}, not {shape}. Pass input_shape={declared} or leave it out."
        )
    return shape


def _check_onnx_packages() -> None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"export(format='onnx') needs {' and '.join(missing)}, which PyTorch's ONNX "
            f"exporter uses. Install convkit's 'export' extra: {ONNX_HINT}."
        )


def _check_opset_known(opset_version: int | None) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset_version is not None and opset_version > newest:
        raise ValueError(
            f"Invalid value for argument `opset_version`: the installed onnx knows opsets up "
            f"to {newest}. Received opset_version={opset_version}; pass at most {newest}, or "
            "None for the exporter's default."
        )


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    input_shape: tuple[int, ...] | None = None,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
) -> Path:
    """Write ``model`` to ``path`` as an ONNX file or a ``torch.export`` program.

    The model is exported in eval mode (BatchNorm uses its running statistics, dropout
    is off), as deployment runs it (for a model made by ``torch.compile``, the module it
    wraps); afterwards every submodule is back in the mode it was in, and no parameter
    or buffer has changed. The export traces one sample of shape ``input_shape`` on the
    model's device and in its dtype.

    ONNX: the graph's input is named ``"input"``, its output ``"output"`` and their
    dynamic first dimension ``"batch"``; run it with
    ``onnxruntime.InferenceSession(path).run(None, {"input": x})``. The whole model is
    one file, so it must stay below protobuf's 2 GB. ``.pt2``: load it with
    ``torch.export.load(path)`` and call ``.module()(x)`` on the result.

    Args:
        model: The network, e.g. from [`build_cnn`][convkit.build_cnn].
        path: The file to write; missing parent directories are created.
        format: ``"onnx"``, ``"pt2"`` or ``"auto"`` (default: from the suffix of
            ``path``, ``.onnx`` or ``.pt2``).
        input_shape: The shape of one sample, without the batch dimension, e.g.
            ``(1, 28, 28)``; ``None``: the model's own ``input_shape`` (see
            [`DescribedModel`][convkit.DescribedModel]).
        dynamic_batch: Let the exported model take any batch size (default); ``False``
            fixes it at 1.
        opset_version: The ONNX opset to target; ``None``: the exporter's default. An
            opset the exporter can't convert the model to is refused rather than
            written as another one. Ignored for ``.pt2``.

    Returns:
        The path written.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For a path that can't be written or whose format isn't known, an
            input shape that is missing or that the model doesn't take, an
            ``opset_version`` the exporter can't reach, and a model that can't be
            exported (naming the layer and what stopped it) or whose ONNX translation
            ONNX's checker rejects (e.g. a bfloat16 model).
        ImportError: For ``format="onnx"`` without ``onnx``/``onnxscript`` installed.

    Examples:
        >>> import tempfile, torch
        >>> from convkit import build_cnn, export
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = export(model, f"{folder}/model.pt2")
        ...     program = torch.export.load(path)
        ...     x = torch.randn(5, 1, 28, 28)
        ...     torch.allclose(program.module()(x), model.eval()(x), atol=1e-5)
        True
    """
    check_module("model", model, needs_weights=True)
    model = _uncompiled(model)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "Invalid type for argument `path`. Expected a file name (str or pathlib.Path), "
            f"e.g. 'model.onnx'. Received path={path!r}."
        )
    target = Path(path)
    kind = _check_format(format, target)
    shape = _check_input_shape(model, input_shape)
    check_bool("dynamic_batch", dynamic_batch)
    if opset_version is not None:
        check_positive_int("opset_version", opset_version)
    if kind == "onnx":
        _check_onnx_packages()
        _check_opset_known(opset_version)
    created = _missing_folder(target.parent)
    try:
        reason = unwritable_reason(target)  # creates the missing folders, as writing would
        if reason is not None:
            raise ValueError(f"Invalid value for argument `path`: can't write {target}: {reason}.")
        _write(model, target, kind, shape, input_shape is not None, dynamic_batch, opset_version)
    except BaseException:
        _remove_new_folders(target.parent, created)  # a refused export leaves no trace
        raise
    return target


def _uncompiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (its weights are the same tensors): the export
    traces the Python code itself, and torch.export can't trace the compiled wrapper."""
    original = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        return original
    return model


def _write(
    model: nn.Module,
    target: Path,
    kind: str,
    shape: tuple[int, ...],
    shape_given: bool,
    dynamic_batch: bool,
    opset_version: int | None,
) -> None:
    """Export ``model`` on one sample of ``shape`` and write the ``kind`` file atomically."""
    sample = probe_tensor(model, shape)
    if dynamic_batch:  # a batch of 1 would be specialised to 1 (torch.export's 0/1 rule)
        sample = sample.expand(2, *shape).contiguous()
    with eval_mode(model):
        try:
            program = _trace(model, sample, dynamic_batch)
        except ValueError as err:
            if shape_given:
                _check_runs_eagerly(model, sample, err)
            raise
    if kind == "pt2":
        _pack_contiguous(program)
        with atomic_write(target) as file:
            torch.export.save(program, file)
        return
    data = _onnx_bytes(model, program, sample, opset_version)
    with atomic_write(target) as file:
        file.write(data)


def _missing_folder(folder: Path) -> Path | None:
    """The outermost folder on the way to ``folder`` that doesn't exist (``None``: none)."""
    missing = None
    while not folder.exists() and folder != folder.parent:
        missing, folder = folder, folder.parent
    return missing


def _remove_new_folders(folder: Path, created: Path | None) -> None:
    """Remove the empty folders from ``folder`` up to ``created``, which export made."""
    if created is None:
        return
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty (someone else wrote there) or gone: leave it
            return
        if folder == created:
            return
        folder = folder.parent


def _trace(
    model: nn.Module, sample: torch.Tensor, dynamic_batch: bool
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` on ``sample``, errors naming the layer.

    Non-strict tracing runs each ``forward`` as Python (the default since PyTorch 2.7,
    asked for explicitly for older releases), so an error surfaces in the frame of the
    layer that raised it.
    """
    dynamic = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        return torch.export.export(model, (sample,), dynamic_shapes=dynamic, strict=False)
    except Exception as err:
        raise _unexportable(err, model, "torch.export") from err


def _check_runs_eagerly(model: nn.Module, sample: torch.Tensor, refused: ValueError) -> None:
    """Blame ``input_shape`` when the model fails on the sample without any export.

    The dry run is under ``no_grad`` in the caller's eval mode; buffers a ``forward``
    writes to are put back afterwards.
    """
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad():
            model(sample)
    except Exception as err:
        layer, _ = _failing_layer(err, model)
        first = str(err).strip().splitlines()[0] if str(err).strip() else "no message"
        count, shape = sample.shape[0], tuple(sample.shape[1:])
        raise ValueError(
            f"Invalid value for argument `input_shape`: the model fails on a batch of {count} "
            f"sample(s) of shape {shape} before any export, in {_describe(model, layer)}: "
            f"{type(err).__name__}: {first}. If {shape} isn't the shape of one sample, pass "
            "the one the model takes (without the batch dimension); if it is, that layer "
            "can't take this batch size."
        ) from refused
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def _pack_contiguous(program: torch.export.ExportedProgram) -> None:
    """Give the program contiguous copies of the model's non-contiguous weights.

    ``torch.export.save`` packs each weight's storage and expects it to be contiguous; a
    ``channels_last`` weight (as ``fit`` leaves a CNN's) would be packed with a warning.
    The model's own tensors are left as they are.
    """
    weights = program.state_dict
    for name, tensor in list(weights.items()):
        if not tensor.is_contiguous():
            packed = tensor.detach().contiguous()
            if isinstance(tensor, nn.Parameter):
                packed = nn.Parameter(packed, requires_grad=tensor.requires_grad)
            weights[name] = packed


def _onnx_bytes(
    model: nn.Module,
    program: torch.export.ExportedProgram,
    sample: torch.Tensor,
    opset_version: int | None,
) -> bytes:
    """The ONNX model of ``program``, serialised; errors naming the layer."""
    try:
        onnx_program = torch.onnx.export(
            program,
            (sample,),
            dynamo=True,
            verbose=False,
            input_names=["input"],
            output_names=["output"],
            opset_version=opset_version,
        )
    except Exception as err:
        raise _unexportable(err, model, "ONNX") from err
    # with dynamo=True the exporter returns the program (it writes no file without f=)
    proto = cast(Any, onnx_program).model_proto
    _check_opset(proto, opset_version)
    _check_onnx_model(proto, model)
    _name_batch_dimension(proto.graph)
    data: bytes = proto.SerializeToString()
    return data


def _check_opset(proto: Any, opset_version: int | None) -> None:
    """Refuse a file of another opset than asked: the exporter falls back to its own."""
    reached = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset_version is not None and reached != opset_version:
        raise ValueError(
            f"Invalid value for argument `opset_version`: PyTorch's ONNX exporter can't "
            f"convert this model to opset {opset_version} (it stays at opset {reached}). "
            f"Pass opset_version={reached}, or None for the exporter's default."
        )


def _check_onnx_model(proto: Any, model: nn.Module) -> None:
    """Refuse a translation that ONNX's checker (and so onnxruntime) would reject."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        first = str(err).strip().splitlines()[0]
        dtype, _ = model_dtype_device(model)
        fix = "Export format='pt2' (a torch.export program) instead"
        if dtype == torch.bfloat16:
            fix = (
                "ONNX operators such as Conv take float16, float32 or float64, not bfloat16: "
                "export a float32 copy, export(copy.deepcopy(model).float(), path), or "
                "export format='pt2'"
            )
        raise ValueError(
            f"Invalid value for argument `model`: its ONNX translation is not a valid ONNX "
            f"model ({first}). {fix}."
        ) from err


def _name_batch_dimension(graph: Any) -> None:
    """Call the dynamic batch dimension ``"batch"`` instead of torch's symbol (``s31``)."""
    symbol = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not symbol:  # a fixed batch size
        return
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = "batch"


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or during."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _failing_layer(err: BaseException, model: nn.Module) -> tuple[str | None, str | None]:
    """The submodule whose code raised ``err`` and the graph operator, where known.

    Tracing runs each layer's ``forward`` in Python, so the innermost frame whose
    ``self`` is a submodule names the layer; the ONNX translation works on graph nodes,
    each of which records the module that created it (``nn_module_stack``).
    """
    names = {id(module): name for name, module in model.named_modules()}
    layer: str | None = None
    operator: str | None = None
    for error in _chain(err):
        frame = error.__traceback__
        while frame is not None:
            local = frame.tb_frame.f_locals
            owner = local.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names:
                layer = names[id(owner)]
            node = local.get("node")
            if isinstance(node, torch.fx.Node):
                operator = str(node.target)
                stack = node.meta.get("nn_module_stack") or {}
                if stack:
                    layer = str(list(stack.values())[-1][0])
            frame = frame.tb_next
    return layer, operator


def _describe(model: nn.Module, layer: str | None) -> str:
    if layer is None:
        return f"the model ({type(model).__name__})"
    if layer == "":
        return f"the model's own forward ({type(model).__name__})"
    try:
        kind = type(model.get_submodule(layer)).__name__
    except AttributeError:
        return f"layer {layer!r}"
    return f"layer {layer!r} ({kind})"


def _unexportable(err: BaseException, model: nn.Module, stage: str) -> ValueError:
    """The error for a model ``stage`` (torch.export or ONNX) refused, naming the layer."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    layer, operator = _failing_layer(err, model)
    where = _describe(model, layer)
    first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else "no message"
    if any(isinstance(e, GuardOnDataDependentSymNode) for e in _chain(err)):
        why = (
            "its forward decides something from the values in a tensor (an `if` on a "
            "tensor, or on .item() or bool() of one), which an exported graph can't hold. "
            "Compute both branches and pick with torch.where, or use torch.cond"
        )
    elif "Constraints violated" in first:
        guards = [line.strip(" -") for line in str(err).splitlines() if line.startswith("  - ")]
        said = f" (torch: {guards[0].split('. ')[0].rstrip('.')})" if guards else ""
        why = (
            "the model fixes the batch size (e.g. x.view(2, -1)) or decides something from "
            f"it (an `if` on x.shape[0]), so it can't take every batch size{said}. Use "
            "x.flatten(1) or x.reshape(x.shape[0], -1) and no branch on the batch size, or "
            "pass dynamic_batch=False for a model of batch size 1"
        )
    elif operator is not None and any(type(e).__name__ == "DispatchError" for e in _chain(err)):
        why = (
            f"ONNX has no translation of the operator {operator} it uses. Replace that "
            "operation, or export format='pt2' (a torch.export program) instead"
        )
    else:
        why = f"{type(err).__name__}: {first} (PyTorch's error is chained below)"
    return ValueError(
        f"Invalid value for argument `model`: {where} can't be exported ({stage}): {why}."
    )
