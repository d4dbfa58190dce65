"""Checks of inputs and targets against the model, before they reach it."""

from __future__ import annotations

import torch
from torch import nn

from ._probe import infer_output_shape
from ._typing import model_input_shape, model_num_classes, takes_sample_shape


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
        self._checked_finite = False

    def _check_finite(self, inputs: torch.Tensor) -> None:
        self._checked_finite = True
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
        raise ValueError(
            f"Invalid data in `{self.name}`: {len(bad)} sample(s) hold NaN or inf values (the "
            f"first at index {bad[0]}). Drop or repair them, e.g. with torch.nan_to_num or by "
            "filtering on torch.isfinite(x).flatten(1).all(1)."
        )

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor | None) -> None:
        if not (inputs.is_floating_point() or inputs.dtype == torch.uint8):
            raise TypeError(
                f"Invalid data in `{self.name}`: inputs have dtype {inputs.dtype}; the model "
                "needs floating-point inputs (uint8 images are scaled to [0, 1] by themselves). "
                "Convert them, e.g. inputs.float()."
            )
        if not self._checked_finite:
            self._check_finite(inputs)
        sample = tuple(inputs.shape[1:])
        if self.input_shape is not None and not takes_sample_shape(self.model, sample):
            channels, *size = self.input_shape
            if len(sample) == len(self.input_shape) == 3 and sample == (*size, channels):
                raise ValueError(
                    f"Invalid data in `{self.name}`: inputs of shape {tuple(inputs.shape)} look "
                    f"like channels-last images (N, H, W, C); the model takes (N, "
                    f"{', '.join(map(str, self.input_shape))}). Permute the data, not the model: "
                    "inputs.permute(0, 3, 1, 2) (NumPy: x.transpose(0, 3, 1, 2))."
                )
            raise ValueError(
                f"Invalid data in `{self.name}`: inputs of shape {tuple(inputs.shape)} don't match "
                f"the model's input_shape {self.input_shape}; expected (N, "
                f"{', '.join(map(str, self.input_shape))}). Reshape the data or build the model "
                f"for input_shape={tuple(inputs.shape[1:])}."
            )
        if targets is None or targets.is_floating_point() or targets.dim() != 1:
            return
        if not self._probed:
            # Models without a num_classes attribute: one dry run (eval mode, no_grad,
            # modes restored) to read the number of outputs.
            self._probed = True
            out = infer_output_shape(self.model, tuple(inputs.shape[1:]))
            self.num_classes = out[0] if len(out) == 1 else None
        if self.num_classes is None or self.num_classes < 2 or targets.numel() == 0:
            # one output unit: not class scores; the task inference explains the fix
            return
        if self.ignore_index is not None:
            targets = targets[targets != self.ignore_index]
            if targets.numel() == 0:
                return
        low, high = (int(v) for v in torch.aminmax(targets))
        if low < 0 or high >= self.num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"Invalid data in `{self.name}`: target {bad} is outside [0, {self.num_classes}) "
                f"for a model with {self.num_classes} outputs. Targets must be class indices "
                f"0..{self.num_classes - 1}; build the model with more classes or fix the labels."
            )
