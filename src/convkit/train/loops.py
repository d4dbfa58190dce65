"""The public training and inference functions: ``fit``, ``evaluate`` and ``predict``.

They know nothing about CNNs (after minGPT's ``trainer.py``): any ``nn.Module`` works.
Losses and metrics are exact means over samples, evaluation restores each submodule's
train/eval mode, and nothing runs a forward pass in train mode except training itself.
``fit`` checks its arguments and hands them to a ``Run`` (``convkit.train.run``), which
holds the whole training run; ``evaluate`` and ``predict`` batch through the same path
(``train/data.py``) and read the same task definition (``train/tasks.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..utils.probe import eval_mode
from ..utils.typing import DeviceLike, MetricFn, model_input_shape
from ..utils.validation import (
    check_choice,
    check_module,
    check_optional_bool,
    check_positive_int,
)
from .callbacks import Callback
from .data import Batching, TensorBatches, make_batches
from .devices import Runtime
from .history import History
from .run import Batches, OptimizerSpec, Options, Run, not_a_tensor, score, setup_task
from .tasks import (
    OUTPUTS,
    LossFn,
    MetricSet,
    TaskSpec,
    check_loss,
    check_task,
    loss_name,
    parse_metrics,
    transform_outputs,
)

__all__ = ["evaluate", "fit", "predict"]

#: ``metrics=``: ``None`` (the task's defaults), a name, a callable, a torchmetrics
#: ``Metric``, a sequence of those, or a ``{name: metric}`` dict.
Metrics = str | MetricFn | Sequence[Any] | Mapping[str, Any] | None


def fit(
    model: nn.Module,
    train_data: Any,
    *,
    epochs: int = 10,
    val_data: Any = None,
    validation_split: float | None = None,
    batch_size: int = 128,
    drop_last: bool | None = None,
    num_workers: int = 0,
    optimizer: OptimizerSpec = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss: LossFn | None = None,
    task: str = "auto",
    metrics: Metrics = None,
    device: DeviceLike = "auto",
    progress: bool = True,
    seed: int | None = None,
    precision: str = "32",
    memory_format: str = "auto",
    compile: bool = False,
    data_on_device: bool | None = None,
    callbacks: Sequence[Callback] = (),
    scheduler: Any = None,
    scheduler_interval: str | None = None,
    grad_clip: float | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    require_digest: bool = False,
    nan_guard: bool = True,
    sync_batchnorm: bool = False,
    on_interrupt: str = "raise",
) -> History:
    """Train ``model`` on ``train_data`` for ``epochs`` epochs.

    Works for any ``nn.Module`` with classification-style data. Reported losses and
    metrics are exact means over the samples of each epoch (every batch weighted by its
    size), not means of batch means. Training metrics are measured on
    the training batches as they are trained on (dropout on), as Keras does.

    Args:
        model: The network. It is moved to ``device`` and stays there.
        train_data: A ``DataLoader`` (used as is), a ``Dataset`` (batched with
            ``batch_size``; shuffled unless iterable), or an ``(inputs, targets)`` pair
            of tensors or NumPy arrays. In-memory tensors (a pair or a
            ``TensorDataset``) are batched by slicing, on the device when they fit, in
            the same order a shuffling ``DataLoader`` seeded the same way would give.
            Batches are converted for the model: ``uint8`` inputs scaled to ``[0, 1]``,
            floating-point data cast to the model's dtype, integer labels to int64.
        epochs: Number of passes over ``train_data``.
        val_data: Optional data in the same forms, evaluated after every epoch
            (in eval mode, without gradients); adds ``val_loss`` and ``val_<metric>``.
        validation_split: Instead of ``val_data``, hold out this fraction of in-memory
            ``train_data`` (e.g. ``0.1``) for validation: a random split seeded by
            ``seed`` (0 when ``seed`` is ``None``), the same on every call, with no copy
            of the data.
        batch_size: Samples per batch, for data that isn't a ``DataLoader`` already.
        drop_last: What to do with a last training batch smaller than ``batch_size``.
            ``None`` (default) keeps it, except that a last batch of a single sample is
            skipped when the model has BatchNorm layers (which can't normalise one
            sample in training mode); ``True`` drops every incomplete last batch, as
            fastai does; ``False`` keeps it always (a single-sample batch with BatchNorm
            is then refused before training). A ``DataLoader`` keeps its own
            ``drop_last``. Validation never drops anything.
        num_workers: Worker processes loading a ``Dataset``; the batches are the same
            as with none. A ``DataLoader`` keeps its own setting (a non-zero value with
            one is refused); in-memory tensors need none.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9; a name gets
            PyTorch's ``fused=True`` implementation where the device supports it), a
            ``torch.optim.Optimizer`` subclass (built with ``lr`` and ``weight_decay``),
            a callable ``params -> optimizer``, or an optimizer instance already built on
            the model's parameters (``lr`` and ``weight_decay`` are then not used).
        lr: Learning rate for an optimizer that ``fit`` builds.
        weight_decay: Weight decay for an optimizer that ``fit`` builds.
        loss: ``None`` for the task's default (``nn.CrossEntropyLoss()``,
            ``nn.BCEWithLogitsLoss()`` for binary and multi-label, ``nn.MSELoss()`` for
            regression), a loss module (an instance, or a class such as
            ``nn.CrossEntropyLoss``, built with its defaults), or a callable
            ``(outputs, targets) -> scalar`` returning the batch *mean*.
        task: ``"auto"`` (default) infers the task from the first batch's outputs and
            targets (and the loss): class-index targets are ``"multiclass"`` (dense for
            ``(N, C, H, W)`` outputs with ``(N, H, W)`` class maps), float targets
            that aren't all 0/1 ``"regression"``; a BCE loss means ``"binary"`` or
            ``"multilabel"``. Or name it: ``"multiclass"``, ``"binary"``,
            ``"multilabel"``, ``"regression"``. Ambiguous or contradictory evidence
            raises before training; what was inferred is logged and recorded in the
            History. See the Tasks guide.
        metrics: ``None`` (the task's defaults: ``accuracy``, plus ``iou`` for dense
            outputs; ``binary_accuracy``; ``mae``), or built-in names (``"accuracy"``,
            ``"top5_accuracy"``, ``"binary_accuracy"``, ``"f1"``, ``"precision"``,
            ``"recall"``, ``"iou"``, ``"mae"``, ``"mse"``, ``"rmse"``: exact over the
            epoch), callables ``(outputs, targets) -> scalar`` returning the batch mean
            (recorded under their ``__name__``; a lambda as ``metric_<position>``),
            torchmetrics ``Metric`` objects, or a dict ``{name: metric}``. A metric that
            doesn't fit the task raises before training.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ``"mps"`` or a ``torch.device``. On CUDA, host batches are
            pinned and copied with ``non_blocking=True``.
        progress: Show a tqdm bar per epoch (with the running loss) and one summary line
            per epoch. ``False`` prints nothing.
        seed: Seed Python's, NumPy's and torch's global RNGs (dropout) and the
            shuffling generator, so that a CPU run is repeatable bit for bit. Model
            initialisation happens before ``fit`` and is not covered.
        precision: ``"32"`` or ``32`` (float32, default), ``"bf16"`` (bfloat16 autocast, on CPU
            and CUDA; opt-in since it changes the numerics) or ``"16-mixed"`` (float16
            autocast with a ``GradScaler``, CUDA only).
        memory_format: ``"auto"`` (default: ``channels_last`` for models containing
            ``nn.Conv2d`` on CPU and CUDA, where it is measured faster, ``contiguous``
            otherwise), ``"channels_last"`` or ``"contiguous"``. Applied to the model (it
            keeps that layout) and to every batch.
        compile: Train a ``torch.compile``-d version of the model (it shares the
            parameters). The first epoch then includes compilation time.
        data_on_device: For in-memory tensors: ``None`` (default) moves the whole dataset
            to an accelerator once when it takes at most a quarter of the free device
            memory, else copies each batch; ``True``/``False`` force either way. On the
            CPU nothing is copied.
        callbacks: [`Callback`][convkit.Callback]s, e.g.
            [`EarlyStopping`][convkit.EarlyStopping],
            [`ModelCheckpoint`][convkit.ModelCheckpoint], [`CSVLogger`][convkit.CSVLogger].
        scheduler: A ``torch.optim.lr_scheduler`` instance built on ``optimizer`` (an
            instance), or a callable ``optimizer -> scheduler`` (needed when ``fit``
            builds the optimizer), or a scheduler class whose only required argument is
            the optimizer (``ReduceLROnPlateau``). ``ReduceLROnPlateau`` is given
            ``val_loss`` (``loss`` without ``val_data``).
        scheduler_interval: When the scheduler steps: ``"epoch"`` (after validation),
            ``"step"`` (after every optimizer step, e.g. a ``LambdaLR`` warm-up), or
            ``None`` (default): ``"step"`` for ``OneCycleLR`` and ``CyclicLR``, whose
            schedules count optimizer steps, ``"epoch"`` for every other scheduler.
        grad_clip: Clip the global gradient norm to this value before each step.
        resume_from: A checkpoint from [`ModelCheckpoint`][convkit.ModelCheckpoint] (or
            ``save_checkpoint``): restores the weights, optimizer, scheduler, scaler,
            History, callbacks (matched by ``state_key``) and every RNG, and continues
            after its epoch up to ``epochs``; a run a callback had stopped trains no
            further. Everything is checked against the model, optimizer and callbacks
            before anything changes. A file written after Ctrl-C (mid-epoch weights),
            a checkpoint past ``epochs``, and an optimizer or scheduler of another
            class than the saved one are refused. The saved optimizer and scheduler
            settings are restored with their state, as Lightning does: ``lr``,
            ``weight_decay`` or a scheduler's settings given for this run that differ
            from the saved ones are replaced, and a warning lists them. A CPU run
            resumed this way ends bit for bit where the uninterrupted run would (for
            which ``DataLoader``s, see the Training in depth guide).
        require_digest: Refuse a ``resume_from`` file without a digest (format
            version 1, convkit 0.1) instead of loading it unverified with a warning.
        nan_guard: Check every training batch's loss and gradient norm; a NaN or
            infinite one raises [`NonFiniteLossError`][convkit.NonFiniteLossError]
            (naming the epoch and batch, both from 1) before the optimizer steps on it,
            with the model's buffers (BatchNorm statistics) put back as they were
            before that batch. This reads one flag per batch, which on a GPU waits for
            that batch; ``False`` keeps the loop free of host syncs.
        sync_batchnorm: Convert BatchNorm layers to ``SyncBatchNorm``, so that a
            distributed run computes their statistics over the global batch (CUDA only:
            a distributed run on another device is refused). In one process
            ``SyncBatchNorm`` normalises as ``BatchNorm`` does.
        on_interrupt: What Ctrl-C does once the interrupted state is saved (the
            callbacks' ``on_train_end`` runs first, so ``ModelCheckpoint`` writes its
            interrupted file): ``"raise"`` (default, as Keras and Lightning end a
            script) raises ``KeyboardInterrupt``, whose ``.history`` holds the
            ``History`` of the finished epochs; ``"return"`` returns the
            ``History`` (``history.interrupted`` is then ``True``), for Jupyter. A second
            Ctrl-C stops at once. Distributed, a Ctrl-C on any rank stops every rank at
            the end of the epoch.

    Distributed training: launched with ``torchrun`` (``WORLD_SIZE`` > 1), ``fit``
    initialises the default process group if needed (NCCL on CUDA, Gloo on the CPU),
    uses ``cuda:LOCAL_RANK`` for ``device="auto"``, trains a
    ``DistributedDataParallel`` wrapper, gives each rank its shard of the data
    (``DistributedSampler``, reshuffled every epoch; validation split without
    padding) and all-reduces the epoch totals, so every rank reports the same means.
    Only rank 0 shows progress and writes files.

    Interrupting (Ctrl-C) stops after the current batch, so the model, optimizer and
    scheduler are consistent: the progress bar closes, callbacks get ``on_train_end``
    with ``state.epoch`` the last completed epoch (a ``ModelCheckpoint`` saves to a
    separate ``.interrupted`` file), and the History of the completed epochs is
    returned with ``history.interrupted = True``. A second Ctrl-C raises
    ``KeyboardInterrupt`` at once. (On a thread other than the main one, Python
    delivers no Ctrl-C; the previous SIGINT handler is restored when ``fit`` returns.)

    Returns:
        The [`History`][convkit.History] of per-epoch losses and metrics; it also records
        ``seed``, ``device``, ``task``, ``loss`` and ``metrics``. Each submodule's
        train/eval mode is restored at the end.

    Raises:
        ValueError: For a non-positive ``epochs``/``batch_size``/``lr``, a non-finite
            ``lr``/``weight_decay``/``grad_clip``, an unknown optimizer or metric, a
            scheduler on another optimizer, an unavailable device, empty data, inputs
            that don't match ``model.input_shape``, targets outside
            ``[0, num_classes)``, an ambiguous task, or a loss or metric that contradicts
            the task; all before any training.
        TypeError: For arguments or batches of the wrong type.
        NonFiniteLossError: When the NaN guard trips (a ``FloatingPointError``).

    Examples:
        >>> from convkit import build_cnn, fit, mnist_sample
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> inputs, targets = mnist_sample().tensors
        >>> history = fit(model, (inputs[:256], targets[:256]), epochs=2,
        ...               device="cpu", progress=False, seed=0)
        >>> len(history["loss"]), history.device
        (2, 'cpu')
    """
    check_module("model", model, needs_weights=True)
    options = Options(
        epochs=epochs,
        val_data=val_data,
        validation_split=validation_split,
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=num_workers,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        loss=loss,
        task=task,
        metrics=metrics,
        device=device,
        progress=progress,
        seed=seed,
        precision=precision,
        memory_format=memory_format,
        compile=compile,
        data_on_device=data_on_device,
        callbacks=callbacks,
        scheduler=scheduler,
        scheduler_interval=scheduler_interval,
        grad_clip=grad_clip,
        resume_from=resume_from,
        require_digest=require_digest,
        nan_guard=nan_guard,
        sync_batchnorm=sync_batchnorm,
        on_interrupt=on_interrupt,
    )  # every argument checked, before any work
    run = Run(model, train_data, options)  # data, task, optimizer: checked and set up
    return run.fit()


def _inference_setup(
    model: nn.Module,
    data: Any,
    device: DeviceLike,
    batch_size: int,
    precision: str,
    memory_format: str,
    data_on_device: bool | None,
    *,
    targets: bool,
) -> tuple[Runtime, Batches]:
    """The checks and set-up ``evaluate`` and ``predict`` share, in that order."""
    check_module("model", model)
    batch_size = check_positive_int("batch_size", batch_size)
    runtime = Runtime(model, device, precision, memory_format)
    check_optional_bool("data_on_device", data_on_device, "decide by size")
    spec = Batching(
        "data",
        batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(0),
        device=runtime.device,
        need_targets=targets,
        on_device=data_on_device,
        memory_format=runtime.memory_format,
    )
    batches = make_batches(data, spec, model=model)
    runtime.place(model, memory_format=False)  # the device only: the model keeps its layout
    return runtime, batches


def _outputs(model: nn.Module, batches: Batches, runtime: Runtime) -> torch.Tensor:
    """The model's outputs for every batch, as one float32 CPU tensor.

    With a known number of samples they are written into one tensor allocated up front:
    a small output kept alive after each batch would sit between the batches' large
    temporaries and stop the C allocator from reusing their memory.
    """
    total = batches.num_samples if isinstance(batches, TensorBatches) else None
    result: torch.Tensor | None = None
    parts: list[torch.Tensor] = []
    filled = 0
    with eval_mode(model), torch.inference_mode():
        for batch in batches:
            with runtime.autocast():
                out = model(runtime.format(batch.inputs))
            if not isinstance(out, torch.Tensor):
                raise not_a_tensor(out, batch.inputs)
            if total is None:
                parts.append(out)
                continue
            if result is None:
                result = torch.empty((total, *out.shape[1:]), dtype=torch.float32)
            result[filled : filled + out.shape[0]].copy_(out)
            filled += out.shape[0]
    return result if result is not None else torch.cat(parts).float().cpu()


def _evaluation_metrics(
    model: nn.Module,
    batches: Batches,
    runtime: Runtime,
    history: History | None,
    task: str,
    loss: LossFn | None,
    metrics: Metrics,
) -> MetricSet:
    """``evaluate``'s task, loss and metrics: the given ones, else ``history``'s, else inferred."""
    requests = parse_metrics(metrics)
    kept: MetricSet | None = history.setup if history is not None else None
    if history is not None and kept is None and history.task is not None:
        # a History loaded from a file: only the names survive; rebuild what they name
        task = history.task if task == "auto" else task
        if metrics is None and history.metrics:
            requests = _named(history.metrics, "metrics")
    elif kept is not None:
        task = kept.spec.task if task == "auto" else task
        loss = kept.spec.loss if loss is None else loss
        requests = kept.requests if metrics is None else requests
    chosen = setup_task(
        model, batches, runtime, task=task, loss=loss, requests=requests, name="data"
    )
    if (
        history is not None
        and kept is None
        and history.loss not in (None, loss_name(chosen.spec.loss))
    ):
        raise ValueError(
            f"Invalid value for argument `history`: it was loaded from a file and records the "
            f"loss {history.loss}, which can't be rebuilt from its name; pass loss= as in fit."
        )
    return chosen


def _named(names: list[str], argument: str) -> Any:
    try:
        return parse_metrics(names)
    except ValueError:
        raise ValueError(
            f"Invalid value for argument `history`: it was loaded from a file and records the "
            f"metrics {names}, not all built-in names; pass {argument}= as in fit."
        ) from None


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    history: History | None = None,
    task: str = "auto",
    loss: LossFn | None = None,
    metrics: Metrics = None,
    device: DeviceLike = "auto",
    batch_size: int = 256,
    precision: str = "32",
    memory_format: str = "auto",
    data_on_device: bool | None = None,
) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``data``, as exact means over samples.

    The loss and metrics are those ``fit`` used when ``history`` is the History it
    returned; otherwise ``task``, ``loss`` and ``metrics`` work as in ``fit``, with the
    same inference from the first batch (so a regression model is scored with MSE and
    MAE, never with cross-entropy). Runs in eval mode under ``torch.inference_mode``;
    afterwards every submodule is back in the train/eval mode it was in, and no
    parameter or buffer has changed.

    Args:
        model: The network; it is moved to ``device``.
        data: Data in any form [`fit`][convkit.fit] takes, with targets.
        history: The [`History`][convkit.History] ``fit`` returned: evaluate with its
            task, loss and metrics. ``task``/``loss``/``metrics`` given here override it.
        task: As in ``fit``.
        loss: As in ``fit``; ``None``: ``history``'s, else the task's default.
        metrics: As in ``fit``; ``None``: ``history``'s, else the task's defaults.
        device: As in ``fit``.
        batch_size: Samples per batch for data that isn't a ``DataLoader``.
        precision: As in ``fit``.
        memory_format: As in ``fit``.
        data_on_device: As in ``fit``.

    Returns:
        ``{"loss": ..., "accuracy": ...}`` (one key per metric).

    Raises:
        ValueError: For empty data, data that doesn't match the model or the task, a
            metric that doesn't fit the task, or an unavailable device.
        TypeError: For arguments of the wrong type.

    Examples:
        >>> from convkit import build_cnn, evaluate, mnist_sample
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> scores = evaluate(model, mnist_sample(train=False), device="cpu")
        >>> sorted(scores), model.training
        (['accuracy', 'loss'], True)
    """
    if history is not None and not isinstance(history, History):
        raise TypeError(
            "Invalid type for argument `history`. Expected the History that fit returned. "
            f"Received history={history!r}."
        )
    check_task(task)
    loss_fn = check_loss(loss)
    parse_metrics(metrics)
    runtime, batches = _inference_setup(
        model,
        data,
        device,
        batch_size,
        precision,
        memory_format,
        data_on_device,
        targets=True,
    )
    chosen = _evaluation_metrics(model, batches, runtime, history, task, loss_fn, metrics)
    return score(model, batches, chosen, runtime, "data")


def _prediction_spec(output: Any, task: Any, history: Any) -> TaskSpec | None:
    """The task ``output`` is read for (``None``: raw outputs, or unknown)."""
    check_choice("output", output, OUTPUTS)
    check_task(task)
    if history is not None and not isinstance(history, History):
        raise TypeError(
            "Invalid type for argument `history`. Expected the History that fit returned. "
            f"Received history={history!r}."
        )
    if task != "auto":
        return TaskSpec(task)
    if history is not None and history.setup is not None:
        spec: TaskSpec = history.setup.spec
        return spec
    if history is not None and history.task is not None:  # loaded from a file: names only
        return TaskSpec(history.task, threshold=0.5 if history.loss == "BCELoss()" else 0.0)
    if output != "logits":
        transform_outputs(None, torch.zeros(0), output)  # raises, naming the fix
    return None


def predict(
    model: nn.Module,
    data: Any,
    *,
    output: str = "logits",
    task: str = "auto",
    history: History | None = None,
    device: DeviceLike = "auto",
    batch_size: int = 256,
    precision: str = "32",
    memory_format: str = "auto",
    data_on_device: bool | None = None,
) -> torch.Tensor:
    """Outputs of ``model`` for every sample of ``data``, in order.

    Runs like [`evaluate`][convkit.evaluate]: eval mode, ``torch.inference_mode``, modes
    restored afterwards. One sample without a batch dimension is accepted when its
    shape is the model's ``input_shape``; its result then has no batch dimension either.

    Args:
        model: The network; it is moved to ``device``.
        data: A tensor of inputs, an ``(inputs, targets)`` pair, a ``Dataset`` or a
            ``DataLoader`` (targets, if present, are ignored), or one sample.
        output: ``"logits"`` (default: the raw outputs, for any model), ``"probs"``
            (softmax over the classes for multiclass, sigmoid for binary and
            multi-label) or ``"labels"`` (the arg-max class; 0/1 at the threshold).
            ``"probs"``/``"labels"`` need the task: from ``history`` or ``task``.
        task: ``"multiclass"``, ``"binary"`` or ``"multilabel"`` (the outputs being
            logits), or ``"auto"``: ``history``'s task.
        history: The [`History`][convkit.History] ``fit`` returned.
        device: As in ``fit``.
        batch_size: Samples per batch for data that isn't a ``DataLoader``.
        precision: As in ``fit``; the outputs are returned as float32 either way.
        memory_format: As in ``fit``.
        data_on_device: As in ``fit``.

    Returns:
        A CPU tensor: ``(N, num_classes)`` logits or probabilities, ``(N,)`` class
        labels (multiclass), or labels of the outputs' shape (binary, multi-label).

    Raises:
        ValueError: For ``output="probs"``/``"labels"`` without a task, or for a
            regression; for data that doesn't match the model.

    Examples:
        >>> from convkit import build_cnn, predict
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> predict(model, torch.zeros(5, 1, 28, 28), device="cpu").shape
        torch.Size([5, 10])
        >>> predict(model, torch.zeros(1, 28, 28), output="labels", task="multiclass",
        ...         device="cpu").shape
        torch.Size([])
    """
    spec = _prediction_spec(output, task, history)
    single = isinstance(data, torch.Tensor) and tuple(data.shape) == model_input_shape(model)
    if single:
        data = data.unsqueeze(0)
    runtime, batches = _inference_setup(
        model, data, device, batch_size, precision, memory_format, data_on_device, targets=False
    )
    result = transform_outputs(spec, _outputs(model, batches, runtime), output)
    return result[0] if single else result
