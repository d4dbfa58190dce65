"""Panels and images for ``convkit.viz``, on the figures of ``convkit.utils.figures``.

matplotlib is the optional ``plot`` extra; importing ``convkit`` or ``convkit.viz``
works without it, and drawing without it raises an ``ImportError`` naming the extra.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

from ..utils.figures import new_figure

__all__ = ["grid_figure", "mosaic", "new_figure", "show_image"]


def grid_figure(
    caller: str, count: int, *, cols: int | None = None, size: float = 1.3, extra_width: float = 0
) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` image panels in a near-square grid (no unused panels)."""
    cols = cols or math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    fig = new_figure(caller, (cols * size + extra_width, rows * size + 0.5))
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[count:]:
        ax.remove()
    return fig, axes[:count]


def mosaic(tiles: torch.Tensor) -> torch.Tensor:
    """Tiles ``(rows, cols, h, w)`` as one ``(rows*(h+1)-1, cols*(w+1)-1)`` image.

    The one-pixel gaps between tiles are NaN, which ``imshow`` leaves blank.
    """
    rows, cols, h, w = tiles.shape
    padded = torch.full((rows, cols, h + 1, w + 1), math.nan, dtype=tiles.dtype)
    padded[:, :, :h, :w] = tiles
    image = padded.permute(0, 2, 1, 3).reshape(rows * (h + 1), cols * (w + 1))
    return image[:-1, :-1]


def show_image(ax: Axes, image: torch.Tensor) -> Any:
    """Draw a ``(C, H, W)`` input: grey for one channel, colour for three, else the mean.

    Values are stretched to ``[0, 1]`` per image, so normalised inputs display too.
    """
    image = image.detach().float().cpu()
    if image.shape[0] != 3:
        return ax.imshow(image.mean(0).numpy(), cmap="gray")
    low, high = image.min(), image.max()
    stretched = (image - low) / (high - low) if high > low else torch.zeros_like(image)
    return ax.imshow(stretched.permute(1, 2, 0).numpy())
