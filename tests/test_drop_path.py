from __future__ import annotations

import pytest
import torch
from torchvision.ops import StochasticDepth, stochastic_depth

from convkit import DropPath
from convkit.layers.drop_path import drop_path


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_same_draws_as_torchvision_stochastic_depth(p: float, mode: str) -> None:
    x = torch.randn(32, 3, 4, 4)
    torch.manual_seed(7)
    ours = DropPath(p, mode=mode).train()(x)
    torch.manual_seed(7)
    reference = StochasticDepth(p, mode).train()(x)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    torch.manual_seed(7)
    ours = drop_path(x, p, mode=mode)
    torch.manual_seed(7)
    torch.testing.assert_close(ours, stochastic_depth(x, p, mode, True), rtol=0, atol=0)


def test_identity_in_eval_and_for_zero() -> None:
    x = torch.randn(8, 4, 3)
    assert DropPath(0.5).eval()(x) is x
    assert DropPath(0.0).train()(x) is x
    rng = torch.get_rng_state()
    DropPath(0.5).eval()(x)
    assert torch.equal(torch.get_rng_state(), rng)  # eval draws nothing


@pytest.mark.parametrize("shape", [(512, 3), (512, 2, 5), (512, 2, 3, 3), (512, 1, 2, 2, 2)])
def test_train_drops_whole_samples_and_scales_the_rest(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.rand(shape) + 1.0  # no zeros of its own
    out = DropPath(0.25).train()(x)
    flat_in, flat_out = x.flatten(1), out.flatten(1)
    dropped = (flat_out == 0).all(dim=1)
    kept = torch.isclose(flat_out, flat_in / 0.75).all(dim=1)
    assert bool((dropped ^ kept).all())  # each sample: all zero, or all scaled by 1 / keep
    assert 0.18 < dropped.float().mean().item() < 0.32  # about p of them


def test_batch_mode_is_all_or_nothing() -> None:
    torch.manual_seed(0)
    outcomes = set()
    for _ in range(40):
        out = DropPath(0.5, mode="batch").train()(torch.ones(16, 2))
        assert len(set(out.flatten().tolist())) == 1
        outcomes.add(out[0, 0].item())
    assert outcomes == {0.0, 2.0}


def test_expected_value_is_preserved() -> None:
    torch.manual_seed(0)
    out = DropPath(0.3).train()(torch.ones(20000, 1))
    assert abs(out.mean().item() - 1.0) < 0.03


def test_gradient_flows_through_kept_samples_only() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 3, requires_grad=True)
    DropPath(0.5).train()(x).sum().backward()
    assert set(x.grad.flatten().tolist()) == {0.0, 2.0}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p": 1.0}, ValueError, r"`p`.*\[0, 1\).*p=1.0"),
        ({"p": -0.1}, ValueError, r"`p`"),
        ({"p": "0.1"}, TypeError, r"`p`"),
        ({"p": 0.1, "mode": "col"}, ValueError, r"`mode`.*'row'.*'batch'.*mode='col'"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        DropPath(**kwargs)
    with pytest.raises(error, match=match):
        drop_path(torch.ones(2, 2), **kwargs)


def test_repr() -> None:
    assert repr(DropPath(0.2)) == "DropPath(p=0.2, mode='row')"
