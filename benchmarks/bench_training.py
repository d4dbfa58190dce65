"""convkit against the teaching notebook's loop and a hand-written loop, side by side.

One process, the same data (convkit's bundled 4,000/1,000 MNIST sample), public convkit
API only. Every comparison runs each contender once as a warm-up, then A/B, B/A, A/B...
and every side is timed the same way: a ``perf_counter`` around the whole call (a whole
``fit()``, setup included, like the baselines' loops), synchronising the GPU first.

1. data path: torchvision ``MNIST`` + ``ToTensor`` + ``DataLoader`` vs ``predict``'s
   tensor path (both through ``nn.Identity``, outputs collected);
2. framework overhead: ``fit()`` vs a minimal hand-written loop (same model, data
   path, seed and settings; their losses must agree to 1e-5), in fp32 and in bf16;
3. end to end: the notebook's loop vs ``fit`` with defaults vs ``fit`` with
   ``precision="bf16"``;
4. evaluation throughput: ``evaluate`` vs the notebook's ``eval_net``;
5. compute efficiency (FLOPs from ``convkit.shapes.summary``) and an ablation;
6. memory format: ``fit`` in ``channels_last`` vs ``contiguous`` (fp32 and bf16);
7. the channels_last gradient at the flatten: on vs off (fp32 and bf16);
8. ``compile=True``: compilation time apart from the steady-state epoch time.

    python benchmarks/bench_training.py                 # CPU; writes benchmarks/results
    python benchmarks/bench_training.py --device cuda   # the same on a GPU
    python benchmarks/bench_training.py --quick         # a smoke run, fewer repeats

The script writes only generated files: ``results/results-<device>.json`` (every number)
and ``results/results-<device>.md`` (the table that ``docs/performance.md`` includes), and
exits with status 1 when a target in ``TARGETS`` is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import random
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import convkit
from convkit import build_cnn, evaluate, fit, mnist_sample, predict
from convkit.shapes import summary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from mnist_cnn import notebook_cnn  # noqa: E402
from notebook_baseline import eval_net, notebook_net, notebook_train_epoch  # noqa: E402

BATCH = 128


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (``None`` where ``resource`` is missing).

    glibc can hand freed blocks of several MB back to the OS, and the next batch then
    faults them in again page by page, which costs microseconds a page on this VM. A
    count near zero rules the allocator out as the cause of a slow run.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def alternate(
    runs: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Run each callable once as a warm-up, then A/B, B/A, A/B... ``repeats`` times.

    The order flips every repeat: whichever runs second in a pair was measured a few
    percent slower here (allocator and cache state), which a fixed A/B order would
    charge to B every time.
    """
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name in alternating(list(runs), repeats):
        times[name].append(timed(runs[name], device)[0])
    return times


def alternating(names: list[str], repeats: int) -> Iterator[str]:
    """``names`` in order, then reversed, and so on: ``repeats`` passes in all."""
    for repeat in range(repeats):
        yield from names if repeat % 2 == 0 else reversed(names)


def paired_ratio(times: dict[str, list[float]], baseline: str, contender: str) -> float:
    """Median of contender/baseline over the pairs ``alternate`` ran back to back.

    Each pair shares the machine's state of the moment, so the drift of a shared VM
    (several percent over a minute here) cancels out, where a ratio of two medians
    keeps it.
    """
    pairs = zip(times[baseline], times[contender], strict=True)
    return statistics.median(b / a for a, b in pairs)


def notebook_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return notebook_cnn()  # the example's build_cnn call: the notebook's network


def notebook_net_as_written(seed: int = 0) -> nn.Module:
    """``notebook_baseline.notebook_net()`` with ``notebook_model(seed)``'s initial weights.

    Same layers as ``notebook_model`` (tests/test_factory.py proves them identical); the
    one difference is the notebook's plain ``nn.ReLU()`` where ``build_cnn`` uses
    ``ReLU(inplace=True)``.
    """
    net = notebook_net()
    weights = notebook_model(seed).state_dict().values()
    net.load_state_dict(dict(zip(net.state_dict(), weights, strict=True)))
    return net


def write_idx(root: Path) -> None:
    """The bundled sample as torchvision's raw MNIST files, for the notebook's data path."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, train in (("train", True), ("t10k", False)):
        x, y = mnist_sample(train=train).tensors
        images = (x * 255).round().to(torch.uint8).squeeze(1).numpy()
        with open(raw / f"{split}-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
        with open(raw / f"{split}-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">II", 2049, len(y)) + y.numpy().astype(np.uint8).tobytes())


def hand_loop_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    device: torch.device,
    precision: str = "32",
) -> float:
    """The floor: what fit(seed=seed, metrics=(), nan_guard=False, precision=...) does, by hand.

    ``precision="bf16"`` runs the forward pass and the loss under bfloat16 autocast.
    """
    dtype = torch.bfloat16 if precision == "bf16" else None
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - same seeding as fit
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).to(memory_format=torch.channels_last)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    y = y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as fit builds "adam"
    model.train()
    torch.empty((), dtype=torch.int64).random_(generator=gen)  # as a DataLoader draws
    perm = torch.randperm(len(x), generator=gen).to(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(x), BATCH):
        idx = perm[start : start + BATCH]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
    return total.item() / len(x)


# ------------------------------------------------------------------------ the benchmarks


class FirstPixel(nn.Module):
    """``(N, C, H, W) -> (N, C)``: the top-left pixel, a model with next to no work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 0, 0]


def bench_data_path(tv_train: Any, repeats: int, device: torch.device) -> dict[str, Any]:
    """One pass over the training images through a model that reads one pixel.

    The notebook's side iterates a ``DataLoader`` over torchvision's ``MNIST`` with
    ``ToTensor``; convkit's side is ``predict`` on the in-memory sample (its batches are
    slices of the stored tensor). Both collect the ``(N, 1)`` outputs; the model costs
    next to nothing, which leaves the data path's cost.
    """
    loader = DataLoader(tv_train, batch_size=BATCH)
    train, model = mnist_sample(), FirstPixel()

    def notebook() -> None:
        torch.cat([model(x.to(device)) for x, _y in loader])

    def convkit_path() -> None:
        predict(model, train, batch_size=BATCH, device=device)

    t = alternate({"notebook": notebook, "convkit": convkit_path}, repeats, device)
    a, b = statistics.median(t["notebook"]), statistics.median(t["convkit"])
    return {"notebook_s": a, "convkit_s": b, "speedup": a / b}


def bench_overhead(repeats: int, device: torch.device, precision: str = "32") -> dict[str, Any]:
    """``fit`` against the hand-written loop, both in ``precision`` ("32" or "bf16")."""
    x, y = mnist_sample().tensors
    base = notebook_model()
    losses: dict[str, float] = {}

    def with_fit() -> None:
        model = copy.deepcopy(base)
        # the hand loop computes no metric and checks no loss for NaN: neither does fit here
        history = fit(model, (x, y), epochs=1, metrics=(), progress=False, device=device, seed=0,
                      nan_guard=False, precision=precision)  # fmt: skip
        losses["fit"] = history["loss"][0]

    def by_hand() -> None:
        losses["hand"] = hand_loop_epoch(copy.deepcopy(base), x, y, 0, device, precision)

    # Deterministic kernels on both sides: the losses are compared to 1e-5, and cuDNN's
    # default algorithms are allowed to sum in a different order on every run.
    deterministic = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        t = alternate({"hand": by_hand, "fit": with_fit}, repeats, device)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic
    a, b = statistics.median(t["hand"]), statistics.median(t["fit"])
    return {
        "hand_s": a,
        "fit_s": b,
        "ratio": paired_ratio(t, "hand", "fit"),
        "loss_fit": losses["fit"],
        "loss_hand": losses["hand"],
        "loss_abs_diff": abs(losses["fit"] - losses["hand"]),
        "precision": precision,
    }


def bench_end_to_end(
    tv_train: Any, tv_test: Any, epochs: int, rounds: int, device: torch.device
) -> dict[str, Any]:
    train, test = mnist_sample(), mnist_sample(train=False)
    test_loader = DataLoader(tv_test, batch_size=BATCH)
    per_epoch: dict[str, list[float]] = {
        "notebook": [], "notebook_loop_convkit_net": [], "fit": [], "fit_bf16": []
    }  # fmt: skip
    accuracy: dict[str, list[float]] = {k: [] for k in per_epoch}
    faults: dict[str, list[float]] = {k: [] for k in per_epoch}

    @contextlib.contextmanager
    def counting_faults(name: str, n_epochs: int) -> Iterator[None]:
        before = minor_page_faults()
        yield
        after = minor_page_faults()
        if before is not None and after is not None:
            faults[name].append((after - before) / n_epochs)

    def notebook(n_epochs: int, name: str = "notebook") -> None:
        # (a) is the notebook as written: its loop on its own network; the extra row runs
        # its loop on build_cnn's network (in-place ReLU), to show what the network adds.
        net = (notebook_net_as_written() if name == "notebook" else notebook_model()).to(device)

        def train() -> None:
            opt = torch.optim.Adam(net.parameters())
            loader = DataLoader(tv_train, batch_size=BATCH, shuffle=True)
            for _ in range(n_epochs):
                notebook_train_epoch(net, loader, opt, device)

        with counting_faults(name, n_epochs):
            seconds = timed(train, device)[0]
        per_epoch[name].append(seconds / n_epochs)
        accuracy[name].append(eval_net(net, test_loader, device))

    def with_fit(name: str, n_epochs: int, **kwargs: Any) -> None:
        model = notebook_model()
        with counting_faults(name, n_epochs):
            seconds = timed(lambda: fit(model, train, epochs=n_epochs, progress=False,
                                        device=device, **kwargs), device)[0]  # fmt: skip
        per_epoch[name].append(seconds / n_epochs)
        accuracy[name].append(evaluate(model, test, device=device, **kwargs)["accuracy"])

    contenders: dict[str, Callable[[int], None]] = {
        "notebook": notebook,
        "notebook_loop_convkit_net": lambda n: notebook(n, "notebook_loop_convkit_net"),
        "fit": lambda n: with_fit("fit", n),
        "fit_bf16": lambda n: with_fit("fit_bf16", n, precision="bf16"),
    }
    for run in contenders.values():  # warm-up: one epoch of each, discarded
        run(1)
    for values in (*per_epoch.values(), *accuracy.values(), *faults.values()):
        values.clear()
    for name in alternating(list(contenders), rounds):  # the order flips every round
        contenders[name](epochs)
    med = {k: statistics.median(v) for k, v in per_epoch.items()}
    acc = {k: statistics.mean(v) for k, v in accuracy.items()}

    return {
        "epochs": epochs,
        "rounds": rounds,
        "seconds_per_epoch": med,
        "test_accuracy": acc,
        "minor_page_faults_per_epoch": {k: statistics.median(v) for k, v in faults.items() if v},
        "ratio_fit_vs_notebook": med["fit"] / med["notebook"],
        "ratio_fit_bf16_vs_notebook": med["fit_bf16"] / med["notebook"],
        # the same ratio within each round, which ran every contender back to back: how
        # far the run-to-run drift of this machine moves it
        "round_ratios": {
            name: [f / n for f, n in zip(per_epoch[name], per_epoch["notebook"], strict=True)]
            for name in E2E
        },
        "bf16_accuracy_points_vs_fp32": 100 * (acc["fit_bf16"] - acc["fit"]),
        "bf16_accuracy_points_apart": 100 * abs(acc["fit_bf16"] - acc["fit"]),
    }


def bench_evaluate(tv_test: Any, repeats: int, device: torch.device) -> dict[str, Any]:
    model = notebook_model().to(device)
    net = notebook_net_as_written().to(device)  # the same weights, the notebook's modules
    test = mnist_sample(train=False)
    loader = DataLoader(tv_test, batch_size=BATCH)
    t = alternate(
        {
            "eval_net": lambda: eval_net(net, loader, device),
            "evaluate": lambda: evaluate(model, test, device=device),
        },
        repeats,
        device,
    )
    a, b = statistics.median(t["eval_net"]), statistics.median(t["evaluate"])
    n = len(test)
    return {
        "images": n,
        "eval_net_images_per_s": n / a,
        "evaluate_images_per_s": n / b,
        "speedup": a / b,
    }


def bench_memory_format(repeats: int, device: torch.device) -> dict[str, Any]:
    """One ``fit`` epoch in ``channels_last`` vs ``contiguous``, fp32 and bf16."""
    train = mnist_sample()
    result: dict[str, Any] = {"seconds_per_epoch": {}}
    for precision in ("32", "bf16"):

        def run(fmt: str, precision: str = precision) -> Callable[[], Any]:
            return lambda: fit(notebook_model(), train, epochs=1, progress=False, device=device,
                               memory_format=fmt, precision=precision)  # fmt: skip

        t = alternate({fmt: run(fmt) for fmt in ("channels_last", "contiguous")}, repeats, device)
        for fmt, seconds in t.items():
            result["seconds_per_epoch"][f"{fmt}/{precision}"] = statistics.median(seconds)
        result[f"channels_last_speedup_{precision_key(precision)}"] = paired_ratio(
            t, "channels_last", "contiguous"
        )
    return result


def precision_key(precision: str) -> str:
    return "fp32" if precision == "32" else precision


def bench_memory_format_large(device: torch.device) -> dict[str, Any]:
    """channels_last vs contiguous for a wider CNN on 64x64 RGB inputs (GPU runs only).

    The notebook's network is too small for a GPU to show the layout's effect (it is
    bound by kernel launches); this is the measurement behind ``"auto"`` on CUDA.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 3, 64, 64, generator=gen)
    y = torch.randint(0, 10, (4096,), generator=gen)
    seconds: dict[str, list[float]] = {}
    for precision in ("32", "bf16"):
        for fmt in ("channels_last", "contiguous", "contiguous", "channels_last"):  # A B B A
            torch.manual_seed(0)
            model = build_cnn((3, 64, 64), 10, channels=(64, 128, 256), hidden=(256,))
            history = fit(model, (x, y), epochs=3, progress=False, device=device,
                          memory_format=fmt, precision=precision, nan_guard=False)  # fmt: skip
            seconds.setdefault(f"{fmt}/{precision}", []).extend(
                e["seconds"] for e in history.epochs[1:]
            )
    med = {name: statistics.median(v) for name, v in seconds.items()}
    return {
        "model": "build_cnn((3, 64, 64), 10, channels=(64, 128, 256)), 4,096 images, batch 128",
        "seconds_per_epoch": med,
        "channels_last_speedup_fp32": med["contiguous/32"] / med["channels_last/32"],
        "channels_last_speedup_bf16": med["contiguous/bf16"] / med["channels_last/bf16"],
    }


class StridedCopy(nn.Module):
    """Stands in for a 2x2 max-pool in the ablation: the same output shape and layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2].contiguous(memory_format=torch.channels_last)


def ablated(kind: str) -> nn.Module:
    """``notebook_model()`` without one kind of layer (same initial weights otherwise)."""
    model = notebook_model()
    removed = {
        "batchnorm": nn.modules.batchnorm._BatchNorm,
        "dropout": nn.modules.dropout._DropoutNd,
    }.get(kind)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if removed is not None and isinstance(child, removed):
                setattr(parent, name, nn.Identity())
    if kind == "first_maxpool":
        model.features.block1.pool = StridedCopy()
    return model


ABLATIONS = {  # kind: how the report names it
    "batchnorm": "BatchNorm layers",
    "dropout": "dropout layers",
    "first_maxpool": "the first max-pool, beyond a strided copy",
}


def bench_ablation(repeats: int, device: torch.device) -> dict[str, Any]:
    """Where the time goes: ``fit`` epochs of the network without one kind of layer.

    A profile's per-kernel times miss what a layer costs the kernels around it (its
    memory traffic evicts their data), so this removes the layer and times the epoch.
    The share is 1 minus the median of the back-to-back ratios (ablated / full).
    """
    train = mnist_sample()
    result: dict[str, Any] = {}
    for precision in ("32", "bf16"):
        models = {"full": notebook_model(), **{kind: ablated(kind) for kind in ABLATIONS}}

        def run(model: nn.Module, precision: str = precision) -> Callable[[], Any]:
            return lambda: fit(
                model, train, epochs=1, progress=False, device=device, precision=precision
            )

        times = alternate({name: run(model) for name, model in models.items()}, repeats, device)
        result[precision] = {
            "full_epoch_s": statistics.median(times["full"]),
            **{f"{kind}_share": 1 - paired_ratio(times, "full", kind) for kind in ABLATIONS},
        }
    return result


def bench_compile(device: torch.device, epochs: int = 3) -> dict[str, Any]:
    """Eager vs ``compile=True``, run eager, compiled, compiled, eager.

    Both sides read the epoch times ``fit`` records (the same clock): the first epoch of
    a compiled run includes the compilation, the later ones are its steady state. The
    second compiled run may find TorchInductor's on-disk cache warm.
    """
    train = mnist_sample()
    epochs_s: dict[bool, list[float]] = {False: [], True: []}
    first: list[float] = []
    for compiled in (False, True, True, False):
        history = fit(notebook_model(), train, epochs=epochs, progress=False, device=device,
                      compile=compiled)  # fmt: skip
        epochs_s[compiled] += [e["seconds"] for e in history.epochs[1:]]
        if compiled:
            first.append(history.epochs[0]["seconds"])
    eager_s, steady = statistics.median(epochs_s[False]), statistics.median(epochs_s[True])
    return {
        "eager_epoch_s": eager_s,
        "compiled_epoch_s": steady,
        "compile_s": first[0] - steady,  # the first compiled epoch's extra time
        "speedup": eager_s / steady,
    }


class GradInChannelsLast(torch.autograd.Function):
    """Identity whose backward hands the gradient back in ``channels_last``.

    What a flatten of a ``channels_last`` feature map could do so that the layers before
    it get their gradient in their own layout (autograd returns it in NCHW order).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


class FlattenChannelsLastGrad(nn.Flatten):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.requires_grad and input.is_contiguous(memory_format=torch.channels_last):
            input = GradInChannelsLast.apply(input)
        return input.flatten(self.start_dim, self.end_dim)


def bench_flatten_grad(repeats: int, device: torch.device) -> dict[str, Any]:
    """One ``fit`` epoch with the channels_last gradient at the flatten on vs off.

    "off" is ``nn.Flatten``; "on" hands the gradient back in ``channels_last``. The gain
    is the median of the back-to-back ratios off/on; its spread is their range.
    """
    train = mnist_sample()
    result: dict[str, Any] = {}
    for precision in ("32", "bf16"):

        def run(flatten: type[nn.Module], precision: str = precision) -> Callable[[], Any]:
            def train_once() -> None:
                model = notebook_model()
                model.flatten = flatten()
                fit(model, train, epochs=1, progress=False, device=device, precision=precision)

            return train_once

        t = alternate({"on": run(FlattenChannelsLastGrad), "off": run(nn.Flatten)},
                      repeats, device)  # fmt: skip
        ratios = [off / on for on, off in zip(t["on"], t["off"], strict=True)]
        result[precision_key(precision)] = {
            "on_s": statistics.median(t["on"]),
            "off_s": statistics.median(t["off"]),
            "gain": statistics.median(ratios),
            "gain_min": min(ratios),
            "gain_max": max(ratios),
        }
    return result


def training_flops_per_image() -> float:
    """3x the forward FLOPs (forward, plus gradients for inputs and weights), 2 per MAC."""
    return 3 * 2 * summary(notebook_model(), (1, 28, 28)).total_macs


def cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"processor": platform.processor() or platform.machine()}
    flags: set[str] = set()
    mhz = None
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
            elif line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    info["flags"] = [f for f in wanted if f in flags]
    info["mhz"] = mhz
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    # two FMA units, `lanes` float32 per vector, 2 FLOPs per FMA (an upper bound)
    info["fp32_flops_per_cycle_per_core"] = 2 * lanes * 2
    return info


def bench_compute(e2e: dict[str, Any], device: torch.device, cpu: dict[str, Any]) -> dict[str, Any]:
    flops = training_flops_per_image() * len(mnist_sample())
    result: dict[str, Any] = {"training_gflop_per_epoch": flops / 1e9}
    for name, seconds in e2e["seconds_per_epoch"].items():
        result[f"{name}_gflops"] = flops / seconds / 1e9
    if device.type == "cpu" and cpu.get("mhz"):
        peak = torch.get_num_threads() * cpu["fp32_flops_per_cycle_per_core"] * cpu["mhz"] * 1e6
        result["fp32_peak_gflops_estimate"] = peak / 1e9
        result["fit_fraction_of_fp32_peak"] = result["fit_gflops"] / (peak / 1e9)
    return result


# ----------------------------------------------------------------------------- reports


E2E = {"fit": "`fit`", "fit_bf16": '`fit(precision="bf16")`'}  # contender: its label
LABELS = {
    "notebook": "notebook",
    "notebook_loop_convkit_net": "notebook loop on `build_cnn`'s network",
    "fit": "`fit`",
    "fit_bf16": "`fit` bf16",
}
OVERHEADS = {"overhead": "32", "overhead_bf16": "bf16"}  # results key: precision
MEMORY_FORMATS = {  # results key: how the table names it
    "memory_format": "memory format (fit epoch)",
    "memory_format_large": "memory format, wider CNN (64x64 RGB, 64-128-256 channels)",
}

#: Every target in one place: name -> (where the value is in the results, "<=" or ">=", limit).
TARGETS: dict[str, tuple[tuple[str, str], str, float]] = {
    "data path, times faster": (("data", "speedup"), ">=", 50.0),
    "fit / hand loop, fp32": (("overhead", "ratio"), "<=", 1.03),
    "fit / hand loop, fp32, loss difference": (("overhead", "loss_abs_diff"), "<=", 1e-5),
    "fit / hand loop, bf16": (("overhead_bf16", "ratio"), "<=", 1.03),
    "fit / hand loop, bf16, loss difference": (("overhead_bf16", "loss_abs_diff"), "<=", 1e-5),
    "fit / notebook, end to end": (("e2e", "ratio_fit_vs_notebook"), "<=", 0.6),
    "fit bf16 / notebook, end to end": (("e2e", "ratio_fit_bf16_vs_notebook"), "<=", 0.3),
    "bf16 vs fp32 accuracy, points apart": (("e2e", "bf16_accuracy_points_apart"), "<=", 0.5),
}


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of ``TARGETS`` with its measured value and whether it is met."""
    checks = []
    for name, ((section, key), op, limit) in TARGETS.items():
        value = results[section][key]
        met = value <= limit if op == "<=" else value >= limit
        checks.append({"target": name, "value": value, "op": op, "limit": limit, "met": met})
    return checks


def overhead_row(precision: str, o: dict[str, Any]) -> str:
    bf16 = precision == "bf16"
    args = "metrics=(), nan_guard=False" + (', precision="bf16"' if bf16 else "")
    return (
        f"| framework overhead, one epoch{', bf16' if bf16 else ''} | hand-written loop "
        f"{o['hand_s']:.3f} s | `fit({args})` {o['fit_s']:.3f} s | **{o['ratio']:.3f}** "
        f"(median of back-to-back pairs; loss diff {o['loss_abs_diff']:.1e}) |"
    )


def memory_format_row(label: str, mf: dict[str, Any]) -> str:
    s = mf["seconds_per_epoch"]
    return (
        f"| {label} | contiguous {s['contiguous/32']:.3f} s fp32, {s['contiguous/bf16']:.3f} s "
        f"bf16 | channels_last {s['channels_last/32']:.3f} s fp32, {s['channels_last/bf16']:.3f} "
        f"s bf16 | **{mf['channels_last_speedup_fp32']:.2f}x** fp32, "
        f"**{mf['channels_last_speedup_bf16']:.2f}x** bf16 faster |"
    )


def flatten_row(f: dict[str, Any]) -> str:
    def side(key: str) -> str:
        return f"{f['fp32'][key]:.3f} s fp32, {f['bf16'][key]:.3f} s bf16"

    gains = ", ".join(
        f"**{f[p]['gain']:.3f}x** {p} (pairs {f[p]['gain_min']:.3f}x-{f[p]['gain_max']:.3f}x)"
        for p in ("fp32", "bf16")
    )
    return (
        f"| channels_last gradient at the flatten (fit epoch) | `nn.Flatten` {side('off_s')} | "
        f"gradient in channels_last {side('on_s')} | {gains} |"
    )


def table_rows(results: dict[str, Any]) -> list[str]:
    d, e, ev = results["data"], results["e2e"], results["eval"]
    spe, acc, rounds = e["seconds_per_epoch"], e["test_accuracy"], e["round_ratios"]

    def spread(name: str) -> str:
        values = rounds[name]
        return f" (rounds {min(values):.3f}x-{max(values):.3f}x)" if len(values) > 1 else ""

    rows = [
        f"| data path, one pass | DataLoader + ToTensor {d['notebook_s'] * 1e3:.1f} ms | "
        f"`predict` {d['convkit_s'] * 1e3:.2f} ms | **{d['speedup']:.0f}x faster** |",
        *(overhead_row(precision, results[key]) for key, precision in OVERHEADS.items()),
        f"| end to end, s/epoch ({e['epochs']} epochs, whole calls) | notebook "
        f"{spe['notebook']:.3f} s, acc {acc['notebook']:.3f} | `fit` {spe['fit']:.3f} s, acc "
        f"{acc['fit']:.3f} | **{e['ratio_fit_vs_notebook']:.3f}x**{spread('fit')} |",
        f'| end to end, bf16 | notebook {spe["notebook"]:.3f} s | `fit(precision="bf16")` '
        f"{spe['fit_bf16']:.3f} s, acc {acc['fit_bf16']:.3f} | "
        f"**{e['ratio_fit_bf16_vs_notebook']:.3f}x**{spread('fit_bf16')} "
        f"({e['bf16_accuracy_points_vs_fp32']:+.1f} points vs fp32) |",
        f"| reference: the notebook's loop on `build_cnn`'s network (in-place ReLU) | "
        f"notebook {spe['notebook']:.3f} s | notebook loop "
        f"{spe['notebook_loop_convkit_net']:.3f} s, acc {acc['notebook_loop_convkit_net']:.3f} | "
        f"**{spe['notebook_loop_convkit_net'] / spe['notebook']:.2f}x** |",
        f"| evaluate {ev['images']:,} images | `eval_net` {ev['eval_net_images_per_s']:.0f} "
        f"img/s | `evaluate` {ev['evaluate_images_per_s']:.0f} img/s | "
        f"**{ev['speedup']:.2f}x** the throughput |",
    ]
    rows += [memory_format_row(label, results[k]) for k, label in MEMORY_FORMATS.items()
             if k in results]  # fmt: skip
    if "flatten_grad" in results:
        rows.append(flatten_row(results["flatten_grad"]))
    comp = results.get("compile")
    if comp:
        rows.append(
            f"| `compile=True` (fit epoch) | eager {comp['eager_epoch_s']:.3f} s | compiled "
            f"{comp['compiled_epoch_s']:.3f} s after {comp['compile_s']:.1f} s of compilation | "
            f"**{comp['speedup']:.2f}x** |"
        )
    return rows


def target_rows(results: dict[str, Any]) -> list[str]:
    rows = ["| target | limit | measured | met |", "| --- | --- | --- | --- |"]
    for c in results["targets"]:
        rows.append(
            f"| {c['target']} | {c['op']} {c['limit']:g} | {c['value']:.3g} | "
            f"{'yes' if c['met'] else '**no**'} |"
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The generated part of the Performance page: tables and measured figures only."""
    env, e, c = results["env"], results["e2e"], results["compute"]
    lines = [
        f"Measured {env['date']} on **{env['device_name']}** ({env['threads']} threads), "
        f"torch {env['torch']}, convkit {env['convkit']}; {env['repeats']} alternating repeats "
        f"after a warm-up, {e['rounds']} end-to-end rounds in alternating order.",
        "",
        "| comparison | baseline | convkit | ratio |",
        "| --- | --- | --- | --- |",
        *table_rows(results),
        "",
        *target_rows(results),
        "",
        f"Training compute: {c['training_gflop_per_epoch']:.1f} GFLOP per epoch; GFLOP/s: "
        + ", ".join(f"{LABELS[k]} {c[f'{k}_gflops']:.0f}" for k in LABELS)
        + (
            f"; fp32 peak estimate {c['fp32_peak_gflops_estimate']:.0f}, `fit` at "
            f"{100 * c['fit_fraction_of_fp32_peak']:.0f}%."
            if "fp32_peak_gflops_estimate" in c
            else "."
        ),
        "",
        "Share of a `fit` epoch each removal saves: "
        + "; ".join(
            f"{label} {100 * results['ablation']['32'][f'{kind}_share']:.0f}% fp32, "
            f"{100 * results['ablation']['bf16'][f'{kind}_share']:.0f}% bf16"
            for kind, label in ABLATIONS.items()
        )
        + ".",
    ]
    faults = e["minor_page_faults_per_epoch"]
    if faults:
        lines += [
            "",
            "Minor page faults per epoch (median): "
            + ", ".join(f"{LABELS[k]} {v:,.0f}" for k, v in faults.items())
            + ".",
        ]
    lines += [
        "",
        "End-to-end ratio per round: "
        + "; ".join(
            f"{label} " + ", ".join(f"{r:.3f}x" for r in e["round_ratios"][name])
            for name, label in E2E.items()
        )
        + ".",
    ]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    e, d = results["e2e"], results["data"]
    overhead_colors = {"32": "#55a868", "bf16": "#8c8c3c"}
    bars_ = [("data path\n(convkit / notebook)", 1 / d["speedup"], "#4c72b0")]
    for key, precision in OVERHEADS.items():
        p = "" if precision == "32" else f" {precision}"
        bars_.append((f"fit{p} / hand loop{p}", results[key]["ratio"], overhead_colors[precision]))
    bars_ += [
        ("fit / notebook", e["ratio_fit_vs_notebook"], "#c44e52"),
        ("fit bf16 / notebook", e["ratio_fit_bf16_vs_notebook"], "#8172b2"),
    ]
    labels, values, colors = zip(*bars_, strict=True)
    fig = Figure(figsize=(7, 0.8 * len(values)), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(labels, values, color=colors)
    # three decimals near 1 (1.004 is not "1x"), three significant digits below 0.1
    ax.bar_label(bars, labels=[f"{v:.3f}x" if v >= 0.1 else f"{v:.3g}x" for v in values],
                 padding=3)  # fmt: skip
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("time ratio (lower is faster; log scale)")
    ax.set_title(f"convkit on {results['env']['device_name']}")
    ax.invert_yaxis()
    fig.savefig(path)


def write_outputs(results: dict[str, Any], out_dir: Path, img_dir: Path | None) -> None:
    kind = results["env"]["device"].split(":")[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"results-{kind}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"results-{kind}.md").write_text(markdown(results) + "\n")
    if img_dir is not None:
        img_dir.mkdir(parents=True, exist_ok=True)
        chart(results, img_dir / f"benchmark-{kind}.png")


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="end-to-end runs per contender")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: few repeats, 1 epoch, no torch.compile")  # fmt: skip
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--img-dir", default=str(ROOT / "docs" / "img"),
                        help="where the bar chart goes; '-' for none")  # fmt: skip
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: regenerate the tables and charts from the "
                        "results-*.json already in --out-dir")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs, args.rounds, args.no_compile = 2, 1, 2, True
    args.img_dir = None if args.img_dir == "-" else Path(args.img_dir)
    return args


def environment(device: torch.device, repeats: int) -> dict[str, Any]:
    cpu = cpu_info()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu["processor"]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "convkit": convkit.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "repeats": repeats,
    }


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from torchvision import transforms
    from torchvision.datasets import MNIST

    env = environment(device, args.repeats)
    print(f"device {device} ({env['device_name']}), {env['threads']} threads, torch {env['torch']}")
    few = max(2, args.repeats // 2)
    results: dict[str, Any] = {"env": env}
    with tempfile.TemporaryDirectory() as tmp:
        write_idx(Path(tmp))
        tv_train = MNIST(tmp, train=True, transform=transforms.ToTensor())
        tv_test = MNIST(tmp, train=False, transform=transforms.ToTensor())
        results["data"] = bench_data_path(tv_train, args.repeats, device)
        for key, precision in OVERHEADS.items():
            results[key] = bench_overhead(args.repeats, device, precision)
        results["e2e"] = bench_end_to_end(tv_train, tv_test, args.epochs, args.rounds, device)
        results["eval"] = bench_evaluate(tv_test, args.repeats, device)
    results["compute"] = bench_compute(results["e2e"], device, env["cpu"])
    results["ablation"] = bench_ablation(few, device)
    results["memory_format"] = bench_memory_format(few, device)
    if device.type == "cuda":
        results["memory_format_large"] = bench_memory_format_large(device)
    results["flatten_grad"] = bench_flatten_grad(args.repeats, device)
    if not args.no_compile:
        results["compile"] = bench_compile(device)
    results["targets"] = check_targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Measure (or ``--render``), write the generated files; 1 when a target is missed."""
    args = parse_args(argv)
    if args.render:
        for path in sorted(args.out_dir.glob("results-*.json")):
            write_outputs(json.loads(path.read_text()), args.out_dir, args.img_dir)
        return 0
    results = measure(args, convkit.resolve_device(args.device))
    write_outputs(results, args.out_dir, args.img_dir)
    print(markdown(results))
    missed = [c["target"] for c in results["targets"] if not c["met"]]
    if missed:
        print(f"Targets missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
