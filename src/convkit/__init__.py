"""convkit: reusable PyTorch components for convolutional neural networks.

Blocks ([`ConvBlock`][convkit.ConvBlock], [`Flatten`][convkit.Flatten],
[`MLPHead`][convkit.MLPHead]), a CNN factory that infers its own flattened size
([`build_cnn`][convkit.build_cnn]), and device-aware training loops
([`fit`][convkit.fit], [`evaluate`][convkit.evaluate], [`predict`][convkit.predict]).
"""

from . import callbacks, checkpoints, datasets, shapes, viz
from ._distributed import setup_distributed
from ._loop import NonFiniteLossError
from ._typing import DescribedModel
from .blocks import ConvBlock, Flatten
from .callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, TrainState
from .checkpoints import load_checkpoint, save_checkpoint
from .datasets import mnist, mnist_sample
from .devices import available_devices, resolve_device
from .drop_path import DropPath
from .factory import CNN, build_cnn
from .heads import MLPHead
from .history import History
from .init import init_weights
from .loading import load_model
from .residual import ResidualBlock
from .separable import SeparableConv
from .shapes import summary
from .squeeze_excite import SqueezeExcite
from .training import evaluate, fit, predict

__version__ = "0.2.0"

__all__ = [
    "CNN",
    "CSVLogger",
    "Callback",
    "ConvBlock",
    "DescribedModel",
    "DropPath",
    "EarlyStopping",
    "Flatten",
    "History",
    "MLPHead",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "ResidualBlock",
    "SeparableConv",
    "SqueezeExcite",
    "TrainState",
    "available_devices",
    "build_cnn",
    "callbacks",
    "checkpoints",
    "datasets",
    "evaluate",
    "fit",
    "init_weights",
    "load_checkpoint",
    "load_model",
    "mnist",
    "mnist_sample",
    "predict",
    "resolve_device",
    "save_checkpoint",
    "setup_distributed",
    "shapes",
    "summary",
    "viz",
]
