"""How one layer maps positions along each spatial dimension: the layer geometry.

For every layer a stack function meets, ``geometry(layer)``
gives a ``Geometry`` that answers, per spatial dimension ``d``:

- ``length(d, n)``: the output length for an input of length ``n`` (below 1: too small);
- ``span(d, lo, hi, n)``: the input positions that outputs ``lo..hi`` depend on, as a
  range (positions below 0 or from ``n`` on are zero padding the layer reads);
- ``min_length(d, m)``: the smallest input length whose output is at least ``m``
  (``None``: no input is large enough).

Convolutions, pooling, transposed convolutions, upsampling, pixel (un)shuffling,
adaptive pooling and padding layers are computed from torch's own formulas (the
"Shape" sections of their documentation); element-wise layers keep every position.
Any other layer is refused with an error naming it: a layer of unknown geometry is
never taken for the identity.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.validation import check_int_or_tuple
from . import torch_layers as T
from .formulas import (
    conv_output_size,
    conv_transpose_output_size,
    padding_pairs,
    pool_output_size,
)

__all__ = ["ElementWise", "Geometry", "geometry"]

Pairs = tuple[tuple[int, int], ...]


class Geometry:
    """How a layer maps positions; subclasses implement one kind of layer.

    Attributes:
        dims: The number of spatial dimensions the layer works on; ``None`` for any.
        shift_invariant: Whether every output position depends on a window of the same
            shape (then ``affine`` describes it); upsampling and adaptive pooling vary.
    """

    dims: int | None
    shift_invariant = True

    def length(self, d: int, n: int) -> int:
        """Output length along dimension ``d`` for an input of length ``n``."""
        return n

    def affine(self, d: int) -> tuple[int, int, int] | None:
        """``(stride, before, extent)`` when ``span(lo, hi)`` is
        ``(lo * stride - before, hi * stride - before + extent)``; else ``None``."""
        return 1, 0, 0

    def span(self, d: int, lo: int, hi: int, n: int) -> tuple[int, int]:
        """Input positions ``(first, last)`` that outputs ``lo..hi`` depend on.

        ``first > last`` when they depend on no input position.
        """
        stride, before, extent = self.affine(d) or (1, 0, 0)
        return lo * stride - before, hi * stride - before + extent

    def min_length(self, d: int, m: int) -> int | None:
        """The smallest input length ``n >= 1`` with ``length(d, n) >= m``."""
        return _smallest(lambda n: self.length(d, n) >= m, self._guess(d, m))

    def _guess(self, d: int, m: int) -> int:
        return m


def _smallest(fits: Any, guess: int) -> int:
    """The smallest ``n >= 1`` with ``fits(n)``, for a monotone ``fits``, near ``guess``.

    An exact guess costs two calls; otherwise the search gallops from it to a bracket,
    then bisects, so it stays logarithmic in the guess's error.
    """
    guess, step = max(1, guess), 1
    if fits(guess):
        low, high = guess - 1, guess
        while low >= 1 and fits(low):
            high, step = low, step * 2
            low = max(0, high - step)
    else:
        low, high = guess, guess + 1
        while not fits(high):
            low, step = high, step * 2
            high = low + step
    while high - low > 1:  # fits(high), and low == 0 or not fits(low)
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


@dataclass(frozen=True)
class ElementWise(Geometry):
    """A layer that keeps every position where it is (norms, activations, dropout ...)."""

    dims: int | None = None


@dataclass(frozen=True)
class Window(Geometry):
    """A window of ``kernel`` taps ``dilation`` apart, every ``stride`` positions, over
    an input with ``padding`` zeros before and after: convolutions and pooling."""

    dims: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Pairs
    pool: bool = False  # torch's pooling rule: ceil_mode, and padding at most half
    ceil_mode: bool = False
    whole_window: bool = False  # torch's avg_pool3d refuses an input shorter than its window

    def length(self, d: int, n: int) -> int:
        k, s, dil, (before, after) = (
            self.kernel[d],
            self.stride[d],
            self.dilation[d],
            self.padding[d],
        )
        if self.whole_window and n < k:
            return 0
        if self.pool:
            return pool_output_size(
                n, k, stride=s, padding=before, dilation=dil, ceil_mode=self.ceil_mode
            )
        return conv_output_size(n, k, stride=s, padding=(before, after), dilation=dil)

    def affine(self, d: int) -> tuple[int, int, int]:
        return self.stride[d], self.padding[d][0], self.dilation[d] * (self.kernel[d] - 1)

    def _guess(self, d: int, m: int) -> int:
        stride, before, extent = self.affine(d)
        return (m - 1) * stride + extent + 1 - before - self.padding[d][1]


@dataclass(frozen=True)
class Unshuffle(Window):
    """``nn.PixelUnshuffle(r)``: blocks of ``r`` positions become channels."""

    name: str = "PixelUnshuffle"

    def length(self, d: int, n: int) -> int:
        r = self.kernel[d]
        if n >= 1 and n % r:
            raise ValueError(
                f"Invalid value for argument `size`: {self.name}(downscale_factor={r}) needs "
                f"sizes divisible by {r}, as torch does. Received a size of {n}."
            )
        return n // r

    def min_length(self, d: int, m: int) -> int:
        return m * self.kernel[d]


@dataclass(frozen=True)
class Transposed(Geometry):
    """``nn.ConvTranspose1d/2d/3d``: input ``i`` reaches outputs ``i*S - P + k*D``."""

    dims: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    shift_invariant = False

    def length(self, d: int, n: int) -> int:
        return conv_transpose_output_size(
            n,
            self.kernel[d],
            stride=self.stride[d],
            padding=self.padding[d],
            output_padding=self.output_padding[d],
            dilation=self.dilation[d],
        )

    def affine(self, d: int) -> None:
        return None

    def span(self, d: int, lo: int, hi: int, n: int) -> tuple[int, int]:
        k, s, dil, p = self.kernel[d], self.stride[d], self.dilation[d], self.padding[d]
        first = max(0, -(-(lo + p - dil * (k - 1)) // s))
        last = min(n - 1, (hi + p) // s)
        # with dilation, an input's taps can all step over a short run of outputs
        hits = [i for i in range(first, last + 1) if _tap_in(i * s - p, dil, k, lo, hi)]
        return (hits[0], hits[-1]) if hits else (1, 0)

    def _guess(self, d: int, m: int) -> int:
        k, s, dil, p = self.kernel[d], self.stride[d], self.dilation[d], self.padding[d]
        return -(-(m - 1 + 2 * p - dil * (k - 1) - self.output_padding[d]) // s) + 1


def _tap_in(start: int, dilation: int, kernel: int, lo: int, hi: int) -> bool:
    """Whether one of ``start + t * dilation`` (``0 <= t < kernel``) lies in ``lo..hi``."""
    first = max(0, -(-(lo - start) // dilation))
    return first < kernel and start + first * dilation <= hi


@dataclass(frozen=True)
class Upsample(Geometry):
    """``nn.Upsample`` and its subclasses: ``size`` or ``floor(n * scale_factor)``.

    Which inputs an output reads is asked from torch itself (``F.interpolate`` of a
    one-hot basis, in float64), so every mode and ``align_corners`` is exact.
    """

    dims: int | None
    size: Any
    scale_factor: Any
    mode: str
    align_corners: bool | None
    recompute_scale_factor: bool | None
    shift_invariant = False

    def _per_dim(self, value: Any, d: int) -> Any:
        return value[d] if isinstance(value, (tuple, list)) else value

    def length(self, d: int, n: int) -> int:
        if self.size is not None:
            return int(self._per_dim(self.size, d))
        return math.floor(n * float(self._per_dim(self.scale_factor, d)))

    def affine(self, d: int) -> None:
        return None

    def span(self, d: int, lo: int, hi: int, n: int) -> tuple[int, int]:
        sources = self._sources(d, n)
        reads = [sources[o] for o in range(max(lo, 0), min(hi, len(sources) - 1) + 1)]
        return (min(r[0] for r in reads), max(r[1] for r in reads)) if reads else (1, 0)

    @functools.lru_cache(maxsize=64)  # noqa: B019  (frozen, hashable; few sizes per model)
    def _sources(self, d: int, n: int) -> list[tuple[int, int]]:
        spatial = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}.get(self.mode, 1)
        axis = min(d, spatial - 1)  # the basis runs along this axis, the others have length 1
        shape = [n if i == axis else 1 for i in range(spatial)]
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape)
        if self.size is not None:
            kwargs: dict[str, Any] = {
                "size": [self.length(d, n) if i == axis else 1 for i in range(spatial)]
            }
        else:
            factor = float(self._per_dim(self.scale_factor, d))
            kwargs = {
                "scale_factor": [factor if i == axis else 1.0 for i in range(spatial)],
                "recompute_scale_factor": self.recompute_scale_factor,
            }
        weights = F.interpolate(basis, mode=self.mode, align_corners=self.align_corners, **kwargs)
        weights = weights.reshape(n, -1)  # (input position, output position)
        reads = []
        for o in range(weights.shape[1]):
            used = weights[:, o].nonzero()
            reads.append((int(used.min()), int(used.max())))
        return reads

    def _guess(self, d: int, m: int) -> int:
        if self.size is not None:
            return 1
        return math.ceil(m / float(self._per_dim(self.scale_factor, d)))

    def min_length(self, d: int, m: int) -> int | None:
        if self.size is not None and self.length(d, 1) < m:
            return None  # a fixed output size: no input makes it larger
        return super().min_length(d, m)


@dataclass(frozen=True)
class Shuffle(Geometry):
    """``nn.PixelShuffle(r)``: ``r * r`` channels become an ``r x r`` block of positions."""

    factor: int
    dims: int = 2
    shift_invariant = False

    def length(self, d: int, n: int) -> int:
        return n * self.factor

    def affine(self, d: int) -> None:
        return None

    def span(self, d: int, lo: int, hi: int, n: int) -> tuple[int, int]:
        return lo // self.factor, hi // self.factor

    def _guess(self, d: int, m: int) -> int:
        return -(-m // self.factor)


@dataclass(frozen=True)
class Adaptive(Geometry):
    """``nn.AdaptiveAvgPool*`` / ``nn.AdaptiveMaxPool*``: output ``t`` reads the inputs
    ``floor(o * n / t)`` to ``ceil((o + 1) * n / t) - 1``, as torch computes them."""

    dims: int
    target: tuple[int | None, ...]
    shift_invariant = False

    def length(self, d: int, n: int) -> int:
        target = self.target[d]
        return n if target is None or n < 1 else target

    def affine(self, d: int) -> tuple[int, int, int] | None:
        return (1, 0, 0) if self.target[d] is None else None

    def span(self, d: int, lo: int, hi: int, n: int) -> tuple[int, int]:
        t = self.target[d]
        if t is None:
            return lo, hi
        return (lo * n) // t, -(-((hi + 1) * n) // t) - 1

    def min_length(self, d: int, m: int) -> int | None:
        t = self.target[d]
        if t is None:
            return m
        return 1 if t >= m else None


@dataclass(frozen=True)
class Pad(Geometry):
    """A padding layer: ``before`` and ``after`` positions (negative: cropped) that are a
    constant, or the input reflected, replicated or wrapped around."""

    dims: int
    padding: Pairs
    mode: str  # "constant", "reflect", "replicate" or "circular"

    @property
    def shift_invariant(self) -> bool:  # type: ignore[override]
        return self.mode == "constant"

    def length(self, d: int, n: int) -> int:
        before, after = self.padding[d]
        largest = max(before, after)
        # torch refuses cropping more than n positions, reflecting more than n - 1,
        # wrapping more than n
        if (
            n + min(before, 0) + min(after, 0) < 0
            or (self.mode == "reflect" and largest >= n)
            or (self.mode == "circular" and largest > n)
        ):
            return 0
        return n + before + after

    def affine(self, d: int) -> tuple[int, int, int] | None:
        return (1, self.padding[d][0], 0) if self.mode == "constant" else None

    def span(self, d: int, lo: int, hi: int, n: int) -> tuple[int, int]:
        if self.mode == "constant":
            return super().span(d, lo, hi, n)
        before, out = self.padding[d][0], self.length(d, n)
        reads = [
            self._source(p - before, n) if 0 <= p < out else p - before for p in range(lo, hi + 1)
        ]
        return min(reads), max(reads)

    def _source(self, i: int, n: int) -> int:
        if 0 <= i < n:
            return i
        if self.mode == "replicate":
            return min(max(i, 0), n - 1)
        if self.mode == "circular":
            return i % n
        return -i if i < 0 else 2 * (n - 1) - i  # reflect

    def _guess(self, d: int, m: int) -> int:
        return m - sum(self.padding[d])


@dataclass(frozen=True)
class Chain(Geometry):
    """Layers applied one after another inside one module, such as a convolution with
    ``padding_mode="reflect"`` (a reflection pad, then the unpadded window)."""

    parts: tuple[Geometry, ...]

    @property
    def dims(self) -> int | None:  # type: ignore[override]
        return self.parts[0].dims

    @property
    def shift_invariant(self) -> bool:  # type: ignore[override]
        return all(part.shift_invariant for part in self.parts)

    def length(self, d: int, n: int) -> int:
        for part in self.parts:
            n = part.length(d, n) if n >= 1 else n
        return n

    def affine(self, d: int) -> tuple[int, int, int] | None:
        stride, before, extent = 1, 0, 0
        for part in reversed(self.parts):
            step = part.affine(d)
            if step is None:
                return None
            s, b, e = step
            stride, before, extent = stride * s, before * s + b, extent * s + e
        return stride, before, extent

    def span(self, d: int, lo: int, hi: int, n: int) -> tuple[int, int]:
        lengths = [n]
        for part in self.parts[:-1]:
            lengths.append(part.length(d, lengths[-1]))
        for part, length in zip(reversed(self.parts), reversed(lengths), strict=True):
            lo, hi = part.span(d, lo, hi, length)
        return lo, hi

    def min_length(self, d: int, m: int) -> int | None:
        need: int | None = m
        for part in reversed(self.parts):
            need = None if need is None else part.min_length(d, need)
        return need


# ------------------------------------------------------------------ layer -> geometry


def _conv(layer: Any, dims: int) -> Geometry:
    kernel = check_int_or_tuple("kernel_size", layer.kernel_size, dims)
    dilation = check_int_or_tuple("dilation", layer.dilation, dims)
    stride = check_int_or_tuple("stride", layer.stride, dims)
    # a conv after a fixed zero pad (convkit's AsymmetricPadConv) says so itself
    explicit = getattr(layer, "padding_per_dim", None)
    padding = tuple(explicit) if explicit else padding_pairs(layer.padding, kernel, dilation)
    if layer.padding_mode == "zeros":
        return Window(dims, kernel, stride, dilation, padding)
    # reflect / replicate / circular: F.pad with that mode, then the unpadded window
    pad = Pad(dims, padding, layer.padding_mode)
    return Chain((pad, Window(dims, kernel, stride, dilation, ((0, 0),) * dims)))


def _pool(layer: Any, dims: int) -> Geometry:
    kernel = check_int_or_tuple("kernel_size", layer.kernel_size, dims)
    stride = check_int_or_tuple("stride", layer.stride or layer.kernel_size, dims)
    dilation = check_int_or_tuple("dilation", getattr(layer, "dilation", 1), dims)
    pads = check_int_or_tuple("padding", getattr(layer, "padding", 0), dims, allow_zero=True)
    return Window(
        dims,
        kernel,
        stride,
        dilation,
        tuple((p, p) for p in pads),
        pool=True,
        ceil_mode=bool(layer.ceil_mode),
        whole_window=isinstance(layer, (nn.AvgPool3d, nn.LPPool3d)),  # avg_pool3d refuses it
    )


def _transposed(layer: Any, dims: int) -> Geometry:
    def per_dim(name: str, allow_zero: bool = False) -> tuple[int, ...]:
        return check_int_or_tuple(name, getattr(layer, name), dims, allow_zero=allow_zero)

    return Transposed(
        dims,
        per_dim("kernel_size"),
        per_dim("stride"),
        per_dim("dilation"),
        per_dim("padding", allow_zero=True),
        per_dim("output_padding", allow_zero=True),
    )


def _padding_layer(layer: Any, dims: int, mode: str) -> Geometry:
    flat = layer.padding  # F.pad's order: last dimension first, (before, after) each
    pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    return Pad(dims, tuple(reversed(pairs)), mode)


def _adaptive(layer: Any, dims: int) -> Geometry:
    target = layer.output_size
    targets = (target,) * dims if target is None or isinstance(target, int) else tuple(target)
    return Adaptive(dims, targets)


def _upsample(layer: Any) -> Geometry:
    fixed = {"UpsamplingNearest2d": 2, "UpsamplingBilinear2d": 2}.get(type(layer).__name__)
    return Upsample(
        fixed or _tuple_length(layer.size, layer.scale_factor),
        _hashable(layer.size),
        _hashable(layer.scale_factor),
        layer.mode,
        layer.align_corners,
        layer.recompute_scale_factor,
    )


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _tuple_length(*values: Any) -> int | None:
    return next((len(v) for v in values if isinstance(v, (tuple, list))), None)


#: Geometry of the fixed-dimension layer families, by table.
_BY_TABLE: tuple[tuple[dict[int, type[nn.Module]], Any], ...] = (
    (T.CONV, _conv),
    (T.CONV_TRANSPOSE, _transposed),
    (T.MAX_POOL, _pool),
    (T.AVG_POOL, _pool),
    (T.LP_POOL, _pool),
    (T.ADAPTIVE_AVG_POOL, _adaptive),
    (T.ADAPTIVE_MAX_POOL, _adaptive),
    (T.CONSTANT_PAD, lambda layer, dims: _padding_layer(layer, dims, "constant")),
    (T.REFLECTION_PAD, lambda layer, dims: _padding_layer(layer, dims, "reflect")),
    (T.REPLICATION_PAD, lambda layer, dims: _padding_layer(layer, dims, "replicate")),
    (T.CIRCULAR_PAD, lambda layer, dims: _padding_layer(layer, dims, "circular")),
)

#: Layers over one dimension that are element-wise when that dimension is the channels'.
_ALONG_A_DIM = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.GLU)


def geometry(layer: nn.Module, name: str = "", arg: str = "layers") -> Geometry:
    """The geometry of one layer (a module without children).

    Args:
        layer: The layer.
        name: Its name in the model, for the error message.
        arg: The argument that holds it, for the error message.

    Raises:
        ValueError: For a layer whose geometry convkit doesn't know, naming it.
    """
    dims = T.spatial_dims(layer)
    if dims is not None:
        for table, make in _BY_TABLE:
            if isinstance(layer, tuple(table.values())):
                return make(layer, dims)  # type: ignore[no-any-return]
    if isinstance(layer, nn.Upsample):
        return _upsample(layer)
    if isinstance(layer, nn.PixelShuffle):
        return Shuffle(layer.upscale_factor)
    if isinstance(layer, nn.PixelUnshuffle):
        r = layer.downscale_factor
        return Unshuffle(2, (r, r), (r, r), (1, 1), ((0, 0), (0, 0)))
    if isinstance(layer, T.ELEMENTWISE) or (
        isinstance(layer, _ALONG_A_DIM) and getattr(layer, "dim", None) == 1
    ):
        return ElementWise()
    where = f" ({name})" if name else ""
    raise ValueError(
        f"Invalid value for argument `{arg}`: convkit.shapes doesn't know how "
        f"{type(layer).__name__}{where} changes sizes and positions, and won't guess (taking "
        "it for the identity could be silently wrong). It computes convolutions, transposed "
        "convolutions, pooling, adaptive pooling, upsampling, pixel (un)shuffling and padding "
        "layers, and takes norms, activations, dropout, Flatten and Linear as element-wise. If "
        f"{type(layer).__name__} keeps every position where it is, give it a method "
        "`spatial_path(self)` returning [] (the convkit.shapes.SpatialPath protocol)."
    )
