"""The batching path of ``fit``, ``evaluate``, ``predict`` and ``viz``, and its data checks.

In-memory tensors (an ``(inputs, targets)`` pair, a ``TensorDataset``, convkit's
datasets) are batched by index-slicing, on the target device when they fit there: no
per-sample ``__getitem__`` and no collate, which a ``DataLoader`` over a ``Dataset``
pays for on every sample of every epoch. Shuffling draws from the same generator in the
same way as ``DataLoader(shuffle=True, generator=g)``, so both paths give the same
batches for the same seed. Anything else goes through a ``DataLoader``.

Every batch reaches the model converted the same way (see
[`convert`][convkit.train.data.convert]), after a [`DataCheck`][convkit.train.data.DataCheck]
of its inputs and targets against the model and the task, before any work. In a
distributed run each batch also says how many of its samples are the rank's own: a
``DistributedSampler`` pads the shards to equal sizes by repeating samples, which train
(DDP needs equal batches) but count for no loss or metric.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    TensorDataset,
    default_collate,
)

from ..checkpoints.restore import loader_generators
from ..utils.probe import model_dtype_device
from ..utils.typing import model_input_shape, takes_sample_shape

if TYPE_CHECKING:
    from .tasks import TaskSpec

logger = logging.getLogger(__name__)

#: Tensor data is moved to an accelerator once, up front, when it takes at most this
#: fraction of the device's free memory; larger data stays on the host and each batch
#: is copied over (pinned, non-blocking). ``data_on_device=True/False`` overrides it.
DEVICE_MEMORY_FRACTION = 0.25


#: ``(rank, world_size)`` of a distributed run: each rank sees its own shard.
Shard = tuple[int, int]


@dataclass(frozen=True)
class Batching:
    """How one data argument (``train_data``, ``val_data``, ``data``) is batched.

    Attributes:
        name: The argument's name, for error messages.
        batch_size: Samples per batch (data that isn't a ``DataLoader`` already).
        shuffle: Reshuffle every epoch (training).
        generator: The generator that shuffles.
        device: Where batches go.
        need_targets: Refuse data without targets.
        check: Checks host data before it moves (whole tensors once, or each loader
            batch).
        on_device: Move in-memory data to the device once (``None``: when it fits).
        memory_format: The layout batches are given.
        shard: ``(rank, world_size)`` in a distributed run.
        seed: The distributed sampler's seed.
        drop_last: Drop the last batch when it is smaller than ``batch_size``.
        dtype: The model's floating-point dtype: batches are converted to it (see
            [`convert`][convkit.train.data.convert]); ``None`` leaves them as they are.
        num_workers: Worker processes of the ``DataLoader`` built for a ``Dataset``.
        rows: For in-memory data: use only these rows (``validation_split``), without
            copying them out of the tensors.
    """

    name: str
    batch_size: int
    shuffle: bool
    generator: torch.Generator
    device: torch.device
    need_targets: bool
    check: DataCheck | None = None
    on_device: bool | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    shard: Shard | None = None
    seed: int = 0
    drop_last: bool = False
    dtype: torch.dtype | None = None
    num_workers: int = 0
    rows: torch.Tensor | None = None


@dataclass
class Batch:
    """One batch on the device. ``real``: how many leading samples are the rank's own
    when the rest is a distributed sampler's padding (``None``: all of them)."""

    inputs: torch.Tensor
    targets: torch.Tensor | None
    real: int | None = None


def convert(
    inputs: torch.Tensor, targets: torch.Tensor | None, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch in the dtypes the model and the losses take.

    ``uint8`` inputs (images as stored) become ``dtype`` in ``[0, 1]`` (divided by 255,
    as ``transforms.ToTensor()`` does); other floating-point inputs and targets are cast
    to ``dtype`` (e.g. NumPy's float64 to the model's float32). Integer targets of any
    width become int64, the class-index dtype of PyTorch's losses; bool targets stay.
    """
    if dtype is not None:
        if inputs.dtype == torch.uint8:
            inputs = inputs.to(dtype).div_(255)
        elif inputs.is_floating_point() and inputs.dtype != dtype:
            inputs = inputs.to(dtype)
        if targets is not None and targets.is_floating_point() and targets.dtype != dtype:
            targets = targets.to(dtype)
    integer = targets is not None and not targets.is_floating_point()
    if integer and targets is not None and targets.dtype not in (torch.int64, torch.bool):
        targets = targets.long()
    return inputs, targets


def _say_conversions(
    name: str, inputs: torch.Tensor, targets: torch.Tensor | None, dtype: torch.dtype | None
) -> None:
    """Log, once per data argument, what ``convert`` will do to its batches."""
    after, after_targets = convert(inputs[:1], targets[:1] if targets is not None else None, dtype)
    changes = [f"inputs {inputs.dtype} -> {after.dtype}"] if after.dtype != inputs.dtype else []
    if inputs.dtype == torch.uint8 and dtype is not None:
        changes[-1] += " (divided by 255)"
    if targets is not None and after_targets is not None and after_targets.dtype != targets.dtype:
        changes.append(f"targets {targets.dtype} -> {after_targets.dtype}")
    if not changes:
        return
    narrowing = inputs.is_floating_point() and inputs.dtype.itemsize > after.dtype.itemsize
    level = logging.WARNING if narrowing else logging.INFO
    logger.log(level, "%s: converting each batch: %s", name, ", ".join(changes))


def _draw_base_seed(generator: torch.Generator) -> None:
    # A DataLoader draws one int64 "base seed" from its generator each time it is
    # iterated, before the sampler's randperm; draw it too so that both paths consume
    # the generator identically and give the same order for the same seed.
    torch.empty((), dtype=torch.int64).random_(generator=generator)


def _fits_on(device: torch.device, nbytes: int) -> bool:
    if device.type != "cuda":
        return True  # CPU: nothing to move; MPS: unified memory
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_MEMORY_FRACTION * free


def _real(own: int | None, start: int, size: int) -> int | None:
    """How many of the batch of ``size`` samples from ``start`` on are among the ``own``
    first samples of the rank's shard (``None``: all of them)."""
    if own is None or own - start >= size:
        return None
    return max(0, own - start)


class TensorBatches:
    """Batches of in-memory tensors by index-slicing (optionally shuffled)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor | None, spec: Batching) -> None:
        if spec.check is not None:
            spec.check(inputs, targets)
        device = spec.device
        nbytes = inputs.nbytes + (targets.nbytes if targets is not None else 0)
        self.on_device = _fits_on(device, nbytes) if spec.on_device is None else spec.on_device
        if self.on_device:
            inputs = inputs.to(device)
            targets = targets.to(device) if targets is not None else None
            if (
                device.type != "cpu"
                and inputs.dim() == 4
                and spec.memory_format is torch.channels_last
            ):
                # once on the accelerator, so that every batch slice is already in format;
                # on the CPU each batch is converted as it is used (the loop's
                # runtime.format) instead of holding a second full copy of the data
                inputs = inputs.contiguous(memory_format=torch.channels_last)
        elif device.type == "cuda":
            inputs = inputs.pin_memory()
            targets = targets.pin_memory() if targets is not None else None
        self.inputs, self.targets, self.spec, self.epoch = inputs, targets, spec, 0
        self.rows = spec.rows.to(inputs.device) if spec.rows is not None else None
        rows = len(self.rows) if self.rows is not None else int(inputs.shape[0])
        rank, world = spec.shard or (0, 1)
        own = len(range(rank, rows, world))
        # training: DistributedSampler's shard, padded to equal sizes; evaluation: a
        # strided split without padding, so that the all-reduced sums count each sample once
        padded = spec.shard is not None and spec.shuffle
        self.num_samples = -(-rows // world) if padded else own
        self.own = own if padded and own < self.num_samples else None
        self.num_rows = rows
        _say_conversions(spec.name, inputs, targets, spec.dtype)

    def __len__(self) -> int:
        if self.spec.drop_last:
            return self.num_samples // self.spec.batch_size
        return -(-self.num_samples // self.spec.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch, for the distributed shuffle (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def _shard_indices(self) -> torch.Tensor:
        rank, world = self.spec.shard or (0, 1)
        if not self.spec.shuffle:
            return torch.arange(rank, self.num_rows, world)
        positions: Any = range(self.num_rows)  # DistributedSampler only needs len()
        sampler: DistributedSampler[int] = DistributedSampler(
            positions, num_replicas=world, rank=rank, shuffle=True, seed=self.spec.seed
        )
        sampler.set_epoch(self.epoch)
        return torch.tensor(list(sampler), dtype=torch.int64)

    def _batch(self, index: slice | torch.Tensor, start: int) -> Batch:
        if self.rows is not None:  # positions among the rows -> rows of the tensors
            index = self.rows[index]
        inputs = self.inputs[index]
        targets = self.targets[index] if self.targets is not None else None
        if not self.on_device:
            inputs = inputs.to(self.spec.device, non_blocking=True)
            targets = (
                targets.to(self.spec.device, non_blocking=True) if targets is not None else None
            )
        inputs, targets = convert(inputs, targets, self.spec.dtype)
        return Batch(inputs, targets, _real(self.own, start, int(inputs.shape[0])))

    def first(self) -> Batch:
        """The first ``batch_size`` samples in stored order, as the loop would get them."""
        return self._batch(slice(0, self.spec.batch_size), 0)

    def check_task(self, task: TaskSpec) -> None:
        """Check every target against the task (one host read), before any work."""
        if self.targets is not None:
            targets = self.targets if self.rows is None else self.targets[self.rows]
            task.check_targets(self.spec.name, targets)

    def __iter__(self) -> Iterator[Batch]:
        spec, n, size = self.spec, self.num_samples, self.spec.batch_size
        order: torch.Tensor | None = None  # None: in order, by cheap views
        if spec.shard is not None:
            order = self._shard_indices().to(self.inputs.device)
        elif spec.shuffle:
            _draw_base_seed(spec.generator)
            order = torch.randperm(n, generator=spec.generator).to(self.inputs.device)
        end = n - n % size if spec.drop_last else n
        for start in range(0, end, size):
            index = slice(start, start + size) if order is None else order[start : start + size]
            yield self._batch(index, start)
        if spec.shard is None and spec.shuffle:
            # RandomSampler calls randperm once more when its iterator runs out (for a
            # remainder of num_samples % n == 0 samples); mirror that draw as well.
            torch.randperm(n, generator=spec.generator)


class LoaderBatches:
    """Batches from a ``DataLoader``, split into inputs and targets and moved to the device."""

    def __init__(self, loader: DataLoader[Any], spec: Batching) -> None:
        self.loader, self.spec = loader, spec
        self._said = False
        self._first: Batch | None = None
        sampler, self.own = loader.sampler, None
        if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
            size = len(sampler.dataset)  # type: ignore[arg-type]
            if sampler.total_size > size:  # padded: the first samples are the rank's own
                self.own = len(range(sampler.rank, size, sampler.num_replicas))

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        sampler = self.loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        non_blocking, seen = self.spec.device.type == "cuda", 0
        for index, batch in enumerate(self.loader):
            inputs, targets = split_batch(batch, name=self.spec.name, index=index)
            if self.spec.check is not None:
                self.spec.check(inputs, targets)
            if not self._said:
                self._said = True
                _say_conversions(self.spec.name, inputs, targets, self.spec.dtype)
            inputs, targets = convert(
                inputs.to(self.spec.device, non_blocking=non_blocking),
                targets.to(self.spec.device, non_blocking=non_blocking)
                if targets is not None
                else None,
                self.spec.dtype,
            )
            yield Batch(inputs, targets, _real(self.own, seen, int(inputs.shape[0])))
            seen += int(inputs.shape[0])

    def first(self) -> Batch | None:
        """The first batch the loader yields (``None``: none), drawing no randomness."""
        if self._first is None:
            with _rng_untouched(self.loader):
                self._first = next(iter(self), None)
        return self._first

    def check_task(self, task: TaskSpec) -> None:
        """Check the first batch's targets against the task now, every later one as it
        comes (on the host, before it moves)."""
        if self.spec.check is not None:
            self.spec.check.task = task
        first = self.first()
        if first is not None and first.targets is not None:
            task.check_targets(self.spec.name, first.targets)
        self._first = None  # not kept on the device for the whole run


@contextlib.contextmanager
def _rng_untouched(loader: DataLoader[Any]) -> Iterator[None]:
    """Restore the generators a ``DataLoader`` draws its order from (and torch's global one)."""
    generators = loader_generators(loader)
    states = [g.get_state() for g in generators]
    global_state = torch.get_rng_state()
    try:
        yield
    finally:
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
        torch.set_rng_state(global_state)


# ------------------------------------------------------------------ checks


def shape_advice(shape: tuple[int, ...], input_shape: tuple[int, ...]) -> str:
    """The fix for inputs of ``shape`` (batch first) that a model of ``input_shape`` refuses.

    Each suggestion, applied, gives inputs of the model's shape: a missing channel axis
    is added, channels-last images are permuted; only a shape that a model can be built
    for (channels and 1 to 3 spatial dimensions) is offered as the model's input_shape.
    """
    channels, *size = input_shape
    sample = shape[1:]
    if shape == (*size, channels) and len(input_shape) == 3:
        return (
            "It looks like one channels-last image (H, W, C): permute it, not the model: "
            "image.permute(2, 0, 1) (NumPy: image.transpose(2, 0, 1))."
        )
    if len(sample) == len(input_shape) == 3 and sample == (*size, channels):
        return (
            "They look like channels-last images (N, H, W, C). Permute the data, not the "
            "model: inputs.permute(0, 3, 1, 2) (NumPy: x.transpose(0, 3, 1, 2))."
        )
    if channels == 1 and sample == tuple(size):
        return (
            "They have no channel axis; add it: x[:, None] (NumPy: x[:, None] or "
            "np.expand_dims(x, 1))."
        )
    if channels == 1 and shape == tuple(size):
        return "It looks like one sample without its channel axis; add it: x[None]."
    if 2 <= len(sample) <= 4:
        return f"Reshape the data or build the model for input_shape={sample}."
    return "Reshape the data to the model's input_shape."


def check_finite(name: str, values: torch.Tensor, *, what: str = "inputs") -> None:
    """Refuse ``values`` holding NaN or inf, naming how many samples and the first one."""
    if not values.is_floating_point() or values.numel() == 0:
        return
    # aminmax propagates NaN and inf without a temporary the size of the data
    if bool(torch.isfinite(torch.stack(torch.aminmax(values))).all()):  # one host read
        return
    bad: list[int] = []
    for start in range(0, values.shape[0], 1024):
        chunk = values[start : start + 1024]
        rows = ~torch.isfinite(chunk.reshape(chunk.shape[0], -1)).all(dim=1)
        bad += [start + int(i) for i in torch.nonzero(rows).flatten()]
    raise nonfinite_error(name, bad, what=what)


def nonfinite_error(name: str, bad: list[int], *, what: str = "inputs") -> ValueError:
    """The error for samples ``bad`` (their indices) of ``name`` holding NaN or inf."""
    whose = "" if what == "inputs" else f"the {what} of "
    return ValueError(
        f"Invalid data in `{name}`: {whose}{len(bad)} sample(s) hold NaN or inf values (the "
        f"first at index {bad[0]}). Drop or repair them, e.g. with torch.nan_to_num or by "
        "filtering on torch.isfinite(x).flatten(1).all(1)."
    )


class DataCheck:
    """Checks inputs and targets against the model and the task before they reach it.

    Reads the model's optional ``input_shape`` (see
    [`DescribedModel`][convkit.DescribedModel]) and, once it is known, the task's
    [`check_targets`][convkit.train.tasks.TaskSpec.check_targets]. Runs on whole tensors
    once (in-memory data) or on each batch while it's still on the host (``DataLoader``
    data), so it never forces a device sync. Inputs and floating-point targets must be
    finite: all of in-memory data, and the first batch of a loader (later NaN/inf
    batches are the training loop's NaN guard's).
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        self.model, self.name = model, name
        self.task: TaskSpec | None = None
        self._checked_finite = False

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> None:
        if inputs.device.type == "meta" or (targets is not None and targets.is_meta):
            raise ValueError(
                f"Invalid data in `{self.name}`: the tensors are on the meta device, which "
                "holds shapes but no values. Pass real data, e.g. torch.rand(...) on the CPU."
            )
        if not (inputs.is_floating_point() or inputs.dtype == torch.uint8):
            raise TypeError(
                f"Invalid data in `{self.name}`: inputs have dtype {inputs.dtype}; the model "
                "needs floating-point inputs (uint8 images are scaled to [0, 1] by themselves). "
                "Convert them, e.g. inputs.float()."
            )
        if not self._checked_finite:
            self._checked_finite = True
            check_finite(self.name, inputs)
            if targets is not None:
                check_finite(self.name, targets, what="targets")
        if not takes_sample_shape(self.model, tuple(inputs.shape[1:])):
            raise self._shape_error(inputs)
        if self.task is not None and targets is not None:
            self.task.check_targets(self.name, targets)

    def _shape_error(self, inputs: torch.Tensor) -> ValueError:
        expected = model_input_shape(self.model) or ()
        return ValueError(
            f"Invalid data in `{self.name}`: inputs of shape {tuple(inputs.shape)} don't "
            f"match the model's input_shape {expected}; expected (N, "
            f"{', '.join(map(str, expected))}). " + shape_advice(tuple(inputs.shape), expected)
        )


# ------------------------------------------------------------------ data forms


def _shard_loader(
    loader: DataLoader[Any], shard: Shard, *, shuffle: bool, seed: int
) -> DataLoader[Any]:
    """The same loader over this rank's shard: DistributedSampler for training, a
    strided, unpadded split for evaluation (so every sample counts exactly once)."""
    rank, world = shard
    dataset = loader.dataset
    sampler: Any
    if shuffle:
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
    else:
        sampler = list(range(rank, len(dataset), world))  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        persistent_workers=loader.persistent_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def split_batch(batch: Any, *, name: str, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, targets)`` from a batch that is a tensor or an ``(inputs, targets)`` pair."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        inputs = batch[0]
        targets = batch[1] if len(batch) == 2 else None
        if isinstance(inputs, torch.Tensor) and (
            targets is None or isinstance(targets, torch.Tensor)
        ):
            return inputs, targets
    kinds = (
        f"({', '.join(type(b).__name__ for b in batch)})"
        if isinstance(batch, (tuple, list))
        else type(batch).__name__
    )
    raise TypeError(
        f"Invalid data in `{name}`: batch {index} is {kinds}; expected a tensor of inputs or an "
        "(inputs, targets) pair of tensors. Convert samples to tensors (e.g. with "
        "transforms.ToTensor()) or pass a TensorDataset."
    )


def _as_tensor(value: Any) -> torch.Tensor:
    """A tensor as is; a NumPy array as a tensor sharing its memory (copied if read-only)."""
    if isinstance(value, torch.Tensor):
        return value
    array = value if value.flags.writeable else value.copy()
    return torch.from_numpy(array)


def _kinds(items: Any) -> str:
    return f"({', '.join(type(item).__name__ for item in items)})"


def _in_memory(data: Any, spec: Batching) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The tensors of in-memory data, or ``None`` if ``data`` isn't in memory.

    Takes a tensor or NumPy array of inputs, a ``TensorDataset`` of one or two tensors,
    or an ``(inputs, targets)`` tuple/list of two tensors or arrays. Refuses a tuple,
    list or dict of tensors that isn't such a pair: read as a dataset, ``(x, y, w)``
    would be three samples and ``{"x": x, "y": y}`` a lookup by sample index.
    """
    arrays = (torch.Tensor, np.ndarray)
    if isinstance(data, arrays):
        return _as_tensor(data), None
    if isinstance(data, TensorDataset) and len(data.tensors) in (1, 2):
        tensors = data.tensors
        return tensors[0], (tensors[1] if len(tensors) == 2 else None)
    name = spec.name
    if isinstance(data, dict):
        raise TypeError(
            f"Invalid type for argument `{name}`: a dict with keys {list(data)[:5]}. Expected an "
            f"(inputs, targets) pair of tensors, e.g. {name}=(d['x'], d['y']), a Dataset or a "
            "DataLoader."
        )
    if not isinstance(data, (tuple, list)) or not any(isinstance(t, arrays) for t in data):
        return None  # e.g. a list of (input, target) samples: a dataset
    if len(data) != 2 or not all(isinstance(t, arrays) for t in data):
        fix = ""
        if len(data) == 2 and isinstance(data[0], arrays) and isinstance(data[1], (list, tuple)):
            fix = " Make the targets one tensor: (inputs, torch.tensor(targets))."
        raise TypeError(
            f"Invalid type for argument `{name}`: a {type(data).__name__} of "
            f"{_kinds(data)}. Expected an (inputs, targets) pair of two tensors or NumPy "
            f"arrays, a Dataset or a DataLoader.{fix}"
        )
    if isinstance(data, list) and not spec.need_targets:
        raise TypeError(
            f"Invalid type for argument `{name}`: a list of {_kinds(data)}, which could be two "
            "batches of inputs or inputs and targets. Pass the inputs as one tensor "
            "(torch.cat of the list), or an (inputs, targets) tuple."
        )
    return _as_tensor(data[0]), _as_tensor(data[1])


def _length(data: Any) -> int | None:
    """The number of samples of in-memory data, or ``None`` for anything else."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return int(data.shape[0]) if data.ndim else None
    if isinstance(data, TensorDataset):
        return len(data)
    arrays = (torch.Tensor, np.ndarray)
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, arrays) and t.ndim for t in data)
    ):
        return int(data[0].shape[0])
    return None


def split_rows(data: Any, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation rows for ``validation_split``: a seeded random split.

    Both are sorted, so each side reads its rows in stored order and nothing is copied.
    """
    n = _length(data)
    if n is None:
        raise ValueError(
            "Invalid value for argument `validation_split`: it splits in-memory data (tensors, "
            f"NumPy arrays, a TensorDataset), and `train_data` is a {type(data).__name__}. "
            "Pass val_data instead, e.g. from torch.utils.data.random_split."
        )
    n_val = round(n * fraction)
    if not 0 < n_val < n:
        raise ValueError(
            f"Invalid value for argument `validation_split`: {fraction} of {n} samples leaves "
            f"{n_val} for validation and {n - n_val} for training; both need at least one. "
            "Use a fraction such as 0.1, or more data."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:].sort().values, order[:n_val].sort().values


def make_batches(
    data: Any, spec: Batching, *, model: nn.Module | None = None
) -> TensorBatches | LoaderBatches:
    """The batching path for ``data``: checked, converted for ``model`` when one is given.

    With ``model``, every batch is checked against it (a
    [`DataCheck`][convkit.train.data.DataCheck]) and converted to its floating-point
    dtype. ``fit``, ``evaluate``, ``predict`` and ``viz`` all batch through here.
    """
    if model is not None:
        dtype, _ = model_dtype_device(model)
        spec = dataclasses.replace(spec, check=DataCheck(model, spec.name), dtype=dtype)
    pair = _in_memory(data, spec)
    if pair is not None:
        return TensorBatches(*_checked_pair(pair, spec), spec)
    if spec.rows is not None:
        raise ValueError(
            f"Invalid value for argument `validation_split`: it splits in-memory data (tensors, "
            f"NumPy arrays, a TensorDataset), and `{spec.name}` is a {type(data).__name__}. Pass "
            "val_data instead, e.g. a torch.utils.data.random_split of the dataset."
        )
    loader = _loader(data, spec)
    if isinstance(loader.dataset, Sized) and len(loader.dataset) == 0:
        raise ValueError(
            f"Invalid value for argument `{spec.name}`: the dataset is empty. Pass at least one "
            "sample."
        )
    # in the main process only: with workers, the samples are never loaded here
    map_style = not isinstance(loader.dataset, IterableDataset)
    if loader.collate_fn is default_collate and map_style and loader.num_workers == 0:
        _check_collatable(spec.name, loader.dataset)
    return LoaderBatches(loader, spec)


def _is_pil_image(value: Any) -> bool:
    """Whether ``value`` is a PIL image (checked by module, without importing PIL)."""
    return type(value).__module__.startswith("PIL.")


def _check_collatable(name: str, dataset: Any) -> None:
    """Refuse a dataset whose samples hold images that ``default_collate`` can't batch."""
    try:
        sample = dataset[0]
    except (IndexError, KeyError, TypeError):  # not indexable by position: batched as it is
        return
    for item in sample if isinstance(sample, (tuple, list)) else (sample,):
        if _is_pil_image(item):
            raise TypeError(
                f"Invalid data in `{name}`: the dataset returns PIL images "
                f"({type(item).__name__}), which can't be batched. Turn them into tensors in "
                "the dataset's transform: transforms.ToTensor() (scaled to [0, 1]) or "
                "transforms.Compose([..., transforms.ToTensor()]) in torchvision."
            )


def _checked_pair(
    pair: tuple[torch.Tensor, torch.Tensor | None], spec: Batching
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """In-memory inputs and targets that hold at least one sample each, in step."""
    inputs, targets = pair
    name = spec.name
    if spec.need_targets and targets is None:
        raise ValueError(
            f"Invalid value for argument `{name}`: it holds inputs but no targets. Pass an "
            "(inputs, targets) pair, a TensorDataset of both, or a DataLoader of pairs."
        )
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError(
            f"Invalid value for argument `{name}`: the dataset is empty "
            f"(inputs of shape {tuple(inputs.shape)}). Pass at least one sample."
        )
    if targets is not None and (targets.dim() == 0 or targets.shape[0] != inputs.shape[0]):
        raise ValueError(
            f"Invalid value for argument `{name}`: {inputs.shape[0]} inputs but targets of "
            f"shape {tuple(targets.shape)}. Inputs and targets need the same first dimension."
        )
    return inputs, targets


def _loader(data: Any, spec: Batching) -> DataLoader[Any]:
    """A ``DataLoader`` as given, or one built for a ``Dataset``; sharded when distributed."""
    shard, shuffle, seed = spec.shard, spec.shuffle, spec.seed
    if isinstance(data, DataLoader):
        if spec.num_workers:
            raise ValueError(
                f"Invalid value for argument `num_workers`: `{spec.name}` is a DataLoader, which "
                f"has its own (num_workers={data.num_workers}). Set it on the DataLoader, or "
                "pass the Dataset and num_workers to fit."
            )
        if shard is not None and not isinstance(data.sampler, DistributedSampler):
            return _shard_loader(data, shard, shuffle=shuffle, seed=seed)
        return data
    if _is_pil_image(data):
        raise TypeError(
            f"Invalid type for argument `{spec.name}`: a PIL image ({type(data).__name__}). "
            "Turn it into a tensor first: transforms.ToTensor()(image) in torchvision "
            "(shape (C, H, W), scaled to [0, 1])."
        )
    if not (
        isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__"))
    ):
        raise TypeError(
            f"Invalid type for argument `{spec.name}`. Expected a DataLoader, a Dataset or an "
            f"(inputs, targets) pair of tensors. Received {type(data).__name__}."
        )
    is_iterable = isinstance(data, IterableDataset)
    loader: DataLoader[Any] = DataLoader(
        data,
        batch_size=spec.batch_size,
        shuffle=shuffle and not is_iterable,
        generator=spec.generator,
        pin_memory=spec.device.type == "cuda",
        drop_last=spec.drop_last,
        # not persistent: every epoch then draws its order exactly as without workers
        num_workers=spec.num_workers,
    )
    if shard is not None and not is_iterable:
        return _shard_loader(loader, shard, shuffle=shuffle, seed=seed)
    return loader
