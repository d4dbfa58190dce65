"""torch's layer classes per number of spatial dimensions: the one table of them.

``convkit.layers`` builds its blocks from it (``CONV[2]`` is ``nn.Conv2d``) and
``convkit.shapes`` measures layers with it (``nn.Conv2d`` changes 2 spatial
dimensions), so the two can't disagree about which class is which.
"""

from __future__ import annotations

from torch import nn

__all__ = [
    "ADAPTIVE_AVG_POOL",
    "ADAPTIVE_MAX_POOL",
    "AVG_POOL",
    "BATCH_NORM",
    "CIRCULAR_PAD",
    "CONSTANT_PAD",
    "CONV",
    "CONV_TRANSPOSE",
    "DROPOUT",
    "ELEMENTWISE",
    "INSTANCE_NORM",
    "LP_POOL",
    "MAX_POOL",
    "REFLECTION_PAD",
    "REPLICATION_PAD",
    "spatial_dims",
]

CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE: dict[int, type[nn.Module]] = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}
MAX_POOL: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVG_POOL: dict[int, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
LP_POOL: dict[int, type[nn.Module]] = {1: nn.LPPool1d, 2: nn.LPPool2d, 3: nn.LPPool3d}
ADAPTIVE_AVG_POOL: dict[int, type[nn.Module]] = {
    1: nn.AdaptiveAvgPool1d,
    2: nn.AdaptiveAvgPool2d,
    3: nn.AdaptiveAvgPool3d,
}
ADAPTIVE_MAX_POOL: dict[int, type[nn.Module]] = {
    1: nn.AdaptiveMaxPool1d,
    2: nn.AdaptiveMaxPool2d,
    3: nn.AdaptiveMaxPool3d,
}
#: ``nn.ZeroPad{d}d`` are subclasses of these.
CONSTANT_PAD: dict[int, type[nn.Module]] = {
    1: nn.ConstantPad1d,
    2: nn.ConstantPad2d,
    3: nn.ConstantPad3d,
}
REFLECTION_PAD: dict[int, type[nn.Module]] = {
    1: nn.ReflectionPad1d,
    2: nn.ReflectionPad2d,
    3: nn.ReflectionPad3d,
}
REPLICATION_PAD: dict[int, type[nn.Module]] = {
    1: nn.ReplicationPad1d,
    2: nn.ReplicationPad2d,
    3: nn.ReplicationPad3d,
}
CIRCULAR_PAD: dict[int, type[nn.Module]] = {
    1: nn.CircularPad1d,
    2: nn.CircularPad2d,
    3: nn.CircularPad3d,
}
BATCH_NORM: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
INSTANCE_NORM: dict[int, type[nn.Module]] = {
    1: nn.InstanceNorm1d,
    2: nn.InstanceNorm2d,
    3: nn.InstanceNorm3d,
}
#: Dropout of whole channels.
DROPOUT: dict[int, type[nn.Module]] = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}

#: The tables whose classes work on a fixed number of spatial dimensions.
_FIXED_DIMS = (
    CONV,
    CONV_TRANSPOSE,
    MAX_POOL,
    AVG_POOL,
    LP_POOL,
    ADAPTIVE_AVG_POOL,
    ADAPTIVE_MAX_POOL,
    CONSTANT_PAD,
    REFLECTION_PAD,
    REPLICATION_PAD,
    CIRCULAR_PAD,
)
_DIMS_OF = {cls: dims for table in _FIXED_DIMS for dims, cls in table.items()}

#: Layers that keep every position where it is, in any number of dimensions: each
#: output position is computed from the same input position (norms count as such:
#: their statistics aside, each is an affine map per position), or they work on
#: ``(N, features)`` after a flatten.
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Linear,
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.modules.dropout._DropoutNd,  # Dropout, Dropout1d/2d/3d, AlphaDropout ...
    nn.ChannelShuffle,
    nn.Softmax2d,  # over the channels
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Tanhshrink,
    nn.Tanh,
    nn.LogSigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Threshold,
)


def spatial_dims(layer: nn.Module) -> int | None:
    """The number of spatial dimensions a layer of a fixed-dimension class works on.

    ``None`` for classes that take any number (``nn.Upsample``, the element-wise ones)
    and for classes not in the tables.
    """
    for cls in type(layer).__mro__:
        if cls in _DIMS_OF:
            return _DIMS_OF[cls]
    return None
