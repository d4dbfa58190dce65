"""convkit: reusable PyTorch components for convolutional neural networks.

Blocks ([`ConvBlock`][convkit.ConvBlock], [`Flatten`][convkit.Flatten],
[`MLPHead`][convkit.MLPHead]), a CNN factory that infers its own flattened size
([`build_cnn`][convkit.build_cnn]), and device-aware training loops
([`fit`][convkit.fit], [`evaluate`][convkit.evaluate], [`predict`][convkit.predict]).
"""

from . import datasets, shapes
from .blocks import ConvBlock, Flatten
from .datasets import mnist, mnist_sample
from .devices import available_devices, resolve_device
from .factory import CNN, build_cnn
from .heads import MLPHead
from .training import History, evaluate, fit, predict

__version__ = "0.1.0"

__all__ = [
    "CNN",
    "ConvBlock",
    "Flatten",
    "History",
    "MLPHead",
    "available_devices",
    "build_cnn",
    "datasets",
    "evaluate",
    "fit",
    "mnist",
    "mnist_sample",
    "predict",
    "resolve_device",
    "shapes",
]
