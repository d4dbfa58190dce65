"""Output sizes, padding, parameters, cost and receptive fields of CNN layers; ``summary``.

Each formula of the theory page (理論解説) on sizes, padding, parameters, cost and
receptive fields is a function here, checked against ``torch.nn`` layers by the tests:

- ``formulas``: one layer along one dimension (``conv_output_size``,
  ``pool_output_size``, ``conv_transpose_output_size``, ``same_padding``,
  ``tf_same_padding``, ``conv_params``, ``conv_macs``);
- ``geometry``: how each kind of layer maps positions, per spatial dimension;
- ``walk``: the one walk over a model's layers that every stack function reads
  (``output_size``, ``layer_output_size``, ``min_input_size``, ``SpatialPath``);
- ``receptive``: ``receptive_field``, and where one unit's field lies;
- ``table``: ``summary``, the per-layer table.

The stack functions work on 1-D, 2-D and 3-D layers alike.
"""

from .formulas import (
    conv_macs,
    conv_output_size,
    conv_params,
    conv_transpose_output_size,
    pool_output_size,
    same_padding,
    tf_same_padding,
)
from .receptive import receptive_field
from .table import ModelSummary, summary
from .walk import SpatialPath, layer_output_size, min_input_size, output_size

__all__ = [
    "ModelSummary",
    "SpatialPath",
    "conv_macs",
    "conv_output_size",
    "conv_params",
    "conv_transpose_output_size",
    "layer_output_size",
    "min_input_size",
    "output_size",
    "pool_output_size",
    "receptive_field",
    "same_padding",
    "summary",
    "tf_same_padding",
]
