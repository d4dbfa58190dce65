"""``Interpretation``: what a classifier gets wrong, from one pass over labelled data.

After fastai's ``ClassificationInterpretation``: a confusion matrix, the samples with
the largest losses, and per-class precision and recall. The pass accumulates on the
model's device (a fixed-size bincount of ``true * C + predicted`` and the per-sample
losses) and reads the results back to the host once, at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler, TensorDataset

from ..train.data import convert, nonfinite_error
from ..train.devices import accumulator_dtype
from ..utils.display import html_table
from ..utils.probe import eval_mode, model_dtype_device
from ..utils.validation import check_positive_int
from .plotting import grid_figure, new_figure, show_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ClassTable", "Interpretation"]

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True, repr=False)
class ClassTable:
    """Per-class precision, recall and support; ``print`` it for a table.

    Attributes:
        classes: The class names.
        precision: Of the samples predicted as each class, the share that is that class
            (NaN where nothing was predicted as it).
        recall: Of the samples of each class, the share predicted as it (NaN where the
            class has no samples).
        support: Samples of each class.
    """

    classes: list[str]
    precision: list[float]
    recall: list[float]
    support: list[int]

    def __str__(self) -> str:
        width = max(len("class"), *(len(c) for c in self.classes))
        lines = [f"{'class':<{width}}  precision  recall  support"]
        for name, p, r, s in zip(
            self.classes, self.precision, self.recall, self.support, strict=True
        ):
            cells = [f"{v:.3f}" if not math.isnan(v) else "n/a" for v in (p, r)]
            lines.append(f"{name:<{width}}  {cells[0]:>9}  {cells[1]:>6}  {s:>7}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _rows(self) -> list[tuple[str, str, str, int]]:
        def cell(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{value:.3f}"

        return [
            (name, cell(p), cell(r), s)
            for name, p, r, s in zip(
                self.classes, self.precision, self.recall, self.support, strict=True
            )
        ]

    def _repr_html_(self) -> str:
        return html_table(("class", "precision", "recall", "support"), self._rows())


def _tensor_batches(inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> Batches:
    for start in range(0, len(inputs), batch_size):
        yield inputs[start : start + batch_size], targets[start : start + batch_size]


def _loader_batches(loader: DataLoader[Any]) -> Batches:
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(
                "Invalid value for argument `data`. Expected batches of (inputs, targets). "
                f"Received a batch of type {type(batch).__name__}."
            )
        yield batch[0], batch[1]


def _open_data(data: Any, batch_size: int) -> tuple[Batches, Callable[[int], torch.Tensor]]:
    """Batches in order, and a way to fetch sample ``i``'s input afterwards."""
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        data = data.tensors[:2]
    if isinstance(data, (tuple, list)) and len(data) == 2:
        inputs, targets = data
        if not (isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
            raise TypeError(
                "Invalid type for argument `data`. Expected an (inputs, targets) pair of "
                f"tensors. Received ({type(inputs).__name__}, {type(targets).__name__})."
            )
        if len(inputs) != len(targets):
            raise ValueError(
                f"Invalid value for argument `data`: {len(inputs)} inputs but {len(targets)} "
                "targets. Expected as many targets as inputs."
            )
        return _tensor_batches(inputs, targets, batch_size), lambda i: inputs[i]
    if isinstance(data, DataLoader):
        if not isinstance(data.sampler, SequentialSampler):
            raise ValueError(
                "Invalid value for argument `data`. Expected a DataLoader that keeps the "
                "dataset's order (shuffle=False), so that sample i is dataset[i]. Received one "
                f"with a {type(data.sampler).__name__}."
            )
        dataset = data.dataset
        return _loader_batches(data), lambda i: dataset[i][0]
    if isinstance(data, Dataset):
        loader: DataLoader[Any] = DataLoader(data, batch_size=batch_size, shuffle=False)
        return _loader_batches(loader), lambda i: data[i][0]
    raise TypeError(
        "Invalid type for argument `data`. Expected an (inputs, targets) pair of tensors, a "
        f"Dataset or a DataLoader. Received {type(data).__name__}."
    )


def _accumulate(model: nn.Module, batches: Batches) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-sample ``(loss, predicted, probability, target)`` rows and the bin counts.

    Everything stays on the model's device; targets outside ``[0, C)`` count in an
    extra last bin instead of failing on the device.
    """
    dtype, device = model_dtype_device(model)
    acc_dtype = accumulator_dtype(device)
    rows: list[torch.Tensor] = []
    counts: torch.Tensor | None = None
    num_classes = 0
    with eval_mode(model), torch.inference_mode():
        for inputs, targets in batches:
            if targets.dim() != 1 or targets.is_floating_point() or targets.is_complex():
                raise ValueError(
                    "Invalid value for argument `data`. Expected targets that are class "
                    f"indices of shape (N,). Received {targets.dtype} targets of shape "
                    f"{tuple(targets.shape)}."
                )
            if not (inputs.is_floating_point() or inputs.dtype == torch.uint8):
                raise TypeError(
                    f"Invalid data in `data`: inputs have dtype {inputs.dtype}. Expected "
                    "floating-point inputs or uint8 images; convert them, e.g. inputs.float()."
                )
            inputs, _ = convert(inputs, None, dtype)  # uint8 -> [0, 1], as fit does
            inputs, targets = inputs.to(device), targets.to(device)
            finite = torch.isfinite(inputs.flatten(1)).all(1)  # checked after the host read
            logits = model(inputs)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
                raise ValueError(
                    "Invalid value for argument `model`. Expected a classifier returning scores "
                    f"of shape (N, classes). Received outputs {got} for inputs of shape "
                    f"{tuple(inputs.shape)}."
                )
            logits = logits.float()  # (N, C)
            if counts is None:
                num_classes = logits.shape[1]
                counts = torch.zeros(num_classes**2 + 1, dtype=acc_dtype, device=device)
            valid = (targets >= 0) & (targets < num_classes)
            safe = targets.clamp(0, num_classes - 1)
            probability, predicted = logits.softmax(1).max(1)
            bins = torch.where(valid, safe * num_classes + predicted, num_classes**2)
            counts.index_add_(0, bins, torch.ones_like(bins, dtype=acc_dtype))
            loss = F.cross_entropy(logits, safe, reduction="none")
            columns = [loss, predicted, probability, safe, finite]
            rows.append(torch.stack(columns, 1).to(acc_dtype))
    if counts is None:
        raise ValueError("Invalid value for argument `data`: it holds no samples.")
    packed = torch.cat([counts, torch.cat(rows).flatten()]).cpu()  # the one host read
    invalid = int(packed[num_classes**2])
    per_sample = packed[num_classes**2 + 1 :].reshape(-1, 5)
    bad = np.flatnonzero(per_sample[:, 4].numpy() == 0)  # on the host already
    if len(bad):
        raise nonfinite_error("data", [int(i) for i in bad])
    return packed, per_sample, num_classes, invalid


class Interpretation:
    """A classifier's confusion matrix, worst samples and per-class scores on some data.

    Make one with [`from_model`][convkit.viz.Interpretation.from_model]; it holds
    plain CPU tensors, so inspecting it runs nothing again.

    Attributes:
        confusion: ``(C, C)`` counts, rows the true class, columns the predicted one.
        losses: ``(N,)`` cross-entropy of each sample, in data order.
        targets: ``(N,)`` true classes.
        predictions: ``(N,)`` predicted (arg-max) classes.
        probabilities: ``(N,)`` softmax probability of the predicted class.
        classes: ``C`` class names.

    Examples:
        >>> from convkit import build_cnn, mnist_sample
        >>> model = build_cnn((1, 28, 28), 10, channels=(8,), hidden=())
        >>> interp = Interpretation.from_model(model, mnist_sample(train=False))
        >>> interp.confusion.shape, int(interp.confusion.sum())
        (torch.Size([10, 10]), 1000)
        >>> losses, indices = interp.top_losses(3)
        >>> bool(losses[0] >= losses[2]), len(indices)
        (True, 3)
    """

    def __init__(
        self,
        confusion: torch.Tensor,
        losses: torch.Tensor,
        targets: torch.Tensor,
        predictions: torch.Tensor,
        probabilities: torch.Tensor,
        classes: Sequence[str],
        sample: Callable[[int], torch.Tensor],
    ) -> None:
        self.confusion = confusion
        self.losses = losses
        self.targets = targets
        self.predictions = predictions
        self.probabilities = probabilities
        self.classes = list(classes)
        self._sample = sample

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        data: Any,
        *,
        classes: Sequence[str] | None = None,
        batch_size: int = 256,
    ) -> Interpretation:
        """Run ``model`` once over labelled ``data`` and keep what went wrong.

        The model stays on its device and in its modes (the pass runs in eval mode
        under ``torch.inference_mode``, each submodule's mode restored afterwards);
        batches are moved to the model's device.

        Args:
            model: A classifier returning ``(N, classes)`` scores (logits).
            data: An ``(inputs, targets)`` pair of tensors, a ``Dataset`` of
                ``(input, target)`` pairs, or a ``DataLoader`` without shuffling;
                targets are class indices.
            classes: Names of the classes; default ``"0"``, ``"1"``, ...
            batch_size: Samples per batch for data that isn't a ``DataLoader``.

        Returns:
            The interpretation, with every result on the CPU.

        Raises:
            TypeError: For a model or data of the wrong type.
            ValueError: For empty data, a shuffling ``DataLoader``, targets that aren't
                class indices of the model's classes, or ``classes`` of the wrong length.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(
                "Invalid type for argument `model`. Expected an nn.Module. "
                f"Received {type(model).__name__}."
            )
        check_positive_int("batch_size", batch_size)
        if classes is not None and (
            isinstance(classes, str) or not all(isinstance(c, str) for c in classes)
        ):
            raise TypeError(
                "Invalid type for argument `classes`. Expected a sequence of class names "
                f"(str). Received classes={classes!r}."
            )
        batches, sample = _open_data(data, batch_size)
        packed, rows, num_classes, invalid = _accumulate(model, batches)
        if invalid:
            raise ValueError(
                f"Invalid value for argument `data`: {invalid} targets are outside the model's "
                f"classes. Expected class indices in [0, {num_classes - 1}]."
            )
        names = [str(i) for i in range(num_classes)] if classes is None else list(classes)
        if len(names) != num_classes:
            raise ValueError(
                f"Invalid value for argument `classes`. Expected {num_classes} names, one per "
                f"model output. Received {len(names)}."
            )
        confusion = packed[: num_classes**2].round().long().reshape(num_classes, num_classes)
        return cls(
            confusion=confusion,
            losses=rows[:, 0].float(),
            targets=rows[:, 3].round().long(),
            predictions=rows[:, 1].round().long(),
            probabilities=rows[:, 2].float(),
            classes=names,
            sample=sample,
        )

    def confusion_matrix(self, *, normalize: bool = False) -> torch.Tensor:
        """The counts, or with ``normalize`` each row divided by its total (recall on the
        diagonal; rows of classes without samples are 0)."""
        if not normalize:
            return self.confusion.clone()
        totals = self.confusion.sum(1, keepdim=True).clamp(min=1)
        return self.confusion.double() / totals

    def top_losses(self, k: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` largest per-sample losses, largest first, and the samples' indices."""
        check_positive_int("k", k)
        values, indices = self.losses.topk(min(k, len(self.losses)))
        return values, indices

    def per_class(self) -> ClassTable:
        """Precision, recall and support of every class, from the confusion matrix."""
        matrix = self.confusion.double()
        correct = matrix.diagonal()
        predicted, actual = matrix.sum(0), matrix.sum(1)
        precision = torch.where(predicted > 0, correct / predicted.clamp(min=1), math.nan)
        recall = torch.where(actual > 0, correct / actual.clamp(min=1), math.nan)
        return ClassTable(
            classes=list(self.classes),
            precision=precision.tolist(),
            recall=recall.tolist(),
            support=[int(v) for v in actual.tolist()],
        )

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        """``(true, predicted, count)`` for every mistake made at least ``min_count`` times,
        most frequent first."""
        check_positive_int("min_count", min_count)
        off_diagonal = self.confusion.clone().fill_diagonal_(0)
        pairs = [
            (self.classes[i], self.classes[j], int(off_diagonal[i, j]))
            for i, j in (off_diagonal >= min_count).nonzero().tolist()
        ]
        return sorted(pairs, key=lambda pair: -pair[2])

    def plot_confusion_matrix(self, *, normalize: bool = False) -> Figure:
        """The confusion matrix as an image, each cell annotated (up to 20 classes)."""
        matrix = self.confusion_matrix(normalize=normalize).double()
        size = max(3.5, 0.45 * len(self.classes) + 1.5)
        fig = new_figure("plot_confusion_matrix", (size + 0.8, size))
        ax = fig.subplots()
        image = ax.imshow(matrix.numpy(), cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, shrink=0.8)
        ticks = range(len(self.classes))
        ax.set_xticks(ticks, self.classes)
        ax.set_yticks(ticks, self.classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(self.classes) <= 20:
            high = float(matrix.max()) or 1.0
            for (i, j), value in zip(
                ((i, j) for i in ticks for j in ticks), matrix.flatten().tolist(), strict=True
            ):
                text = f"{value:.2f}" if normalize else f"{int(value)}"
                colour = "white" if value > high / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
        return fig

    def plot_top_losses(self, k: int = 9) -> Figure:
        """The ``k`` samples with the largest losses: input, true and predicted class,
        the prediction's probability and the loss."""
        losses, indices = self.top_losses(k)
        fig, axes = grid_figure("plot_top_losses", len(indices), size=1.9)
        for ax, loss, index in zip(axes, losses.tolist(), indices.tolist(), strict=True):
            sample = torch.as_tensor(self._sample(index))
            if sample.dim() == 2:  # 1-D signal (C, L)
                ax.plot(sample.T.float().numpy(), lw=1)
            else:
                show_image(ax, sample if sample.dim() == 3 else sample[:, sample.shape[1] // 2])
            true = self.classes[int(self.targets[index])]
            pred = self.classes[int(self.predictions[index])]
            prob = float(self.probabilities[index])
            ax.set_title(f"true {true}, pred {pred}\np={prob:.2f}, loss {loss:.2f}", fontsize=8)
        return fig

    @property
    def accuracy(self) -> float:
        """The share of samples whose predicted class is the true one."""
        return float(self.confusion.diagonal().sum()) / max(int(self.confusion.sum()), 1)

    def __repr__(self) -> str:
        return (
            f"Interpretation(samples={len(self.losses)}, classes={len(self.classes)}, "
            f"accuracy={self.accuracy:.4f})"
        )

    def _repr_html_(self) -> str:
        confused = self.most_confused()[:5]
        footer = [
            "Most confused (true → predicted, count): "
            + ", ".join(f"{t} → {p} ({n})" for t, p, n in confused)
        ]
        caption = (
            f"Interpretation: {len(self.losses)} samples, {len(self.classes)} classes, "
            f"accuracy {self.accuracy:.4f}"
        )
        return html_table(
            ("class", "precision", "recall", "support"),
            self.per_class()._rows(),
            caption=caption,
            footer=footer if confused else (),
        )
