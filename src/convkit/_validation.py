"""Argument checks shared by every public function.

Each check raises before any work is done, with a message in one shape (after Keras):
what the argument is, what was expected, what was received and, where one exists,
how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Return ``value`` if it is a (strictly) positive ``int``, else raise."""
    # bool is an int subclass; ``channels=True`` is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected an int. "
            f"Received {name}={value!r} of type {type(value).__name__}."
        )
    if value < 0 or (value == 0 and not allow_zero):
        bound = "a non-negative" if allow_zero else "a strictly positive"
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected {bound} int. Received {name}={value!r}."
        )
    return value


def check_int_or_pair(name: str, value: Any, *, allow_zero: bool = False) -> tuple[int, int]:
    """Return ``value`` as an ``(h, w)`` pair of positive ints, else raise."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(
                f"Invalid value for argument `{name}`. Expected an int or a pair of ints "
                f"(height, width). Received {name}={value!r}."
            )
        pair = tuple(value)
    else:
        pair = (value, value)
    for item in pair:
        try:
            check_positive_int(name, item, allow_zero=allow_zero)
        except (TypeError, ValueError) as err:
            kind = "non-negative" if allow_zero else "positive"
            raise type(err)(
                f"Invalid value for argument `{name}`. Expected a {kind} int or a pair of "
                f"{kind} ints (height, width). Received {name}={value!r}."
            ) from None
    return (int(pair[0]), int(pair[1]))


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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
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
