from __future__ import annotations

import pytest
import torch
from torch import nn

from convkit import MLPHead


def test_no_hidden_is_one_linear() -> None:
    head = MLPHead(20, 5)
    assert [n for n, _ in head.named_children()] == ["output"]
    assert isinstance(head.output, nn.Linear) and head.output.in_features == 20


@pytest.mark.parametrize("hidden", [(64,), (64, 32), [16, 16, 8]])
def test_hidden_layers_then_bare_output(hidden) -> None:
    head = MLPHead(12, 3, hidden, act="gelu", norm="layer", dropout=0.1)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [layer.out_features for layer in linears] == [*hidden, 3]
    assert isinstance(list(head)[-1], nn.Linear)  # nothing after the output layer
    assert sum(isinstance(m, nn.LayerNorm) for m in head) == len(hidden)
    assert sum(isinstance(m, nn.Dropout) for m in head) == len(hidden)
    assert head(torch.randn(4, 12)).shape == (4, 3)


@pytest.mark.parametrize(
    ("order", "names"),
    [
        ("linear-act-norm-dropout", ["linear1", "act1", "norm1", "dropout1", "output"]),
        ("linear-norm-act-dropout", ["linear1", "norm1", "act1", "dropout1", "output"]),
        ("linear-dropout-norm-act", ["linear1", "dropout1", "norm1", "act1", "output"]),
    ],
)
def test_order(order: str, names: list[str]) -> None:
    head = MLPHead(8, 2, (4,), norm="batch", dropout=0.5, order=order)
    assert [n for n, _ in head.named_children()] == names
    assert isinstance(head.norm1, nn.BatchNorm1d)


def test_norm_callable_and_none() -> None:
    head = MLPHead(8, 2, (6,), norm=lambda f: nn.BatchNorm1d(f, eps=0.1))
    assert head.norm1.eps == 0.1
    assert not any(isinstance(m, nn.BatchNorm1d) for m in MLPHead(8, 2, (6,)))


def test_act_none_and_class() -> None:
    assert [n for n, _ in MLPHead(8, 2, (6,), act=None).named_children()] == ["linear1", "output"]
    assert isinstance(MLPHead(8, 2, (6,), act=nn.Tanh).act1, nn.Tanh)


def test_matches_hand_built_sequential() -> None:
    torch.manual_seed(0)
    head = MLPHead(10, 3, (7,), norm="batch").eval()
    ref = nn.Sequential(nn.Linear(10, 7), nn.ReLU(), nn.BatchNorm1d(7), nn.Linear(7, 3)).eval()
    ref.load_state_dict(dict(zip(ref.state_dict(), head.state_dict().values(), strict=True)))
    x = torch.randn(5, 10)
    torch.testing.assert_close(head(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_features": 0}, ValueError, r"`in_features`"),
        ({"out_features": -1}, ValueError, r"`out_features`"),
        ({"hidden": (8, 0)}, ValueError, r"`hidden`.*\(8, 0\)"),
        ({"hidden": 8}, TypeError, r"`hidden`.*sequence"),
        ({"norm": "group"}, ValueError, r"`norm`.*'group'.*'batch', 'layer'"),
        ({"act": "mish"}, ValueError, r"`act`.*'mish'"),
        ({"dropout": 1.2}, ValueError, r"`dropout`.*dropout=1.2"),
        ({"order": "act-linear"}, ValueError, r"`order`.*start with 'linear'"),
        ({"order": "linear-act", "norm": "batch"}, ValueError, r"'norm' is switched on"),
        ({"order": "linear-pool"}, ValueError, r"unknown stage 'pool'"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"in_features": 8, "out_features": 2, "hidden": (4,), **kwargs}
    with pytest.raises(error, match=match):
        MLPHead(**args)


def test_forward_shape_error() -> None:
    with pytest.raises(ValueError, match=r"\(N, 8\).*\(3, 9\)"):
        MLPHead(8, 2)(torch.randn(3, 9))
