"""The teaching notebook's network and loops, restated with torch only (not part of convkit).

The baselines of ``bench_training.py``, kept as the notebook writes them, bugs included
where they don't change the timing: the loss averaged over ``i`` instead of the batch
count, and ``eval_net`` leaving the network in eval mode. Its undefined ``loss_fn`` is
defined. ``tests/test_factory.py`` checks ``notebook_net`` against ``build_cnn``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader


def notebook_net() -> nn.Sequential:
    """The notebook's network, as the notebook writes it: torch.nn modules only."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(32), nn.Dropout2d(0.25),
        nn.Conv2d(32, 64, 5), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(64), nn.Dropout2d(0.25),
        nn.Flatten(),
        nn.Linear(1024, 200), nn.ReLU(), nn.BatchNorm1d(200), nn.Dropout(0.25),
        nn.Linear(200, 10),
    )  # fmt: skip


def notebook_train_epoch(
    net: nn.Module, loader: DataLoader[Any], optimizer: torch.optim.Optimizer, device: torch.device
) -> float:
    loss_fn = nn.CrossEntropyLoss()  # the notebook uses loss_fn without defining it
    net.train()
    running_loss = 0.0
    i = 0
    for i, (xx, yy) in enumerate(loader):  # noqa: B007 - i is read after the loop, as there
        xx, yy = xx.to(device), yy.to(device)
        h = net(xx)
        loss = loss_fn(h, yy)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return running_loss / i  # the notebook's average (over i, not the batch count)


def eval_net(net: nn.Module, loader: DataLoader[Any], device: torch.device) -> float:
    net.eval()  # ... and left in eval mode, as in the notebook
    ys, ypreds = [], []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            _, y_pred = net(x).max(1)
        ys.append(y)
        ypreds.append(y_pred)
    ys_t, ypreds_t = torch.cat(ys), torch.cat(ypreds)
    return float((ys_t == ypreds_t).float().sum().item() / len(ys_t))
