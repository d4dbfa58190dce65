"""Argument checks shared by every public function.

Each check raises before any work is done, with a message in one shape (after Keras):
what the argument is, what was expected, what was received and, where one exists,
how to fix it.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Return ``value`` if it is a (strictly) positive ``int``, else raise."""
    # bool is an int subclass; ``channels=True`` is always a mistake. NumPy integers
    # (``np.int64(2)``) are Integral and mean what they say.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected an int. "
            f"Received {name}={value!r} of type {type(value).__name__}."
        )
    if value < 0 or (value == 0 and not allow_zero):
        bound = "a non-negative" if allow_zero else "a strictly positive"
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected {bound} int. Received {name}={value!r}."
        )
    return int(value)


def check_int_or_tuple(
    name: str,
    value: Any,
    length: int = 2,
    *,
    allow_zero: bool = False,
    meaning: str = "one per spatial dimension",
) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ``length`` positive ints, else raise.

    An int is repeated ``length`` times; a sequence must have exactly ``length`` entries
    (``meaning`` says what they stand for in the message, e.g. "(before, after)").
    """
    kind = "non-negative" if allow_zero else "positive"
    expected = (
        f"Expected a {kind} int or a tuple of {length} {kind} ints ({meaning}). "
        f"Received {name}={value!r}."
    )
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != length:
            raise ValueError(f"Invalid value for argument `{name}`. {expected}")
        items = tuple(value)
    else:
        items = (value,) * length
    for item in items:
        try:
            check_positive_int(name, item, allow_zero=allow_zero)
        except (TypeError, ValueError) as err:
            kind_of_error = "type" if isinstance(err, TypeError) else "value"
            raise type(err)(f"Invalid {kind_of_error} for argument `{name}`. {expected}") from None
    return tuple(int(item) for item in items)


def check_groups(in_channels: int, out_channels: int, groups: Any) -> int:
    """Return ``groups`` if it is a positive int dividing both channel counts, else raise."""
    check_positive_int("groups", groups)
    if in_channels % groups or out_channels % groups:
        divisors = [
            g
            for g in range(1, min(in_channels, out_channels) + 1)
            if in_channels % g == 0 and out_channels % g == 0
        ]
        raise ValueError(
            "Invalid value for argument `groups`. Expected a divisor of both "
            f"in_channels={in_channels} and out_channels={out_channels} (one of "
            f"{', '.join(map(str, divisors))}). Received groups={groups}."
        )
    return int(groups)


def check_positive_int_sequence(
    name: str, value: Any, *, example: str, allow_empty: bool
) -> tuple[int, ...]:
    """Return ``value`` as a tuple of positive ints (e.g. ``channels``, ``hidden``), else raise."""
    kind = "sequence" if allow_empty else "non-empty sequence"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected a {kind} of positive ints, e.g. "
            f"{example}. Received {name}={value!r}."
        )
    if (not value and not allow_empty) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a {kind} of positive ints, e.g. "
            f"{example}. Received {name}={value!r}."
        )
    return tuple(value)


def check_probability(name: str, value: Any) -> float:
    """Return ``value`` as a float in ``[0, 1)``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected a float in [0, 1). "
            f"Received {name}={value!r} of type {type(value).__name__}."
        )
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a float in [0, 1) "
            f"(the probability of zeroing an element). Received {name}={value!r}."
        )
    return float(value)


def check_non_negative_float(name: str, value: Any, *, strict: bool = False) -> float:
    """Return ``value`` as a float that is >= 0 (> 0 when ``strict``), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected a number. "
            f"Received {name}={value!r} of type {type(value).__name__}."
        )
    if value < 0 or (strict and value == 0) or value != value:  # value != value: NaN
        bound = "strictly positive" if strict else "non-negative"
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a {bound} number. "
            f"Received {name}={value!r}."
        )
    return float(value)


def parse_order(name: str, order: Any, stages: Sequence[str], required: str) -> tuple[str, ...]:
    """Split a dash-separated ``order`` string into distinct, known stage names."""
    if not isinstance(order, str):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected a dash-separated string such as "
            f"{'-'.join(stages)!r}. Received {name}={order!r}."
        )
    parts = tuple(part.strip() for part in order.split("-"))
    unknown = [part for part in parts if part not in stages]
    if unknown:
        raise ValueError(
            f"Invalid value for argument `{name}`: unknown stage {unknown[0]!r}. Valid stages "
            f"are {', '.join(map(repr, stages))}, e.g. {'-'.join(stages)!r}. "
            f"Received {name}={order!r}."
        )
    repeated = sorted({part for part in parts if parts.count(part) > 1})
    if repeated:
        raise ValueError(
            f"Invalid value for argument `{name}`: stage {repeated[0]!r} appears more than once. "
            f"Each stage may appear at most once. Received {name}={order!r}."
        )
    if required not in parts:
        raise ValueError(
            f"Invalid value for argument `{name}`: it must contain {required!r}. "
            f"Received {name}={order!r}; for example {'-'.join(stages)!r}."
        )
    return parts


def check_finite_float(name: str, value: Any, *, strict: bool = False) -> float:
    """Like ``check_non_negative_float``, and also refuse ``inf``."""
    number = check_non_negative_float(name, value, strict=strict)
    if not math.isfinite(number):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a finite number; {name}={value!r} "
            "would make every weight NaN after the first step."
        )
    return number


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False``, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected True or False. "
            f"Received {name}={value!r}."
        )
    return value


def check_optional_bool(name: str, value: Any, none_means: str) -> bool | None:
    """Return ``value`` if it is ``None``, ``True`` or ``False``, else raise ``TypeError``."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected None ({none_means}), True or False. "
            f"Received {name}={value!r}."
        )
    return value


def check_seed(value: Any) -> int | None:
    """Return ``seed`` as an int in ``[0, 2**32)`` (what NumPy's seeding takes), or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            "Invalid type for argument `seed`. Expected None or an int in [0, 2**32). "
            f"Received seed={value!r} of type {type(value).__name__}."
        )
    number = int(value)
    if not 0 <= number < 2**32:
        raise ValueError(
            "Invalid value for argument `seed`. Expected an int in [0, 2**32). "
            f"Received seed={value!r}."
        )
    return number


def closest_name(name: str, names: Iterable[str]) -> str | None:
    """The name in ``names`` that ``name`` most likely meant: one it begins (Keras'
    ``val_acc`` for ``val_accuracy``), else the closest spelling; ``None``: none near.

    Examples:
        >>> closest_name("val_acc", ["loss", "accuracy", "val_loss", "val_accuracy"])
        'val_accuracy'
        >>> closest_name("val_los", ["loss", "val_loss"]), closest_name("dice", ["loss"])
        ('val_loss', None)
    """
    names = list(names)
    begun = [n for n in names if n.startswith(name) and n != name]
    if begun:
        return min(begun, key=len)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    return close[0] if close else None


def check_module(name: str, value: Any, *, needs_weights: bool = False) -> None:
    """Raise ``TypeError`` unless ``value`` is a ``torch.nn.Module``.

    With ``needs_weights``, also raise ``ValueError`` for a lazy layer that has no weights
    yet (training, the range test and export need them before the first batch).

    Examples:
        >>> check_module("model", nn.Sequential(nn.Flatten(), nn.LazyLinear(3)), needs_weights=True)
        Traceback (most recent call last):
        ...
        ValueError: Invalid value for argument `model`: layer '1' (LazyLinear) is lazy ...
    """
    if not isinstance(value, nn.Module):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected a torch.nn.Module. "
            f"Received {type(value).__name__}."
        )
    for path, module in value.named_modules() if needs_weights else ():
        lazy = isinstance(module, nn.modules.lazy.LazyModuleMixin)
        if lazy and module.has_uninitialized_params():
            kind = type(module).__name__
            where = f"layer {path!r} ({kind})" if path else f"the model ({kind})"
            raise ValueError(
                f"Invalid value for argument `{name}`: {where} is lazy and has no weights "
                "yet; it sizes them from the first batch it sees. Run one batch through the "
                "model first, e.g. model(x[:2]), or build the layer with its sizes."
            )


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of the string ``choices``, else raise."""
    if not isinstance(value, str):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected one of "
            f"{', '.join(map(repr, choices))}. Received {name}={value!r}."
        )
    if value not in choices:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected one of "
            f"{', '.join(map(repr, choices))}. Received {name}={value!r}."
        )
    return value


#: How a sample shape reads for 1, 2 and 3 spatial dimensions, in messages.
SHAPE_NAMES = {1: "(C, L)", 2: "(C, H, W)", 3: "(C, D, H, W)"}


def check_dims(value: Any) -> int:
    """Return ``value`` if it is 1, 2 or 3 spatial dimensions, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            "Invalid type for argument `dims`. Expected the int 1, 2 or 3. "
            f"Received dims={value!r} of type {type(value).__name__}."
        )
    if value not in (1, 2, 3):
        raise ValueError(
            "Invalid value for argument `dims`. Expected 1 (sequences, nn.Conv1d), 2 (images, "
            f"nn.Conv2d) or 3 (volumes, nn.Conv3d). Received dims={value}."
        )
    return int(value)


def check_sample_shape(
    name: str, value: Any, lengths: Sequence[int] | None, example: str
) -> tuple[int, ...]:
    """Return ``value`` as a tuple of positive ints (of one of ``lengths``), else raise.

    ``lengths=None`` accepts any non-empty shape.
    """
    if lengths is None:
        counts = "one or more"
    else:
        counts = (
            " or ".join(map(str, lengths))
            if len(lengths) < 3
            else (f"{', '.join(map(str, lengths[:-1]))} or {lengths[-1]}")
        )
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or not value
        or (lengths is not None and len(value) not in lengths)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected {counts} positive ints: {example}. "
            f"Received {name}={value!r}."
        )
    return tuple(int(v) for v in value)
