"""What ``fit`` steps with: the optimizer, the loss and the LR scheduler, resolved from
what the user passed and checked before any work."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from ..utils.validation import check_choice

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerSpec = (
    str | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer
)

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, **kw: torch.optim.SGD(params, momentum=0.9, **kw),
}

#: Schedulers whose schedule counts optimizer steps: stepped after every batch unless
#: ``scheduler_interval="epoch"`` says otherwise.
STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)

SCHEDULER_INTERVALS = ("epoch", "step")


def resolve_loss(loss: Any) -> LossFn | None:
    """The loss callable; ``None`` stays ``None`` (the task picks the default).

    A loss *class* such as ``nn.CrossEntropyLoss`` is instantiated with its defaults.
    """
    if loss is None:
        return None
    if isinstance(loss, type):
        if not issubclass(loss, nn.Module):
            raise TypeError(
                f"Invalid type for argument `loss`. {loss.__name__} is a class but not a loss "
                "module; pass an instance such as nn.CrossEntropyLoss()."
            )
        try:
            instance: LossFn = loss()
        except TypeError as err:
            raise TypeError(
                f"Invalid value for argument `loss`: the class {loss.__name__} can't be built "
                f"without arguments ({err}); pass an instance, e.g. loss={loss.__name__}(...)."
            ) from None
        return instance
    if not callable(loss):
        raise TypeError(
            "Invalid type for argument `loss`. Expected None (the task's default), a loss "
            "module such as nn.CrossEntropyLoss() or a callable (outputs, targets) -> scalar "
            f"tensor. Received loss={loss!r}."
        )
    return loss  # type: ignore[no-any-return]


def check_optimizer(optimizer: Any, model: nn.Module) -> None:
    """Refuse an unknown name, a wrong type, an optimizer over foreign parameters, or a
    model with nothing to train."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        params = list(model.parameters())
        if not any(p.requires_grad for p in params):
            state = (
                f"all {len(params)} parameter tensors are frozen (requires_grad=False)"
                if params
                else "it has no parameters"
            )
            raise ValueError(
                f"Invalid value for argument `model`: {state}, so there is nothing to train. "
                "Unfreeze what should learn (p.requires_grad_(True) for p in "
                "model.parameters()), or use evaluate/predict for a model that only infers."
            )
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"Invalid value for argument `optimizer`: unknown name {optimizer!r}. Valid names "
                f"are {', '.join(map(repr, OPTIMIZERS))}, or pass a torch.optim.Optimizer "
                "subclass, a callable params -> optimizer, or an optimizer instance."
            )
    elif isinstance(optimizer, torch.optim.Optimizer):
        check_optimizer_params(optimizer, model)
    elif not callable(optimizer):
        raise TypeError(
            "Invalid type for argument `optimizer`. Expected a name ('adam', 'adamw', 'sgd'), a "
            "torch.optim.Optimizer subclass or instance, or a callable params -> optimizer. "
            f"Received optimizer={optimizer!r}."
        )


def check_optimizer_params(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    owned = {id(p) for p in model.parameters()}
    foreign = sum(
        1 for group in optimizer.param_groups for p in group["params"] if id(p) not in owned
    )
    if foreign:
        raise ValueError(
            f"Invalid value for argument `optimizer`: it holds {foreign} parameter tensor(s) that "
            "don't belong to `model`. Build it on model.parameters(), or pass a name or class "
            "and let fit build it."
        )


def named_optimizer(
    name: str, params: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Build a named optimizer, with PyTorch's fused kernel where the parameters allow it.

    ``fused=True`` is the same algorithm in one kernel per step instead of a dozen small
    ops per parameter tensor. It is used for real floating-point parameters on the CPU or
    CUDA only, since PyTorch checks the parameters only at the first step, too late to
    fall back; a version without a fused CPU kernel refuses it when the optimizer is
    built, and the regular implementation is used then.
    """
    factory = OPTIMIZERS[name]
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return factory(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:
            pass
    return factory(params, lr=lr, weight_decay=weight_decay)


def make_optimizer(
    optimizer: OptimizerSpec, model: nn.Module, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer ``fit`` steps, built on the model's trainable parameters if needed."""
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(optimizer, torch.optim.Optimizer):
        built = optimizer
    elif isinstance(optimizer, str):
        built = named_optimizer(optimizer, params, lr, weight_decay)
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls = cast(Callable[..., torch.optim.Optimizer], optimizer)  # takes lr=, weight_decay=
        built = cls(params, lr=lr, weight_decay=weight_decay)
    else:
        built = cast(Callable[..., Any], optimizer)(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(
                f"Invalid value for argument `optimizer`: calling {optimizer!r} on the "
                f"parameters returned {type(built).__name__}, not a torch.optim.Optimizer."
            )
    check_optimizer_params(built, model)
    return built


def _is_scheduler(obj: Any) -> bool:
    return isinstance(
        obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    ) or (not isinstance(obj, type) and callable(getattr(obj, "step", None)))


def check_scheduler(scheduler: Any, optimizer: Any, interval: Any) -> None:
    """Refuse, before any work, a scheduler ``fit`` could not step correctly.

    A scheduler *class* is accepted when the optimizer is its only required argument
    (``ReduceLROnPlateau``); a class that needs more (``StepLR``'s ``step_size``) is
    refused, naming what to pass. An instance must be built on ``fit``'s optimizer.
    """
    if interval is not None:
        check_choice("scheduler_interval", interval, SCHEDULER_INTERVALS)
    if scheduler is None:
        return
    if isinstance(scheduler, type):
        required = [
            p.name
            for p in list(inspect.signature(scheduler).parameters.values())[1:]
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if required:
            raise TypeError(
                f"Invalid value for argument `scheduler`: the class {scheduler.__name__} needs "
                f"{', '.join(required)}. Pass a function optimizer -> scheduler, e.g. "
                f"scheduler=lambda opt: {scheduler.__name__}(opt, {required[0]}=...)."
            )
        return
    if _is_scheduler(scheduler):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                "Invalid value for argument `scheduler`: a scheduler instance is built on an "
                "optimizer, but fit builds its own from optimizer="
                f"{optimizer!r}, so the scheduler would never change its learning rate. Pass "
                f"a function instead: scheduler=lambda opt: {type(scheduler).__name__}(opt, ...)."
            )
        _check_scheduler_optimizer(scheduler, optimizer)
        return
    if not callable(scheduler):
        raise TypeError(
            "Invalid type for argument `scheduler`. Expected a torch LR scheduler built on the "
            "optimizer, or a callable optimizer -> scheduler. "
            f"Received scheduler={scheduler!r}."
        )


def _check_scheduler_optimizer(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    owner = getattr(scheduler, "optimizer", optimizer)
    if owner is not optimizer:
        raise ValueError(
            f"Invalid value for argument `scheduler`: {type(scheduler).__name__} is built on "
            "another optimizer than the one fit steps, so it would never change the learning "
            "rate. Build it on the same optimizer, or pass a function optimizer -> scheduler."
        )


def build_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> Any:
    """The scheduler instance for ``optimizer`` (``scheduler`` already checked)."""
    if scheduler is None or _is_scheduler(scheduler):
        return scheduler
    built = scheduler(optimizer)
    if not _is_scheduler(built):
        raise TypeError(
            f"Invalid value for argument `scheduler`: calling it on the optimizer returned "
            f"{type(built).__name__}, which has no step() method."
        )
    _check_scheduler_optimizer(built, optimizer)
    return built


def steps_per_batch(scheduler: Any, interval: str | None) -> bool:
    """Whether ``scheduler`` is stepped after every batch (else after every epoch)."""
    if scheduler is None:
        return False
    if interval is None:
        return isinstance(scheduler, STEP_SCHEDULERS)
    return interval == "step"


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first parameter group's learning rate, as a float."""
    return float(optimizer.param_groups[0]["lr"])
