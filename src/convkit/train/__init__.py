"""Training: ``fit``, ``evaluate``, ``predict`` and ``lr_find`` for any ``nn.Module`` and any task.

The training side knows nothing about CNNs. What it needs from a model is the documented
[`DescribedModel`][convkit.DescribedModel] protocol, and files go through
``convkit.checkpoints``.
"""

from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    MonitorCallback,
    TensorBoard,
    TrainState,
)
from .devices import available_devices, resolve_device
from .distributed import setup_distributed
from .history import History
from .loops import evaluate, fit, predict
from .lr_finder import LRFinderResult, lr_find
from .run import NonFiniteLossError

__all__ = [
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "History",
    "LRFinderResult",
    "ModelCheckpoint",
    "MonitorCallback",
    "NonFiniteLossError",
    "TensorBoard",
    "TrainState",
    "available_devices",
    "evaluate",
    "fit",
    "lr_find",
    "predict",
    "resolve_device",
    "setup_distributed",
]
