"""Shared fixtures: small slices of the real bundled MNIST sample."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch

from convkit import mnist_sample


@pytest.fixture(scope="session")
def sample_train() -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = mnist_sample(train=True).tensors
    return inputs, targets


@pytest.fixture(scope="session")
def sample_test() -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = mnist_sample(train=False).tensors
    return inputs, targets


@pytest.fixture
def small_data(
    sample_train: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """300 real images: a batch size of 128 leaves a last batch of 44."""
    inputs, targets = sample_train
    return inputs[:300].clone(), targets[:300].clone()


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    """convkit's figures are pyplot-managed: close them so tests don't accumulate them."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
