"""``DropPath``: stochastic depth, dropping a residual branch for whole samples.

Huang et al., "Deep Networks with Stochastic Depth" (2016), in the form of
torchvision's ``ops.StochasticDepth`` and timm's ``layers.DropPath``: in training each
sample's branch output is zeroed with probability ``p`` and the survivors are scaled by
``1 / (1 - p)``, so the expected output is unchanged; in eval mode it is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from ..utils.validation import check_probability

__all__ = ["DropPath", "drop_path"]

MODES = ("row", "batch")


def _check_mode(mode: object) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(
            "Invalid value for argument `mode`. Expected 'row' (one draw per sample) or "
            f"'batch' (one draw for the whole batch). Received mode={mode!r}."
        )
    return mode


def drop_path(
    input: torch.Tensor, p: float, *, mode: str = "row", training: bool = True
) -> torch.Tensor:
    """Zero whole samples (``"row"``) or the whole batch (``"batch"``) with probability ``p``.

    The kept values are divided by ``1 - p``. With ``training=False`` or ``p=0`` the input
    is returned as it is.

    Args:
        input: A tensor ``(N, ...)``, usually a residual branch's output.
        p: Probability in ``[0, 1)`` of dropping.
        mode: ``"row"``: one draw per sample; ``"batch"``: one draw for the batch.
        training: Apply the drop (``True``) or return ``input`` (``False``).

    Returns:
        A tensor of the input's shape.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1)`` or ``mode`` is unknown.

    Examples:
        >>> x = torch.ones(4, 3)
        >>> drop_path(x, 0.5, training=False) is x
        True
        >>> out = drop_path(x, 0.5)
        >>> sorted({v for v in out.flatten().tolist()} - {0.0, 2.0})
        []
    """
    keep = 1.0 - check_probability("p", p)
    _check_mode(mode)
    if not training or keep == 1.0:
        return input
    size = [input.shape[0]] + [1] * (input.dim() - 1) if mode == "row" else [1] * input.dim()
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(keep)
    return input * noise.div_(keep)


class DropPath(nn.Module):
    """Stochastic depth as a module: [`drop_path`][convkit.layers.drop_path.drop_path] in training.

    Identity in eval mode and for ``p=0``; draws from the global torch RNG, like
    ``nn.Dropout``.

    Args:
        p: Probability in ``[0, 1)`` of dropping a sample's branch.
        mode: ``"row"`` (default, per sample) or ``"batch"`` (the whole batch at once).

    Raises:
        ValueError: If ``p`` is outside ``[0, 1)`` or ``mode`` is unknown.
        TypeError: If ``p`` is not a number.

    Examples:
        >>> layer = DropPath(0.2).eval()
        >>> x = torch.randn(8, 16, 4, 4)
        >>> torch.equal(layer(x), x)
        True
    """

    def __init__(self, p: float = 0.0, *, mode: str = "row") -> None:
        p = check_probability("p", p)
        mode = _check_mode(mode)
        super().__init__()
        self.p = p
        self.mode = mode

    def spatial_path(self) -> list[nn.Module]:
        """``[]``: it keeps every position where it is (the
        [`SpatialPath`][convkit.shapes.SpatialPath] protocol of ``convkit.shapes``).

        Examples:
            >>> from convkit.shapes import output_size
            >>> output_size(DropPath(0.1), (7, 9))
            (7, 9)
        """
        return []

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return drop_path(input, self.p, mode=self.mode, training=self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}"
