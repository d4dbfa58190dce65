"""Shared test data: the teaching notebook's network, as build_cnn arguments."""

from __future__ import annotations

#: build_cnn((1, 28, 28), 10, **NOTEBOOK) is the notebook's CNN, layer for layer.
NOTEBOOK = {
    "channels": (32, 64),
    "kernel_size": 5,
    "padding": "valid",
    "order": "conv-pool-act-norm-dropout",
    "dropout": 0.25,
    "hidden": (200,),
    "head_norm": "batch",
    "head_dropout": 0.25,
}
