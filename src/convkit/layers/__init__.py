"""The layers CNNs are built from: plain ``nn.Module``s with named children.

``ConvBlock`` and its relatives (residual, separable, squeeze-and-excitation, drop path),
the classifier head, weight initialisation, and the one table that turns a layer name
(``"batch"``, ``"relu"``, ``"max"``) into a torch layer for 1-D, 2-D or 3-D data.
"""

from .blocks import ConvBlock, Flatten
from .drop_path import DropPath
from .heads import MLPHead
from .init import init_weights
from .residual import ResidualBlock
from .separable import SeparableConv
from .squeeze_excite import SqueezeExcite

__all__ = [
    "ConvBlock",
    "DropPath",
    "Flatten",
    "MLPHead",
    "ResidualBlock",
    "SeparableConv",
    "SqueezeExcite",
    "init_weights",
]
