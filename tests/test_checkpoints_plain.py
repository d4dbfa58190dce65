"""convkit.checkpoints.plain: every file convkit writes, convkit reads back.

A payload is made plain before anything is written (paths -> str, NumPy scalars ->
Python scalars), and what ``torch.load(weights_only=True)`` would refuse is refused at
save time, naming where it sits.
"""

from __future__ import annotations

import collections
import datetime
import enum
import math
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from convkit import Callback, ModelCheckpoint, fit, load_checkpoint, save_checkpoint


class Configured(nn.Module):
    """A user's model that keeps its settings in ``config`` (any values)."""

    def __init__(self, config: dict[str, Any], in_features: int = 784) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(in_features, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class Holder(Callback):
    """A callback whose state is whatever it was given."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


class NumpyBest(Callback):
    """Tracks the best loss as NumPy computes it: an ``np.float64``."""

    def __init__(self) -> None:
        self.best = np.float64(np.inf)
        self.epochs = np.int64(0)

    def on_epoch_end(self, state: Any) -> None:
        self.best = np.minimum(self.best, np.float64(state.logs["loss"]))
        self.epochs += 1

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.epochs = np.float64(state["best"]), np.int64(state["epochs"])


Point = collections.namedtuple("Point", "x y")


class Color(enum.Enum):
    RED = 1


def test_paths_and_numpy_scalars_are_stored_as_plain_data(tmp_path: Path) -> None:
    config = {
        "root": Path("/data/images"),
        "scale": np.float64(0.5),
        "steps": np.int64(3),
        "flag": np.bool_(True),
        "name": np.str_("cnn"),
        "nested": [PurePosixPath("a/b"), (np.float32(0.25), {"k": np.int8(-2)})],
    }
    model = Configured(config)
    path = save_checkpoint(tmp_path / "c.pt", model, callbacks=[Holder({"seen": np.int32(7)})])
    payload = load_checkpoint(path, Configured({}))
    assert payload["model_config"] == {
        "root": "/data/images",
        "scale": 0.5,
        "steps": 3,
        "flag": True,
        "name": "cnn",
        "nested": ["a/b", (0.25, {"k": -2})],
    }
    assert type(payload["model_config"]["steps"]) is int
    assert type(payload["model_config"]["flag"]) is bool
    assert payload["callbacks"] == {"Holder": {"seen": 7}}
    assert model.config["root"] == Path("/data/images")  # the model's own config unchanged


def test_fit_with_such_a_model_and_callback_writes_files_it_resumes_from(
    tmp_path: Path, small_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    def model() -> nn.Module:
        torch.manual_seed(0)
        return Configured({"root": Path("/data"), "lr": np.float64(1e-3)})

    kwargs: dict[str, Any] = {"batch_size": 100, "seed": 0, "progress": False, "device": "cpu"}
    best = NumpyBest()
    checkpoint = ModelCheckpoint(tmp_path / "ep{epoch}.pt")
    fit(model(), small_data, epochs=1, callbacks=[best, checkpoint], **kwargs)
    assert isinstance(best.best, np.float64)
    resumed = NumpyBest()
    history = fit(
        model(),
        small_data,
        epochs=2,
        callbacks=[resumed],
        resume_from=tmp_path / "ep1.pt",
        **kwargs,
    )
    assert [e["epoch"] for e in history.epochs] == [1, 2] and resumed.epochs == 2
    assert load_checkpoint(tmp_path / "ep1.pt")["callbacks"]["NumpyBest"]["best"] == best.best


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (
            np.zeros(3),
            r"numpy\.ndarray .*Store it as a tensor \(torch\.from_numpy\(array\)\) or as a list",
        ),
        (object(), r"object \(<object object"),
        (print, r"builtin_function_or_method"),
        (Point(1, 2), r"test_checkpoints_plain\.Point \(Point\(x=1, y=2\)\)"),
        (Color.RED, r"test_checkpoints_plain\.Color"),
        (frozenset({1}), r"frozenset"),
        (datetime.date(2024, 1, 2), r"datetime\.date"),
        (collections.defaultdict(list, a=[1]), r"collections\.defaultdict"),
        (slice(1, 2), r"slice"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else "",
)
def test_what_load_checkpoint_would_refuse_is_refused_before_writing(
    tmp_path: Path, value: Any, kind: str
) -> None:
    target = tmp_path / "c.pt"
    save_checkpoint(target, nn.Linear(2, 2), epoch=1)  # the last good checkpoint
    model = Configured({"ok": 1, "deep": {"list": [0, value]}})
    with pytest.raises(
        TypeError,
        match=rf"Can't save a checkpoint to .*c.pt: model\.config\['deep'\]\['list'\]\[1\] is "
        rf"a {kind}.*Nothing was written\.",
    ):
        save_checkpoint(target, model, epoch=2)
    with pytest.raises(TypeError, match=r"callbacks\['Holder'\]\['x'\] is a "):
        save_checkpoint(target, nn.Linear(2, 2), callbacks=[Holder({"x": value})])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert load_checkpoint(target)["epoch"] == 1


# ---- the property: whatever is saved loads back, or nothing is written

_UNREADABLE = (np.arange(2), object(), frozenset({1}), Point(0, 1), Color.RED, slice(3), b"")


def _converted(value: Any) -> Any:
    """What the file should hold for ``value``: the conversions the docs promise."""
    if isinstance(value, PurePosixPath):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _converted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_converted(v) for v in value)
    return value


def _unreadable(value: Any) -> bool:
    """Whether ``value`` holds an object ``torch.load(weights_only=True)`` refuses (also
    ``b""``, which pickle stores as a call to ``bytes()``)."""
    if any(value is bad for bad in _UNREADABLE) or (type(value) is bytes and not value):
        return True
    if isinstance(value, dict):
        return any(_unreadable(v) for v in value.values())
    if type(value) in (list, tuple):
        return any(_unreadable(v) for v in value)
    return False


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.builds(PurePosixPath, st.text("ab/", min_size=1, max_size=5)),
    st.floats(allow_nan=False, width=32).map(np.float32),
    st.floats(allow_nan=False).map(np.float64),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.booleans().map(np.bool_),
    st.builds(lambda x: torch.tensor([x]), st.floats(allow_nan=False)),
    st.sampled_from(_UNREADABLE),
)
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
    ),
    max_leaves=8,
)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, float):
        return type(b) is float and (a == b or (math.isnan(a) and math.isnan(b)))
    return type(a) is type(b) and a == b


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config=st.dictionaries(st.text(max_size=4), _values, max_size=4), state=_values)
def test_every_file_convkit_writes_reads_back(tmp_path: Path, config: Any, state: Any) -> None:
    target = tmp_path / "c.pt"
    target.unlink(missing_ok=True)
    model = Configured(config, in_features=2)
    callbacks = [Holder({"value": state})]
    if _unreadable(config) or _unreadable(state):
        with pytest.raises(TypeError, match=r"could not read back.*Nothing was written"):
            save_checkpoint(target, model, callbacks=callbacks)
        assert list(tmp_path.iterdir()) == []
        return
    save_checkpoint(target, model, callbacks=callbacks)
    payload = load_checkpoint(target, Configured({}, in_features=2))
    assert _equal(payload["model_config"], _converted(config))
    assert _equal(payload["callbacks"]["Holder"]["value"], _converted(state))
