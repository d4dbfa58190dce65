"""convkit: reusable PyTorch components for convolutional neural networks.

Blocks ([`ConvBlock`][convkit.ConvBlock], [`Flatten`][convkit.Flatten],
[`MLPHead`][convkit.MLPHead]), a CNN factory that infers its own flattened size
([`build_cnn`][convkit.build_cnn]), device-aware training loops
([`fit`][convkit.fit], [`evaluate`][convkit.evaluate], [`predict`][convkit.predict]), a
learning-rate finder ([`lr_find`][convkit.lr_find]) and export to ONNX and ``torch.export``
programs ([`export`][convkit.export]).
"""

from . import checkpoints, datasets, deploy, layers, models, shapes, train, viz
from .checkpoints import load_checkpoint, save_checkpoint
from .datasets import mnist, mnist_sample
from .deploy import export
from .layers import (
    ConvBlock,
    DropPath,
    Flatten,
    MLPHead,
    ResidualBlock,
    SeparableConv,
    SqueezeExcite,
    init_weights,
)
from .models import CNN, build_cnn, load_model
from .shapes import summary
from .train import (
    Callback,
    CSVLogger,
    EarlyStopping,
    History,
    LRFinderResult,
    ModelCheckpoint,
    MonitorCallback,
    NonFiniteLossError,
    TensorBoard,
    TrainState,
    available_devices,
    evaluate,
    fit,
    lr_find,
    predict,
    resolve_device,
    setup_distributed,
)
from .utils.typing import DescribedModel

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
    "LRFinderResult",
    "MLPHead",
    "ModelCheckpoint",
    "MonitorCallback",
    "NonFiniteLossError",
    "ResidualBlock",
    "SeparableConv",
    "SqueezeExcite",
    "TensorBoard",
    "TrainState",
    "available_devices",
    "build_cnn",
    "checkpoints",
    "datasets",
    "deploy",
    "evaluate",
    "export",
    "fit",
    "init_weights",
    "layers",
    "load_checkpoint",
    "load_model",
    "lr_find",
    "mnist",
    "mnist_sample",
    "models",
    "predict",
    "resolve_device",
    "save_checkpoint",
    "setup_distributed",
    "shapes",
    "summary",
    "train",
    "viz",
]
