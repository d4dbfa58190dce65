"""load_model: a checkpoint's architecture is checked against its weights before building."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import convkit.models.loading
from convkit import build_cnn, load_model, save_checkpoint


def _edited(tmp_path: Path, build: dict, **config) -> Path:
    """A checkpoint of a real model whose stored config was edited before saving: the
    file is consistent (its digest is the writer's own), only the config lies."""
    model = build_cnn((1, 8, 8), 2, hidden=(), **build)
    model.config = {**model.config, **config}
    return save_checkpoint(tmp_path / "edited.pt", model)


@pytest.mark.parametrize(
    ("build", "config", "asked"),
    [
        ({"block": "residual", "channels": (4,)}, {"depths": 200_000}, "400,000 convolutions"),
        ({"block": "residual", "channels": (4,)}, {"depths": [3, 99_999]}, "200,004 convol"),
        ({"channels": (4,)}, {"channels": [4] * 50_000}, "50,000 convolutions"),
        ({"block": "bottleneck", "channels": (8,)}, {"block": "bottleneck", "depths": 9}, "27"),
        ({"channels": (4,)}, {"hidden": [8] * 10_000}, "10,001 linear layers"),
    ],
)
def test_a_config_asking_for_more_layers_than_stored_is_refused_unbuilt(
    tmp_path: Path, monkeypatch, build: dict, config: dict, asked: str
) -> None:
    path = _edited(tmp_path, build, **config)
    assert path.stat().st_size < 200_000  # small file, huge model

    def never(**kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("load_model built the model before checking its size")

    monkeypatch.setattr(convkit.models.loading, "build_cnn", never)
    with pytest.raises(
        ValueError,
        match=rf"edited.pt is not a consistent convkit checkpoint: its model_config asks for "
        rf"at least .*{asked}.*but the stored weights hold .*nothing was built",
    ):
        load_model(path)


@pytest.mark.parametrize(
    "build",
    [
        {"channels": (4, 8), "hidden": (16,)},
        {"block": "residual", "channels": (4, 8), "depths": (2, 1), "stem": 4},
        {"block": "bottleneck", "channels": (8, 16), "preact": True},
        {"channels": (4,), "head_pool": "avg", "hidden": (8, 8)},
    ],
)
def test_every_real_config_passes_the_size_check(tmp_path: Path, build: dict) -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 8, 8), 2, **build)
    path = save_checkpoint(tmp_path / "m.pt", model)
    restored = load_model(path)
    assert restored.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)
