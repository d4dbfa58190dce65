"""Rebuilding a [`build_cnn`][convkit.build_cnn] model from a checkpoint file alone.

The model side of checkpoints: the file is read and verified by
[`convkit.checkpoints`][convkit.checkpoints]; the architecture stored in it as
``build_cnn``'s arguments is first compared in size with the stored weights (a config
asking for more layers than the file holds is refused before anything is built), then
built on the ``meta`` device (no memory), every shape is compared with the stored
weights, and only then is the model materialised and loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import read_checkpoint
from .factory import BUILD_CNN_DEFAULTS, build_cnn
from .stages import CONVS_PER_BLOCK

__all__ = ["load_model"]


def load_model(
    path: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    require_digest: bool = False,
) -> nn.Module:
    """Rebuild a [`build_cnn`][convkit.build_cnn] model and its weights from a checkpoint.

    The architecture is stored in the checkpoint as ``build_cnn``'s arguments (plain
    JSON-able data), so no code of yours is needed, and none is unpickled. The model is
    first built on the ``meta`` device and its shapes compared with the stored weights,
    so a damaged or edited architecture fails before any memory is allocated for it.

    Args:
        path: A checkpoint written by [`save_checkpoint`][convkit.save_checkpoint] or
            [`ModelCheckpoint`][convkit.ModelCheckpoint].
        map_location: Where the weights are loaded.
        require_digest: Refuse a file without a digest (format version 1, convkit 0.1)
            instead of loading it unverified with a warning.

    Returns:
        The model, in eval mode.

    Raises:
        ValueError: If the model wasn't built by ``build_cnn`` from plain arguments (for
            example with custom ``features``: build it yourself and call
            ``load_checkpoint(path, model)``), or the stored architecture doesn't match
            the stored weights. Also everything
            [`load_checkpoint`][convkit.load_checkpoint] raises for a damaged file.

    Examples:
        >>> import os, tempfile
        >>> from convkit import build_cnn, save_checkpoint
        >>> model = build_cnn((1, 28, 28), 10, channels=(4,), hidden=())
        >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "m.pt"), model)
        >>> restored = load_model(path)
        >>> restored.feature_shape, restored.training
        ((4, 14, 14), False)
    """
    source = Path(path)
    payload = read_checkpoint(source, map_location=map_location, require_digest=require_digest)
    config = payload["model_config"]
    if config is None:
        raise ValueError(
            f"The model in {source} ({payload['model_class']}) can't be rebuilt from the "
            "checkpoint alone: only build_cnn models made from plain arguments (names, numbers) "
            "store their architecture, and this one used custom `features` or layer factories, "
            "or was not made by build_cnn. Build the model yourself, then call "
            "convkit.load_checkpoint(path, model) to load its weights."
        )
    _check_size(source, config, payload["model"])
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            model = build_cnn(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{source} is not a convkit checkpoint: its model_config is not valid build_cnn "
            f"arguments ({err})."
        ) from None
    _check_shapes(source, model, payload["model"])
    model = model.to_empty(device=map_location)
    model.load_state_dict(payload["model"])
    return model.eval()


def _layers_asked(config: dict[str, Any]) -> tuple[int, int]:
    """The fewest convolutions and linear layers ``build_cnn(**config)`` makes.

    Read from the config's lengths alone (no argument is checked here: ``build_cnn``
    does that), so that a config asking for far more layers than the file holds is
    refused before anything is built.
    """
    settings = {**BUILD_CNN_DEFAULTS, **config}
    channels, depths, hidden = settings["channels"], settings["depths"], settings["hidden"]
    stages = len(channels) if isinstance(channels, (list, tuple)) else 1
    if isinstance(depths, (list, tuple)):
        blocks = sum(d for d in depths if isinstance(d, int) and d > 0)
    else:
        blocks = stages * depths if isinstance(depths, int) and depths > 0 else stages
    family = settings["block"] if settings["block"] in CONVS_PER_BLOCK else "plain"
    convs = blocks * CONVS_PER_BLOCK[family] + (settings["stem"] is not None)
    return convs, (len(hidden) if isinstance(hidden, (list, tuple)) else 0) + 1


def _check_size(source: Path, config: dict[str, Any], stored: dict[str, torch.Tensor]) -> None:
    """Refuse a config that asks for more layers than the stored weights hold."""
    convs, linears = _layers_asked(config)
    kernels = sum(1 for value in stored.values() if value.dim() >= 3)  # conv weights
    matrices = sum(1 for value in stored.values() if value.dim() == 2)  # linear weights
    if convs > kernels or linears > matrices:
        keys = ("block", "channels", "depths", "stem", "hidden")
        asked: dict[str, Any] = {k: config[k] for k in keys if k in config}
        raise ValueError(
            f"{source} is not a consistent convkit checkpoint: its model_config asks for at "
            f"least {convs:,} convolutions and {linears:,} linear layers ({_brief(asked)}), "
            f"but the stored weights hold {kernels:,} convolution kernels and {matrices:,} "
            "weight matrices. The file was damaged or edited; nothing was built."
        )


def _brief(values: dict[str, Any]) -> str:
    """``key=value`` pairs, each cut to 40 characters (a list may be very long)."""
    parts = []
    for key, value in values.items():
        text = repr(value)
        parts.append(f"{key}={text if len(text) <= 40 else text[:37] + '...'}")
    return ", ".join(parts)


def _check_shapes(source: Path, model: nn.Module, stored: dict[str, torch.Tensor]) -> None:
    built = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    saved = {key: tuple(value.shape) for key, value in stored.items()}
    if built != saved:
        differ = sorted(set(built) ^ set(saved)) or [k for k in built if built[k] != saved[k]]
        key = differ[0]
        raise ValueError(
            f"{source} is not a consistent convkit checkpoint: its model_config builds "
            f"{key!r} as {built.get(key, 'absent')}, but the stored weights have "
            f"{saved.get(key, 'no such key')}. The file was damaged or edited."
        )
