from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.ops import SqueezeExcitation

from convkit import SqueezeExcite


def torchvision_copy(se: SqueezeExcite) -> SqueezeExcitation:
    reference = SqueezeExcitation(se.in_channels, se.squeeze_channels)
    with torch.no_grad():
        reference.fc1.weight.copy_(se.fc1.weight[..., None, None])
        reference.fc1.bias.copy_(se.fc1.bias)
        reference.fc2.weight.copy_(se.fc2.weight[..., None, None])
        reference.fc2.bias.copy_(se.fc2.bias)
    return reference


@pytest.mark.parametrize(
    ("channels", "reduction", "squeezed"), [(64, 16, 4), (32, 4, 8), (6, 16, 1)]
)
def test_matches_torchvision_squeeze_excitation(
    channels: int, reduction: int, squeezed: int
) -> None:
    torch.manual_seed(0)
    se = SqueezeExcite(channels, reduction=reduction)
    assert se.squeeze_channels == squeezed
    x = torch.randn(3, channels, 7, 5)
    torch.testing.assert_close(se(x), torchvision_copy(se)(x))


@pytest.mark.parametrize("shape", [(2, 8, 11), (2, 8, 3, 4, 5)])
def test_any_number_of_spatial_dims(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=2)
    x = torch.randn(shape)
    spatial = tuple(range(2, x.dim()))
    gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean(spatial)))))
    expected = x * gate.view(*gate.shape, *[1] * len(spatial))
    torch.testing.assert_close(se(x), expected)


def gates(se: SqueezeExcite, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = se.gate.register_forward_hook(lambda _m, _i, out: seen.append(out))
    se(x)
    handle.remove()
    return seen[0]


@settings(max_examples=30, deadline=None)
@given(
    scale=st.floats(1e-3, 1e4),
    seed=st.integers(0, 2**16),
    gate=st.sampled_from(["sigmoid", "hard_sigmoid"]),
)
def test_gates_lie_in_0_1(scale: float, seed: int, gate: str) -> None:
    torch.manual_seed(seed)
    se = SqueezeExcite(16, reduction=4, gate=gate)
    with torch.no_grad():
        g = gates(se, torch.randn(4, 16, 3, 3) * scale)
    assert g.shape == (4, 16)
    assert float(g.min()) >= 0.0 and float(g.max()) <= 1.0


def test_children_and_specs() -> None:
    se = SqueezeExcite(32, squeeze_channels=5, act="silu", gate=nn.Hardsigmoid)
    assert [n for n, _ in se.named_children()] == ["fc1", "act", "fc2", "gate"]
    assert se.fc1.out_features == 5 and isinstance(se.act, nn.SiLU)
    assert isinstance(se.gate, nn.Hardsigmoid)
    assert [n for n, _ in SqueezeExcite(8, act=None).named_children()] == ["fc1", "fc2", "gate"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reduction": 0}, ValueError, r"`reduction`"),
        ({"squeeze_channels": 0}, ValueError, r"`squeeze_channels`"),
        ({"gate": "relu"}, ValueError, r"`gate`.*'sigmoid', 'hard_sigmoid'.*gate='relu'"),
        ({"gate": None}, ValueError, r"`gate`.*needs a gate"),
        ({"gate": 1}, TypeError, r"`gate`"),
        ({"act": "swish"}, ValueError, r"`act`.*unknown name 'swish'"),
        ({"channels": 2.0}, TypeError, r"`channels`"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"channels": 8, **kwargs}
    with pytest.raises(error, match=match):
        SqueezeExcite(**args)


def test_wrong_input_names_its_shape() -> None:
    with pytest.raises(ValueError, match=r"\(N, 8, \*spatial\).*\(2, 4, 3, 3\)"):
        SqueezeExcite(8)(torch.zeros(2, 4, 3, 3))
