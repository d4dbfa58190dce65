"""Callbacks for [`fit`][convkit.fit]: hooks into the training loop, after Keras' and
Lightning's (``callbacks/`` holds one callback per module).

A callback subclasses [`Callback`][convkit.Callback] and overrides the hooks it needs.
Every hook receives the [`TrainState`][convkit.TrainState]: the model, optimizer,
epoch, latest logs and History; setting ``state.stop_training = True`` ends training
after the current epoch (or batch, from ``on_batch_end``). Callbacks that act on one
logged metric ([`EarlyStopping`][convkit.EarlyStopping],
[`ModelCheckpoint`][convkit.ModelCheckpoint]) share
[`MonitorCallback`][convkit.MonitorCallback]; [`CSVLogger`][convkit.CSVLogger] and
[`TensorBoard`][convkit.TensorBoard] write the run's numbers to files.
"""

from .base import Callback, TrainState
from .csv_logger import CSVLogger
from .early_stopping import EarlyStopping
from .model_checkpoint import ModelCheckpoint, hook_order
from .monitor import MonitorCallback
from .tensorboard import TensorBoard

__all__ = [
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "MonitorCallback",
    "TensorBoard",
    "TrainState",
    "hook_order",
]
