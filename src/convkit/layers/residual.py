"""``ResidualBlock``: ResNet's basic and bottleneck blocks, post- or pre-activation.

He et al., "Deep Residual Learning" (2016) for the post-activation blocks (the stride on
the ``K x K`` conv of a bottleneck, as torchvision's ResNet v1.5), He et al., "Identity
Mappings in Deep Residual Networks" (2016) for pre-activation (as timm's ``ResNetV2``:
the shortcut projection reads the pre-activated input), He et al., "Bag of Tricks"
(2019) for the ResNet-D shortcut (average pool, then a 1x1 conv), with optional
squeeze-and-excitation and stochastic depth on the branch. Each conv is a
[`ConvBlock`][convkit.ConvBlock], so layer specs and ``padding="same"`` behave as there.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..shapes import output_size as stack_output_size
from ..utils.typing import IntOrTuple, LayerSpec
from ..utils.validation import (
    check_bool,
    check_dims,
    check_int_or_tuple,
    check_positive_int,
    check_probability,
)
from .blocks import ConvBlock, check_block_input
from .create import CONV_NORMS, POOLS, check_act, check_norm, create_act
from .drop_path import DropPath
from .init import check_init, init_weights
from .squeeze_excite import SqueezeExcite

__all__ = ["ResidualBlock"]

#: Projection shortcuts: a strided 1x1 conv (ResNet B), or average pool + 1x1 (ResNet D).
SHORTCUTS = ("conv", "avg")


class ResidualBlock(nn.Module):
    """``out = branch(x) + shortcut(x)``, ResNet's building block.

    Layer order of the branch (``K`` = ``kernel_size``, ``s`` = ``stride``):

    | child | basic | bottleneck (``w = out_channels // expansion``) |
    | --- | --- | --- |
    | ``conv1`` | conv K, stride s -> norm -> act | conv 1x1 to w -> norm -> act |
    | ``conv2`` | conv K -> norm | conv K, stride s -> norm -> act |
    | ``conv3`` | | conv 1x1 to ``out_channels`` -> norm |

    With ``preact=True`` every child is norm -> act -> conv instead (no act after the sum).
    then ``se`` (if ``se_reduction``) and ``drop_path`` (if ``drop_path > 0``). The
    shortcut is the identity, or a projection exactly when the channels or the stride
    change: ``shortcut`` = [``pool`` (``"avg"`` with a stride)] -> 1x1 ``conv`` ->
    ``norm`` (no norm in pre-activation blocks). Post-activation blocks end with ``act``
    after the sum; pre-activation blocks end with the sum, and their shortcut projection
    reads ``conv1``'s pre-activated input.

    Args:
        in_channels: Channels of the input, ``C_in``.
        out_channels: Channels of the output, ``C_out``.
        kernel_size: Kernel size of the ``K x K`` convs, an int or one per dimension.
        dims: Spatial dimensions: 1 for ``(N, C, L)``, 2 (default) for ``(N, C, H, W)``,
            3 for ``(N, C, D, H, W)`` (as in [`ConvBlock`][convkit.ConvBlock]).
        stride: Stride of the block (on its first ``K x K`` conv), an int or one per
            dimension; each output size is ``ceil(size / stride)``.
        bottleneck: ``False``: two ``K x K`` convs; ``True``: 1x1 -> ``K x K`` -> 1x1.
        expansion: Bottleneck only: ``out_channels`` over the inner width (default 4);
            must divide ``out_channels``.
        norm: A [`ConvBlock`][convkit.ConvBlock] norm spec, used for every norm.
        act: A ``ConvBlock`` activation spec, used for every activation.
        preact: Pre-activation (``norm-act-conv``) instead of ``conv-norm-act``.
        shortcut: The projection, when one is needed: ``"conv"`` (1x1, strided) or
            ``"avg"`` (ResNet-D: ``AvgPool`` over ``stride``, then a 1x1 conv).
        se_reduction: Reduction ratio of a [`SqueezeExcite`][convkit.SqueezeExcite] at
            the end of the branch; ``None`` for none.
        drop_path: Probability in ``[0, 1)`` of dropping the branch per sample in
            training ([`DropPath`][convkit.DropPath]); 0 for none.
        init: ``"torch"``, ``"kaiming"`` or ``"zero_last"``, see
            [`init_weights`][convkit.init_weights].

    Attributes:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        dims: The number of spatial dimensions.
        stride: The stride, one int per dimension.

    Raises:
        ValueError: For non-positive sizes, ``dims`` not 1, 2 or 3, unknown names,
            ``expansion`` not dividing ``out_channels`` (or given to a basic block),
            ``drop_path`` outside ``[0, 1)``, or an unknown ``init``.
        TypeError: For arguments of the wrong type.

    Examples:
        >>> block = ResidualBlock(16, 32, stride=2)
        >>> [name for name, _ in block.named_children()]
        ['conv1', 'conv2', 'shortcut', 'act']
        >>> block(torch.zeros(2, 16, 15, 15)).shape
        torch.Size([2, 32, 8, 8])
        >>> ResidualBlock(64, 64, bottleneck=True).conv2.conv
        Conv2d(16, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
        >>> ResidualBlock(64, 64).shortcut is None
        True
        >>> ResidualBlock(28, 32, dims=1, stride=2)(torch.zeros(2, 28, 28)).shape
        torch.Size([2, 32, 14])
    """

    in_channels: int
    out_channels: int
    dims: int
    stride: tuple[int, ...]
    se: SqueezeExcite | None
    drop_path: DropPath | None
    shortcut: nn.Sequential | None
    act: nn.Module | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple = 3,
        *,
        dims: int = 2,
        stride: IntOrTuple = 1,
        bottleneck: bool = False,
        expansion: int | None = None,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        preact: bool = False,
        shortcut: str = "conv",
        se_reduction: int | None = None,
        drop_path: float = 0.0,
        init: str = "torch",
    ) -> None:
        # Validate everything before building anything.
        dims = check_dims(dims)
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_int_or_tuple("kernel_size", kernel_size, dims)
        strides = check_int_or_tuple("stride", stride, dims)
        check_bool("bottleneck", bottleneck)
        check_bool("preact", preact)
        width = self._width(out_channels, bottleneck, expansion)
        check_norm("norm", norm, CONV_NORMS[dims], dims=dims)
        check_act("act", act)
        if not isinstance(shortcut, str) or shortcut not in SHORTCUTS:
            raise ValueError(
                "Invalid value for argument `shortcut`. Expected 'conv' (a strided 1x1 conv) or "
                "'avg' (ResNet-D: average pool, then a 1x1 conv). "
                f"Received shortcut={shortcut!r}."
            )
        if se_reduction is not None:
            check_positive_int("se_reduction", se_reduction)
        p_drop = check_probability("drop_path", drop_path)
        check_init(init)

        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dims = dims
        self.stride = strides
        self.preact = preact
        layer: dict[str, Any] = {"dims": dims, "norm": norm, "act": act}
        if preact:
            # each conv's output meets a norm (the next conv's, or the next block's after
            # the sum), which makes a bias redundant, as in timm's ResNetV2
            layer.update(order="norm-act-conv", bias=False if norm is not None else None)
        # (in, out, kernel, stride) of each conv of the branch; the last has no act
        if bottleneck:
            convs = [
                (in_channels, width, 1, 1),
                (width, width, kernel_size, stride),
                (width, out_channels, 1, 1),
            ]
        else:
            convs = [
                (in_channels, out_channels, kernel_size, stride),
                (out_channels, out_channels, kernel_size, 1),
            ]
        for i, (c_in, c_out, kernel, step) in enumerate(convs, start=1):
            last = i == len(convs) and not preact
            options = {**layer, "act": None} if last else layer
            self.add_module(f"conv{i}", ConvBlock(c_in, c_out, kernel, stride=step, **options))
        self.se = (
            None
            if se_reduction is None
            else SqueezeExcite(out_channels, reduction=se_reduction, act=act)
        )
        self.drop_path = DropPath(p_drop) if p_drop > 0 else None
        needs_projection = in_channels != out_channels or any(s != 1 for s in strides)
        self.shortcut = (
            self._projection(shortcut, norm, layer.get("bias")) if needs_projection else None
        )
        # post-activation: the activation after the sum (a fresh tensor, so in place)
        self.act = None if preact else create_act("act", act, inplace=True)
        init_weights(self, init)

    @staticmethod
    def _width(out_channels: int, bottleneck: bool, expansion: int | None) -> int:
        if not bottleneck:
            if expansion is not None:
                raise ValueError(
                    "Invalid value for argument `expansion`: it sets a bottleneck block's "
                    f"inner width, but bottleneck=False. Received expansion={expansion!r}; "
                    "pass bottleneck=True or drop `expansion`."
                )
            return out_channels
        expansion = 4 if expansion is None else check_positive_int("expansion", expansion)
        if out_channels % expansion:
            raise ValueError(
                f"Invalid value for argument `expansion`. Expected a divisor of "
                f"out_channels={out_channels} (the inner width is out_channels // expansion). "
                f"Received expansion={expansion}; e.g. out_channels="
                f"{(out_channels // expansion + 1) * expansion} would work."
            )
        return out_channels // expansion

    def _projection(self, kind: str, norm: LayerSpec, bias: bool | None) -> nn.Sequential:
        """``[pool ->] conv 1x1 [-> norm]``: matches the branch's channels and size.

        Pre-activation blocks have no norm here: the sum meets the next block's norm.
        """
        pooled = kind == "avg" and any(s != 1 for s in self.stride)
        proj = ConvBlock(
            self.in_channels,
            self.out_channels,
            1,
            dims=self.dims,
            stride=1 if pooled else self.stride,
            bias=bias,
            norm=None if self.preact else norm,
            act=None,
        )
        stages: list[tuple[str, nn.Module]] = list(proj.named_children())
        if pooled:
            # ceil_mode: a partial last window keeps ceil(H / stride), as the branch does
            avg_pool = POOLS[self.dims]["avg"]
            pool = avg_pool(self.stride, self.stride, ceil_mode=True, count_include_pad=False)
            stages.insert(0, ("pool", pool))
        return nn.Sequential(OrderedDict(stages))

    def branch_blocks(self) -> list[ConvBlock]:
        """The branch's [`ConvBlock`][convkit.ConvBlock]s in order (``conv1``, ...).

        Examples:
            >>> [block.conv.kernel_size for block in ResidualBlock(64, 64, bottleneck=True)
            ...  .branch_blocks()]
            [(1, 1), (3, 3), (1, 1)]
        """
        return [m for name, m in self.named_children() if name.startswith("conv")]  # type: ignore[misc]

    def spatial_path(self) -> list[nn.Module]:
        """The branch's blocks: what sets the output size and the receptive field.

        The [`SpatialPath`][convkit.shapes.SpatialPath] protocol of
        [`convkit.shapes`][convkit.shapes]: its stack formulas follow the branch and
        leave out the shortcut, which runs beside it.

        Examples:
            >>> from convkit.shapes import receptive_field
            >>> block = ResidualBlock(8, 16, stride=2)
            >>> block.spatial_path() == block.branch_blocks()
            True
            >>> receptive_field(block)  # two 3x3 convs, the first with stride 2
            (7, 7)
        """
        return list(self.branch_blocks())

    def zero_init_last(self) -> None:
        """Zero the last norm's weight in the branch (the last conv's, if no norm ends it).

        The branch then outputs zeros and the block starts as its shortcut
        (``init="zero_last"``).

        Examples:
            >>> block = ResidualBlock(4, 4).eval()
            >>> block.zero_init_last()
            >>> x = torch.randn(1, 4, 5, 5)
            >>> torch.equal(block(x), torch.relu(x))  # relu(shortcut + 0)
            True
        """
        last = self.branch_blocks()[-1]
        name, final = list(last.named_children())[-1]
        weight = getattr(final, "weight", None) if name == "norm" else None
        if not isinstance(weight, torch.Tensor):  # no norm, or one without a scale
            weight = last.conv.weight  # type: ignore[union-attr]
        nn.init.zeros_(weight)  # type: ignore[arg-type]

    def output_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial size of the output for an input of spatial size ``size``.

        ``ceil(size / stride)`` per dimension, from
        [`convkit.shapes.output_size`][convkit.shapes.output_size], which follows the
        branch (the shortcut runs beside it and gives the same size).

        Examples:
            >>> ResidualBlock(8, 8, stride=2).output_size((15, 16))
            (8, 8)
        """
        return stack_output_size(self, size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_block_input(self, input)
        first, *rest = self.branch_blocks()
        x = out = input
        for name, stage in first.named_children():
            if name == "conv":
                x = out  # pre-activation: the projection reads the pre-activated input
            out = stage(out)
        for block in rest:
            out = block(out)
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        shortcut = input if self.shortcut is None else self.shortcut(x)
        out = out + shortcut
        return out if self.act is None else self.act(out)
