"""MERGED

Batching for ``fit`` / ``evaluate`` / ``predict``: one interface over every data form.

In-memory tensors (an ``(inputs, targets)`` pair, a ``TensorDataset``, convkit's
datasets) are batched by index-slicing, on the target device when they fit there: no
per-sample ``__getitem__`` and no collate, which a ``DataLoader`` over a ``Dataset``
pays for on every sample of every epoch. Shuffling draws
from the same generator in the same way as ``DataLoader(shuffle=True, generator=g)``,
so both paths give the same batches for the same seed. Anything else goes through a
``DataLoader``.


Checks of inputs and targets against the model, before they reach it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

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

from ..utils.probe import infer_output_shape
from ..utils.typing import model_input_shape, model_num_classes, takes_sample_shape

# -------------------- _data --------------------
logger = logging.getLogger(__name__)

#: Tensor data is moved to an accelerator once, up front, when it takes at most this
#: fraction of the device's free memory; larger data stays on the host and each batch
#: is copied over (pinned, non-blocking). ``data_on_device=True/False`` overrides it.
DEVICE_MEMORY_FRACTION = 0.25


#: ``(rank, world_size)`` of a distributed run: each rank sees its own shard.
Shard = tuple[int, int]

#: Called on host data before it moves: whole tensors once, or each loader batch.
CheckFn = Callable[[torch.Tensor, "torch.Tensor | None"], None]


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
        check: Called on host data before it moves (whole tensors once, or each
            loader batch).
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
    check: CheckFn | None = None
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
    inputs: torch.Tensor
    targets: torch.Tensor | None


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


class TensorBatches:
    """Batches of in-memory tensors by index-slicing (optionally shuffled)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor | None, spec: Batching) -> None:
        device, memory_format = spec.device, spec.memory_format
        if spec.check is not None:
            spec.check(inputs, targets)
        self.shard, self.seed, self.epoch = spec.shard, spec.seed, 0
        self.drop_last = spec.drop_last
        on_device = spec.on_device
        nbytes = inputs.nbytes + (targets.nbytes if targets is not None else 0)
        self.on_device = _fits_on(device, nbytes) if on_device is None else on_device
        if self.on_device:
            inputs = inputs.to(device)
            targets = targets.to(device) if targets is not None else None
            if device.type != "cpu" and inputs.dim() == 4 and memory_format is torch.channels_last:
                # once on the accelerator, so that every batch slice is already in format;
                # on the CPU each batch is converted as it is used (the loop's
                # runtime.format) instead of holding a second full copy of the data
                inputs = inputs.contiguous(memory_format=torch.channels_last)
        elif device.type == "cuda":
            inputs = inputs.pin_memory()
            targets = targets.pin_memory() if targets is not None else None
        self.inputs, self.targets, self.dtype = inputs, targets, spec.dtype
        self.rows = spec.rows.to(inputs.device) if spec.rows is not None else None
        _say_conversions(spec.name, inputs, targets, spec.dtype)
        self.batch_size, self.shuffle = spec.batch_size, spec.shuffle
        self.generator, self.device = spec.generator, device

    def _num_rows(self) -> int:
        return len(self.rows) if self.rows is not None else int(self.inputs.shape[0])

    @property
    def num_samples(self) -> int:
        return len(self._shard_indices()) if self.shard else self._num_rows()

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch, for the distributed shuffle (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def _shard_indices(self) -> torch.Tensor:
        rank, world = self.shard or (0, 1)
        n = self._num_rows()
        if not self.shuffle:
            # evaluation: a strided split without padding, so that the all-reduced sums
            # count every sample exactly once
            return torch.arange(rank, n, world)
        # training: exactly DistributedSampler's shard (padded to equal sizes, as DDP needs)
        positions: Any = range(n)  # DistributedSampler only needs len()
        sampler: DistributedSampler[int] = DistributedSampler(
            positions, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        sampler.set_epoch(self.epoch)
        return torch.tensor(list(sampler), dtype=torch.int64)

    def _move(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.on_device else tensor.to(self.device, non_blocking=True)

    def _batch(self, index: slice | torch.Tensor) -> Batch:
        if self.rows is not None:  # positions among the rows -> rows of the tensors
            index = self.rows[index]
        targets = self.targets[index] if self.targets is not None else None
        inputs, targets = convert(
            self._move(self.inputs[index]),
            self._move(targets) if targets is not None else None,
            self.dtype,
        )
        return Batch(inputs, targets)

    def head(self) -> Batch:
        """The first ``batch_size`` samples in stored order, as the loop would get them."""
        return self._batch(slice(0, self.batch_size))

    def __iter__(self) -> Iterator[Batch]:
        n, size = self.num_samples, self.batch_size
        order: torch.Tensor | None = None  # None: in order, by cheap views
        if self.shard is not None:
            order = self._shard_indices().to(self.inputs.device)
        elif self.shuffle:
            _draw_base_seed(self.generator)
            order = torch.randperm(n, generator=self.generator).to(self.inputs.device)
        end = n - n % size if self.drop_last else n
        for start in range(0, end, size):
            index = slice(start, start + size) if order is None else order[start : start + size]
            yield self._batch(index)
        if self.shard is None and self.shuffle:
            # RandomSampler calls randperm once more when its iterator runs out (for a
            # remainder of num_samples % n == 0 samples); mirror that draw as well.
            torch.randperm(n, generator=self.generator)


class LoaderBatches:
    """Batches from a ``DataLoader``, split into inputs and targets and moved to the device."""

    def __init__(self, loader: DataLoader[Any], spec: Batching) -> None:
        self.loader, self.name, self.device, self.check = loader, spec.name, spec.device, spec.check
        self.dtype, self._said = spec.dtype, False

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        sampler = self.loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        non_blocking = self.device.type == "cuda"
        for index, batch in enumerate(self.loader):
            inputs, targets = split_batch(batch, name=self.name, index=index)
            if self.check is not None:
                self.check(inputs, targets)
            if not self._said:
                self._said = True
                _say_conversions(self.name, inputs, targets, self.dtype)
            inputs, targets = convert(
                inputs.to(self.device, non_blocking=non_blocking),
                targets.to(self.device, non_blocking=non_blocking) if targets is not None else None,
                self.dtype,
            )
            yield Batch(inputs, targets)


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
        raise TypeError(
            f"Invalid type for argument `{name}`: a {type(data).__name__} of "
            f"{_kinds(data)}. Expected an (inputs, targets) pair of two tensors or NumPy "
            "arrays, a Dataset or a DataLoader."
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


def _check_collatable(name: str, dataset: Any) -> None:
    """Refuse a dataset whose samples hold images that ``default_collate`` can't batch."""
    try:
        sample = dataset[0]
    except (IndexError, KeyError, TypeError):  # not indexable by position: batched as it is
        return
    for item in sample if isinstance(sample, (tuple, list)) else (sample,):
        if type(item).__module__.startswith("PIL."):
            raise TypeError(
                f"Invalid data in `{name}`: the dataset returns PIL images "
                f"({type(item).__name__}), which can't be batched. Turn them into tensors in "
                "the dataset's transform: transforms.ToTensor() (scaled to [0, 1]) or "
                "transforms.Compose([..., transforms.ToTensor()]) in torchvision."
            )


def make_batches(data: Any, spec: Batching) -> TensorBatches | LoaderBatches:
    """Pick the batching path for ``data`` and check it isn't empty or malformed."""
    name, shard, shuffle, seed = spec.name, spec.shard, spec.shuffle, spec.seed
    pair = _in_memory(data, spec)
    if pair is not None:
        inputs, targets = pair
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
        return TensorBatches(inputs, targets, spec)
    if spec.rows is not None:
        raise ValueError(
            f"Invalid value for argument `validation_split`: it splits in-memory data (tensors, "
            f"NumPy arrays, a TensorDataset), and `{name}` is a {type(data).__name__}. Pass "
            "val_data instead, e.g. a torch.utils.data.random_split of the dataset."
        )
    if isinstance(data, DataLoader):
        if spec.num_workers:
            raise ValueError(
                f"Invalid value for argument `num_workers`: `{name}` is a DataLoader, which has "
                f"its own (num_workers={data.num_workers}). Set it on the DataLoader, or pass "
                "the Dataset and num_workers to fit."
            )
        loader = data
        if shard is not None and not isinstance(loader.sampler, DistributedSampler):
            loader = _shard_loader(loader, shard, shuffle=shuffle, seed=seed)
    elif isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        is_iterable = isinstance(data, IterableDataset)
        loader = DataLoader(
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
            loader = _shard_loader(loader, shard, shuffle=shuffle, seed=seed)
    else:
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected a DataLoader, a Dataset or an "
            f"(inputs, targets) pair of tensors. Received {type(data).__name__}."
        )
    if isinstance(loader.dataset, Sized) and len(loader.dataset) == 0:
        raise ValueError(
            f"Invalid value for argument `{name}`: the dataset is empty. Pass at least one sample."
        )
    # in the main process only: with workers, the samples are never loaded here
    map_style = not isinstance(loader.dataset, IterableDataset)
    if loader.collate_fn is default_collate and map_style and loader.num_workers == 0:
        _check_collatable(name, loader.dataset)
    return LoaderBatches(loader, spec)


# -------------------- _data_check --------------------
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


def check_finite(name: str, inputs: torch.Tensor) -> None:
    """Refuse inputs holding NaN or inf, naming how many samples and the first one."""
    if not inputs.is_floating_point() or inputs.numel() == 0:
        return
    # aminmax propagates NaN and inf without a temporary the size of the data
    if bool(torch.isfinite(torch.stack(torch.aminmax(inputs))).all()):  # one host read
        return
    bad = [
        start + int(i)
        for start in range(0, inputs.shape[0], 1024)
        for i in torch.nonzero(
            ~torch.isfinite(inputs[start : start + 1024]).flatten(1).all(dim=1)
        ).flatten()
    ]
    raise nonfinite_error(name, bad)


def nonfinite_error(name: str, bad: list[int]) -> ValueError:
    """The error for samples ``bad`` (their indices) of ``name`` holding NaN or inf."""
    return ValueError(
        f"Invalid data in `{name}`: {len(bad)} sample(s) hold NaN or inf values (the "
        f"first at index {bad[0]}). Drop or repair them, e.g. with torch.nan_to_num or by "
        "filtering on torch.isfinite(x).flatten(1).all(1)."
    )


class DataCheck:
    """Checks inputs and targets against the model before they reach it.

    Reads the model's optional ``input_shape``/``num_classes`` (see
    [`DescribedModel`][convkit.DescribedModel]). Runs on whole tensors once (in-memory
    data) or on each batch while it's still on the host (``DataLoader`` data), so it
    never forces a device sync. Inputs must be finite: all of in-memory data, and the
    first batch of a loader (later NaN/inf batches are the training loop's NaN guard's).
    """

    def __init__(self, model: nn.Module, name: str, *, loss: object = None) -> None:
        self.model, self.name = model, name
        # Targets equal to the loss's ignore_index (-100 for cross-entropy, the default
        # loss of class-index targets) are no class and skip the range check.
        self.ignore_index: int | None = getattr(
            loss, "ignore_index", -100 if loss is None else None
        )
        self.input_shape = model_input_shape(model)
        self.num_classes = model_num_classes(model)
        self._probed = self.num_classes is not None
        self._output_shape: tuple[int, ...] | None = None
        self._sample_shape: tuple[int, ...] = ()
        self._checked_finite = False

    def _check_finite(self, inputs: torch.Tensor) -> None:
        self._checked_finite = True
        check_finite(self.name, inputs)

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
            self._check_finite(inputs)
        sample = self._sample_shape = tuple(inputs.shape[1:])
        if self.input_shape is not None and not takes_sample_shape(self.model, sample):
            raise ValueError(
                f"Invalid data in `{self.name}`: inputs of shape {tuple(inputs.shape)} don't "
                f"match the model's input_shape {self.input_shape}; expected (N, "
                f"{', '.join(map(str, self.input_shape))}). "
                + shape_advice(tuple(inputs.shape), self.input_shape)
            )
        if targets is None or targets.is_floating_point() or targets.dim() == 0:
            return
        if not self._probed:
            # Models without a num_classes attribute: one dry run (eval mode, no_grad,
            # modes restored) to read the outputs' shape.
            self._probed = True
            self._output_shape = infer_output_shape(self.model, tuple(inputs.shape[1:]))
            out = self._output_shape
            self.num_classes = out[0] if len(out) == 1 else None
        classes = self.num_classes if targets.dim() == 1 else self._map_classes(targets)
        if classes is None or classes < 2 or targets.numel() == 0:
            # one output unit: not class scores; the task inference explains the fix
            return
        if self.ignore_index is not None:
            targets = targets[targets != self.ignore_index]
            if targets.numel() == 0:
                return
        low, high = (int(v) for v in torch.aminmax(targets))
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"Invalid data in `{self.name}`: target {bad} is outside [0, {classes}) "
                f"for a model with {classes} outputs. Targets must be class indices "
                f"0..{classes - 1}; build the model with more classes or fix the labels."
            )

    def _map_classes(self, targets: torch.Tensor) -> int | None:
        """The classes of a class map ``(N, *spatial)`` over outputs ``(N, C, *spatial)``."""
        out = self._output_shape
        if out is None:
            self._output_shape = out = infer_output_shape(self.model, self._sample_shape)
        if len(out) == targets.dim() and tuple(targets.shape[1:]) == tuple(out[1:]):
            return int(out[0])
        return None
