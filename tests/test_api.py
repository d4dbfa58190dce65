"""The public API: a flat namespace with an explicit, guarded ``__all__`` (as griffe's)."""

from __future__ import annotations

import inspect

import convkit

PUBLIC = {
    # the training side
    "Callback",
    "CSVLogger",
    "EarlyStopping",
    "History",
    "LRFinderResult",
    "ModelCheckpoint",
    "MonitorCallback",
    "NonFiniteLossError",
    "TensorBoard",
    "TrainState",
    "available_devices",
    "evaluate",
    "fit",
    "lr_find",
    "predict",
    "resolve_device",
    "setup_distributed",
    # the model side
    "CNN",
    "ConvBlock",
    "DropPath",
    "Flatten",
    "MLPHead",
    "ResidualBlock",
    "SeparableConv",
    "SqueezeExcite",
    "build_cnn",
    "init_weights",
    "load_model",
    "summary",
    # below and above both
    "DescribedModel",
    "export",
    "load_checkpoint",
    "save_checkpoint",
    "mnist",
    "mnist_sample",
    # the packages
    "checkpoints",
    "datasets",
    "deploy",
    "layers",
    "models",
    "shapes",
    "train",
    "viz",
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(convkit.__all__) == PUBLIC
    assert len(convkit.__all__) == len(set(convkit.__all__))
    for name in convkit.__all__:
        assert hasattr(convkit, name)


def test_every_public_object_has_a_docstring() -> None:
    for name in convkit.__all__:
        obj = getattr(convkit, name)
        assert inspect.getdoc(obj), f"{name} has no docstring"


def _params(fn) -> list[tuple[str, str, object]]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]


def test_signatures_are_the_documented_ones() -> None:
    kw, pos = "KEYWORD_ONLY", "POSITIONAL_OR_KEYWORD"
    assert _params(convkit.ConvBlock) == [
        ("in_channels", pos, inspect.Parameter.empty),
        ("out_channels", pos, inspect.Parameter.empty),
        ("kernel_size", pos, 3),
        ("dims", kw, 2),
        ("stride", kw, 1),
        ("padding", kw, "same"),
        ("dilation", kw, 1),
        ("groups", kw, 1),
        ("bias", kw, None),
        ("norm", kw, "batch"),
        ("act", kw, "relu"),
        ("pool", kw, None),
        ("pool_size", kw, 2),
        ("dropout", kw, 0.0),
        ("order", kw, "conv-norm-act-pool-dropout"),
    ]
    assert _params(convkit.MLPHead) == [
        ("in_features", pos, inspect.Parameter.empty),
        ("out_features", pos, inspect.Parameter.empty),
        ("hidden", pos, ()),
        ("act", kw, "relu"),
        ("norm", kw, None),
        ("dropout", kw, 0.0),
        ("order", kw, "linear-act-norm-dropout"),
    ]
    assert _params(convkit.build_cnn)[2:] == [
        ("channels", kw, (32, 64)),
        ("kernel_size", kw, 3),
        ("stride", kw, 1),
        ("padding", kw, "same"),
        ("norm", kw, "batch"),
        ("act", kw, "relu"),
        ("pool", kw, "max"),
        ("pool_size", kw, 2),
        ("dropout", kw, 0.0),
        ("order", kw, "conv-norm-act-pool-dropout"),
        ("block", kw, "plain"),
        ("depths", kw, 1),
        ("stem", kw, None),
        ("preact", kw, False),
        ("shortcut", kw, "conv"),
        ("se_reduction", kw, None),
        ("drop_path", kw, 0.0),
        ("init", kw, "torch"),
        ("hidden", kw, (128,)),
        ("head_act", kw, "inherit"),
        ("head_norm", kw, None),
        ("head_dropout", kw, 0.0),
        ("head_pool", kw, None),
        ("features", kw, None),
    ]
    assert _params(convkit.ResidualBlock) == [
        ("in_channels", pos, inspect.Parameter.empty),
        ("out_channels", pos, inspect.Parameter.empty),
        ("kernel_size", pos, 3),
        ("dims", kw, 2),
        ("stride", kw, 1),
        ("bottleneck", kw, False),
        ("expansion", kw, None),
        ("norm", kw, "batch"),
        ("act", kw, "relu"),
        ("preact", kw, False),
        ("shortcut", kw, "conv"),
        ("se_reduction", kw, None),
        ("drop_path", kw, 0.0),
        ("init", kw, "torch"),
    ]
    assert _params(convkit.SeparableConv)[2:] == [
        ("kernel_size", pos, 3),
        ("dims", kw, 2),
        ("stride", kw, 1),
        ("padding", kw, "same"),
        ("dilation", kw, 1),
        ("depth_multiplier", kw, 1),
        ("bias", kw, None),
        ("norm", kw, "batch"),
        ("act", kw, "relu"),
        ("depthwise_norm", kw, "batch"),
        ("depthwise_act", kw, "relu"),
    ]
    assert _params(convkit.SqueezeExcite) == [
        ("channels", pos, inspect.Parameter.empty),
        ("reduction", kw, 16),
        ("squeeze_channels", kw, None),
        ("act", kw, "relu"),
        ("gate", kw, "sigmoid"),
    ]
    assert _params(convkit.DropPath) == [("p", pos, 0.0), ("mode", kw, "row")]
    fit_params = {n: d for n, _, d in _params(convkit.fit)}
    assert fit_params == {
        "model": inspect.Parameter.empty,
        "train_data": inspect.Parameter.empty,
        "epochs": 10,
        "val_data": None,
        "validation_split": None,
        "batch_size": 128,
        "drop_last": None,
        "num_workers": 0,
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "loss": None,
        "task": "auto",
        "metrics": None,
        "device": "auto",
        "progress": True,
        "seed": None,
        "precision": "32",
        "memory_format": "auto",
        "compile": False,
        "data_on_device": None,
        "callbacks": (),
        "scheduler": None,
        "scheduler_interval": None,
        "grad_clip": None,
        "resume_from": None,
        "require_digest": False,
        "nan_guard": True,
        "sync_batchnorm": False,
        "on_interrupt": "raise",
    }
    runtime = [("precision", kw, "32"), ("memory_format", kw, "auto"), ("data_on_device", kw, None)]
    assert _params(convkit.evaluate)[2:] == [
        ("history", kw, None),
        ("task", kw, "auto"),
        ("loss", kw, None),
        ("metrics", kw, None),
        ("device", kw, "auto"),
        ("batch_size", kw, 256),
        *runtime,
    ]
    assert _params(convkit.lr_find) == [
        ("model", pos, inspect.Parameter.empty),
        ("train_data", pos, inspect.Parameter.empty),
        ("start_lr", kw, 1e-7),
        ("end_lr", kw, 10.0),
        ("num_iter", kw, 100),
        ("beta", kw, 0.98),
        ("early_stop_threshold", kw, 4.0),
        ("batch_size", kw, 128),
        ("drop_last", kw, None),
        ("num_workers", kw, 0),
        ("optimizer", kw, "adam"),
        ("weight_decay", kw, 0.0),
        ("loss", kw, None),
        ("task", kw, "auto"),
        ("device", kw, "auto"),
        ("seed", kw, None),
        *runtime,
    ]
    # every argument lr_find shares with fit has fit's default
    shared = set(fit_params) & {n for n, _, _ in _params(convkit.lr_find)}
    assert {n: d for n, _, d in _params(convkit.lr_find) if n in shared} == {
        n: fit_params[n] for n in shared
    }
    assert _params(convkit.predict)[2:] == [
        ("output", kw, "logits"),
        ("task", kw, "auto"),
        ("history", kw, None),
        ("device", kw, "auto"),
        ("batch_size", kw, 256),
        *runtime,
    ]


def test_package_is_typed() -> None:
    from importlib import resources

    assert resources.files("convkit").joinpath("py.typed").is_file()
    assert resources.files("convkit").joinpath("data", "mnist_5k.npz").is_file()
