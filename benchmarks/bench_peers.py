"""convkit.fit against the trainers users would pick instead: Lightning, skorch, ignite, Keras 3.

Every contender trains the same network from the same initial weights on the same data,
with Adam (lr 1e-3), cross-entropy and the same batch size, for the same number of epochs:

- a hand-written loop over tensors in memory (the baseline of every ratio): fp32, contiguous;
- ``convkit.fit`` at its defaults, at the peers' settings (``memory_format="contiguous"``)
  and at its fastest (``precision="bf16"``, channels_last by default);
- Lightning (``Trainer`` + ``DataLoader``), skorch (``NeuralNet``), pytorch-ignite
  (``create_supervised_trainer`` + ``DataLoader``) and Keras 3 on its torch backend
  (``TorchModuleWrapper``, NumPy arrays): each at its defaults with progress bars and
  logging off, and each at its fastest documented settings on a CPU (a channels_last model,
  bf16 autocast where the trainer has a way to ask for it).

Two workloads: the teaching notebook's network on the bundled 4,000 MNIST training images
(2 epochs, batch 128, test accuracy on the 1,000 bundled test images), and a larger
ResNet-style CNN on random 3x64x64 images (batch 256, one epoch; the trainers at their
defaults and the bf16 rows of fit and Lightning), where kernels weigh more than the
per-step overhead. Contenders run in one process, in alternating order (A..Z, Z..A, ...),
after one warm-up run each; each round gives every contender's time over the baseline's,
and the tables show the medians over the rounds. Time per epoch is the wall time of the
whole training call divided by the number of epochs: each trainer's set-up is part of it.

    pip install "torch-convkit[bench]"                   # the peers, never needed by convkit
    python benchmarks/bench_peers.py                     # writes JSON, tables, chart
    python benchmarks/bench_peers.py --threads 1         # on a shared machine (see the page)
    python benchmarks/bench_peers.py --quick             # a smoke run: 1 round, fewer images
    python benchmarks/bench_peers.py --render            # redraw from the saved JSON only

A peer that isn't installed is reported as such and left out; nothing here is imported by
convkit or by its tests.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.metadata
import io
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import convkit
from convkit import fit, mnist_sample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from notebook_baseline import notebook_net  # noqa: E402

LR = 1e-3
SEED = 0
PEERS = {  # import name: distribution name
    "lightning": "lightning",
    "skorch": "skorch",
    "ignite": "pytorch-ignite",
    "keras": "keras",
}


# ------------------------------------------------------------------------- the workloads


@dataclass
class Workload:
    name: str
    title: str
    make_model: Callable[[], nn.Module]
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    epochs: int
    batch_size: int
    warm_up_images: int
    keys: tuple[str, ...] | None = None  # contenders measured here (None: all)


class BasicBlock(nn.Module):
    """A ResNet basic block (two 3x3 convs, BatchNorm, identity or 1x1 projection shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet_style(num_classes: int = 10) -> nn.Sequential:
    """A small ResNet for 3x64x64 inputs: stem, stages of 16/32/64 channels, global pool.

    About 0.1 GFLOP per image forward (the notebook's network: 0.01), so a step is
    dominated by convolution kernels rather than by the trainer's per-step work.
    """
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),  # (N, 16, 64, 64)
        BasicBlock(16, 16, 1),
        BasicBlock(16, 32, 2),  # (N, 32, 32, 32)
        BasicBlock(32, 64, 2),  # (N, 64, 16, 16)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (N, 64)
        nn.Linear(64, num_classes),
    )  # fmt: skip


def seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``factory`` with the same initial weights on every call."""
    torch.manual_seed(SEED)
    reference = factory()

    def make() -> nn.Module:
        return copy.deepcopy(reference)

    return make


# The larger workload costs ~40x the notebook network per image: it runs the trainers at
# their defaults and the bf16 rows of fit and Lightning, one epoch.
LARGE_KEYS = ("hand", "fit", "fit_contiguous", "fit_bf16", "lightning", "lightning_fast",
              "skorch", "ignite", "keras")  # fmt: skip


def workloads(quick: bool, large_images: int) -> list[Workload]:
    x, y = mnist_sample(train=True).tensors
    x_test, y_test = mnist_sample(train=False).tensors
    gen = torch.Generator().manual_seed(SEED)
    n = 256 if quick else large_images
    x_large = torch.randn(n, 3, 64, 64, generator=gen)
    y_large = torch.randint(0, 10, (n,), generator=gen)
    if quick:
        x, y = x[:512], y[:512]
    return [
        Workload(
            "mnist", "notebook network, bundled MNIST (4,000 images), batch 128",
            seeded(notebook_net), x, y, x_test, y_test, 1 if quick else 2, 128, 256,
        ),
        Workload(
            "resnet64", f"ResNet-style CNN, random 3x64x64 images ({n:,}), batch 256",
            seeded(resnet_style), x_large, y_large, None, None, 1, 256, 16, LARGE_KEYS,
        ),
    ]  # fmt: skip


def test_accuracy(model: nn.Module, w: Workload) -> float | None:
    """Accuracy on the workload's test images, measured the same way for every contender."""
    if w.x_test is None or w.y_test is None:
        return None
    model = model.to(memory_format=torch.contiguous_format).float().eval()
    with torch.no_grad():
        predictions = torch.cat([model(xb).argmax(1) for xb in w.x_test.split(500)])
    return float((predictions == w.y_test).float().mean())


# ----------------------------------------------------------------------- the contenders


def hand_loop(w: Workload) -> nn.Module:
    """The baseline: a plain fp32 loop over tensors in memory, no DataLoader, no extras."""
    model = w.make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(w.epochs):
        perm = torch.randperm(len(w.x), generator=gen)
        for start in range(0, len(w.x), w.batch_size):
            idx = perm[start : start + w.batch_size]
            loss = F.cross_entropy(model(w.x[idx]), w.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def convkit_fit(**settings: Any) -> Callable[[Workload], nn.Module]:
    def run(w: Workload) -> nn.Module:
        model = w.make_model()
        fit(
            model,
            TensorDataset(w.x, w.y),
            epochs=w.epochs,
            batch_size=w.batch_size,
            lr=LR,
            device="cpu",
            progress=False,
            seed=SEED,
            **settings,
        )
        return model

    return run


def loader(w: Workload, shuffle: bool = True) -> DataLoader[Any]:
    gen = torch.Generator().manual_seed(SEED)
    return DataLoader(
        TensorDataset(w.x, w.y), batch_size=w.batch_size, shuffle=shuffle, generator=gen
    )


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def lightning_fit(fastest: bool) -> Callable[[Workload], nn.Module]:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            if fastest:
                x = to_channels_last(x)
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=LR)

    def run(w: Workload) -> nn.Module:
        net = w.make_model()
        if fastest:
            net = net.to(memory_format=torch.channels_last)
        trainer = L.Trainer(
            max_epochs=w.epochs,
            accelerator="cpu",
            devices=1,
            precision="bf16-mixed" if fastest else "32-true",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Module(net), loader(w))
        return net

    return run


def skorch_fit(fastest: bool) -> Callable[[Workload], nn.Module]:
    from skorch import NeuralNet

    class BF16Net(NeuralNet):  # type: ignore[misc]
        """skorch's documented way to change a step: override ``infer`` (here: autocast)."""

        def infer(self, x: Any, **fit_params: Any) -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return super().infer(to_channels_last(x), **fit_params).float()

    def run(w: Workload) -> nn.Module:
        net = w.make_model()
        if fastest:
            net = net.to(memory_format=torch.channels_last)
        trainer = (BF16Net if fastest else NeuralNet)(
            module=net,
            criterion=nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=LR,
            max_epochs=w.epochs,
            batch_size=w.batch_size,
            train_split=None,  # skorch holds out 20 % for validation by default
            iterator_train__shuffle=True,  # skorch doesn't shuffle by default
            device="cpu",
            verbose=0,
        )
        trainer.fit(w.x.numpy(), w.y.numpy())
        return net

    return run


def ignite_fit(fastest: bool) -> Callable[[Workload], nn.Module]:
    from ignite.engine import create_supervised_trainer

    def bf16_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # ignite's amp_mode="amp" autocasts for CUDA only; model_fn is its hook for the rest
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(to_channels_last(x)).float()

    def run(w: Workload) -> nn.Module:
        net = w.make_model()
        if fastest:
            net = net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        extra: dict[str, Any] = {"model_fn": bf16_forward} if fastest else {}
        trainer = create_supervised_trainer(
            net, optimizer, nn.CrossEntropyLoss(), device="cpu", **extra
        )
        trainer.logger.setLevel(logging.WARNING)
        trainer.run(loader(w), max_epochs=w.epochs)
        return net

    return run


def keras_fit() -> Callable[[Workload], nn.Module]:
    import keras

    def run(w: Workload) -> nn.Module:
        keras.utils.set_random_seed(SEED)
        net = w.make_model()
        shape = tuple(w.x.shape[1:])
        model = keras.Sequential([keras.Input(shape=shape), keras.layers.TorchModuleWrapper(net)])
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=LR),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(w.x.numpy(), w.y.numpy(), batch_size=w.batch_size, epochs=w.epochs, verbose=0)
        return net

    return run


@dataclass
class Contender:
    key: str
    label: str
    peer: str | None  # import name of the peer, None for convkit and the hand loop
    settings: str  # "defaults", "fastest" or "baseline"
    how: str
    make: Callable[[], Callable[[Workload], nn.Module]]


CONTENDERS = [
    Contender("hand", "hand-written loop", None, "baseline",
              "fp32, contiguous, tensors in memory, torch.optim.Adam", lambda: hand_loop),
    Contender("fit", "convkit.fit", None, "defaults",
              "defaults (channels_last for conv nets, fused Adam, NaN guard, accuracy)",
              lambda: convkit_fit()),
    Contender("fit_contiguous", "convkit.fit, peers' settings", None, "equal",
              'memory_format="contiguous" (fp32, the layout the peers use)',
              lambda: convkit_fit(memory_format="contiguous")),
    Contender("fit_bf16", "convkit.fit, fastest", None, "fastest",
              'precision="bf16" (channels_last by default)',
              lambda: convkit_fit(precision="bf16")),
    Contender("lightning", "Lightning", "lightning", "defaults",
              "Trainer(accelerator='cpu'), DataLoader(shuffle=True)",
              lambda: lightning_fit(fastest=False)),
    Contender("lightning_fast", "Lightning, fastest", "lightning", "fastest",
              'precision="bf16-mixed", channels_last model and batches',
              lambda: lightning_fit(fastest=True)),
    Contender("skorch", "skorch", "skorch", "defaults",
              "NeuralNet, NumPy arrays, no validation split, shuffled",
              lambda: skorch_fit(fastest=False)),
    Contender("skorch_fast", "skorch, fastest", "skorch", "fastest",
              "bf16 autocast in an overridden infer(), channels_last",
              lambda: skorch_fit(fastest=True)),
    Contender("ignite", "ignite", "ignite", "defaults",
              "create_supervised_trainer, DataLoader(shuffle=True)",
              lambda: ignite_fit(fastest=False)),
    Contender("ignite_fast", "ignite, fastest", "ignite", "fastest",
              "bf16 autocast through model_fn, channels_last",
              lambda: ignite_fit(fastest=True)),
    Contender("keras", "Keras 3 (torch)", "keras", "defaults",
              "TorchModuleWrapper, NumPy arrays, compile + fit",
              keras_fit),
]  # fmt: skip
# Keras's mixed_bfloat16 policy is not a contender: Keras casts the wrapper's input to
# bfloat16 while the wrapped torch module keeps float32 weights, and the first batch fails.
KERAS_FASTEST_NOTE = (
    "Keras's fastest documented CPU setting, the `mixed_bfloat16` policy, does not work with "
    "a wrapped torch module: Keras casts the input to bfloat16 while the module keeps its "
    "float32 weights, and building the model fails. Keras has no row at its fastest."
)


# ------------------------------------------------------------------------- measuring


def installed(peer: str | None) -> str | None:
    """The peer's version, or None if it can't be imported."""
    if peer is None:
        return convkit.__version__
    try:
        __import__(peer)
    except ImportError:
        return None
    return importlib.metadata.version(PEERS[peer])


def alternating(names: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, name): names in order, then reversed, and so on."""
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            yield r, name


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The peers' banners, warnings and logs off, as their users would set them."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def measure(w: Workload, contenders: list[Contender], rounds: int) -> dict[str, Any]:
    runs = {c.key: c.make() for c in contenders if w.keys is None or c.key in w.keys}
    warm = Workload(**{**w.__dict__, "epochs": 1, "x": w.x[: w.warm_up_images],
                       "y": w.y[: w.warm_up_images]})  # fmt: skip
    with quiet():
        for run in runs.values():
            run(warm)
    seconds: dict[str, list[float]] = {key: [0.0] * rounds for key in runs}
    accuracy: dict[str, list[float]] = {key: [] for key in runs}
    for r, key in alternating(list(runs), rounds):
        with quiet():
            start = time.perf_counter()
            model = runs[key](w)
            seconds[key][r] = (time.perf_counter() - start) / w.epochs
        acc = test_accuracy(model, w)
        if acc is not None:
            accuracy[key].append(acc)
        print(f"  {w.name} round {r + 1}: {key:15s} {seconds[key][r]:7.2f} s/epoch"
              + (f"  test accuracy {acc:.3f}" if acc is not None else ""), flush=True)  # fmt: skip
    result: dict[str, Any] = {}
    for key in runs:
        ratios = [t / b for t, b in zip(seconds[key], seconds["hand"], strict=True)]
        result[key] = {
            "seconds_per_epoch": seconds[key],
            "median_seconds_per_epoch": statistics.median(seconds[key]),
            "ratio_to_hand_loop": statistics.median(ratios),
            "ratios": ratios,
            "test_accuracy": statistics.median(accuracy[key]) if accuracy[key] else None,
        }
    return result


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }


# ------------------------------------------------------------------------- reporting

SETTINGS_ORDER = {"baseline": 0, "defaults": 1, "equal": 2, "fastest": 3}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    versions = ", ".join(f"{name} {v}" for name, v in results["versions"].items() if v)
    missing = [name for name, v in results["versions"].items() if v is None]
    lines = [
        f"Measured {results['date']} on {m['cpu']} ({m['cores']} cores, torch using "
        f"{m['torch_threads']} thread{'s' if m['torch_threads'] != 1 else ''}), "
        f"{m['os']}, Python {m['python']}; {versions}. "
        f"{results['rounds']} rounds per contender, alternating order; medians. "
        f"Load average at the start {m['load_average_at_start'][0]:.1f}, at the end "
        f"{m['load_average_at_end'][0]:.1f}.",
    ]
    if missing:
        lines += ["", "Not installed, so not measured: " + ", ".join(missing) + "."]
    labels = {c.key: c for c in CONTENDERS}
    for w in results["workloads"]:
        rows = sorted(
            w["contenders"].items(),
            key=lambda kv: (SETTINGS_ORDER[labels[kv[0]].settings], kv[1]["ratio_to_hand_loop"]),
        )
        has_acc = any(r["test_accuracy"] is not None for _, r in rows)
        epochs = f"{w['epochs']} epoch{'s' if w['epochs'] != 1 else ''}"
        lines += ["", f"**{w['title']}**, {epochs}", ""]
        head = "| contender | settings | s/epoch | × hand loop |" + (
            " test accuracy |" if has_acc else ""
        )
        lines += [head, "|---|---|---:|---:|" + ("---:|" if has_acc else "")]
        for key, r in rows:
            c = labels[key]
            acc = (
                f" {r['test_accuracy']:.3f} |"
                if has_acc and r["test_accuracy"] is not None
                else (" |" if has_acc else "")
            )
            lines.append(
                f"| {c.label} | {c.how} | {r['median_seconds_per_epoch']:.2f} | "
                f"{r['ratio_to_hand_loop']:.2f} |{acc}"
            )  # fmt: skip
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> list[str]:
    """What the numbers say about the targets, sentence by sentence."""
    labels = {c.key: c for c in CONTENDERS}
    out = []
    for w in results["workloads"]:
        ratios = {k: r["ratio_to_hand_loop"] for k, r in w["contenders"].items()}
        defaults = {k: v for k, v in ratios.items() if labels[k].settings == "defaults"}
        best_default = min(defaults, key=defaults.__getitem__)
        fastest = {k: v for k, v in ratios.items() if labels[k].settings == "fastest"}
        best_fastest = min(fastest, key=fastest.__getitem__) if fastest else None
        peers_default = {k: v for k, v in defaults.items() if labels[k].peer}
        best_peer = min(peers_default, key=peers_default.__getitem__) if peers_default else None
        text = f"{w['short']}: "
        if best_default == "fit":
            text += "`fit` at its defaults is the fastest of all contenders at their defaults"
            if best_peer:
                text += (f" ({ratios['fit']:.2f}x the hand loop; the fastest peer, "
                         f"{labels[best_peer].label}, {ratios[best_peer]:.2f}x)")  # fmt: skip
        else:
            text += (f"{labels[best_default].label} at its defaults ({ratios[best_default]:.2f}x) "
                     f"beat `fit` at its defaults ({ratios['fit']:.2f}x)")  # fmt: skip
        if best_peer and "fit_contiguous" in ratios:
            gap = ratios["fit_contiguous"] / ratios[best_peer] - 1
            text += (f"; at the peers' settings (fp32, contiguous) `fit` is "
                     f"{abs(gap) * 100:.0f} % {'slower' if gap > 0 else 'faster'} than "
                     f"{labels[best_peer].label}")  # fmt: skip
        if best_fastest:
            text += (f"; at each one's fastest, {labels[best_fastest].label} leads "
                     f"({ratios[best_fastest]:.2f}x)")  # fmt: skip
        out.append(text + ".")
    return out


def spread(results: dict[str, Any]) -> str:
    """How far the baseline's own time moved between rounds, per workload."""
    parts = []
    for w in results["workloads"]:
        hand = w["contenders"]["hand"]["seconds_per_epoch"]
        parts.append(f"{w['short']}: {min(hand):.1f} to {max(hand):.1f} s per epoch")
    return (
        "The hand-written loop's own time varied between rounds ("
        + "; ".join(parts)
        + "): differences between contenders smaller than that spread are noise; the "
        "per-round ratios are in the JSON."
    )


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {c.key: c for c in CONTENDERS}
    workloads_ = results["workloads"]
    fig, axes = plt.subplots(1, len(workloads_), figsize=(6 * len(workloads_), 4.8), squeeze=False)
    colors = {
        "baseline": "#888888",
        "defaults": "#3f51b5",
        "equal": "#7986cb",
        "fastest": "#e91e63",
    }
    for ax, w in zip(axes[0], workloads_, strict=True):
        rows = sorted(w["contenders"].items(), key=lambda kv: -kv[1]["ratio_to_hand_loop"])
        names = [labels[k].label for k, _ in rows]
        values = [r["ratio_to_hand_loop"] for _, r in rows]
        bars = ax.barh(names, values, color=[colors[labels[k].settings] for k, _ in rows])
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_title(w["short"], fontsize=10)
        ax.set_xlabel("time per epoch / hand-written loop (lower is faster)")
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlim(0, max(values) * 1.18)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(handles, ["baseline", "defaults", "fit at the peers' settings", "fastest"],
               loc="lower center", ncol=4, fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict[str, Any]) -> str:
    """The generated part of the Performance page: tables, findings, chart."""
    m = results["machine"]
    shared = (
        f"The machine was shared with other jobs during this run (load average "
        f"{m['load_average_at_start'][0]:.1f} at the start on {m['cores']} cores): the "
        f"absolute times are several times an idle machine's and the ratios are noisy."
        if m["load_average_at_start"][0] > 0.75 * (m["cores"] or 1)
        else ""
    )
    lines = [
        markdown(results),
        "",
        *[f"- {line}" for line in verdict(results)],
        f"- {KERAS_FASTEST_NOTE}",
        f"- {spread(results)}",
    ]
    if shared:
        lines.append(f"- {shared}")
    lines += ["", f"![time per epoch relative to the hand-written loop](img/{results['chart']})"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--large-images", type=int, default=256,
                        help="random 3x64x64 images in the larger workload")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, few images")
    parser.add_argument("--only", default=None, help="comma-separated contender keys")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img",
                        help="where the chart goes; '-' to skip it")  # fmt: skip
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: redraw from the saved JSON")  # fmt: skip
    args = parser.parse_args(argv)
    json_path = args.out_dir / "peers-cpu.json"
    chart_name = "benchmark-peers-cpu.png"
    if args.render:
        results = json.loads(json_path.read_text())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        rounds = 1 if args.quick else args.rounds
        versions = {"convkit": convkit.__version__, "torch": torch.__version__,
                    "numpy": np.__version__}  # fmt: skip
        contenders = []
        for c in CONTENDERS:
            version = installed(c.peer)
            if c.peer:
                versions[PEERS[c.peer]] = version
            if version is None:
                print(f"{c.peer} is not installed: {c.label} left out")
            elif args.only is None or c.key in args.only.split(",") or c.key == "hand":
                contenders.append(c)
        results = {
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "versions": versions,
            "rounds": rounds,
            "workloads": [],
            "json": json_path.name,
            "chart": chart_name,
        }
        for w in workloads(args.quick, args.large_images):
            print(f"{w.title}: {len(contenders)} contenders, {rounds} rounds", flush=True)
            results["workloads"].append({
                "name": w.name,
                "title": w.title,
                "short": w.title.split(",")[0],
                "epochs": w.epochs,
                "batch_size": w.batch_size,
                "images": len(w.x),
                "contenders": measure(w, contenders, rounds),
            })  # fmt: skip
        results["machine"]["load_average_at_end"] = list(os.getloadavg())
        if not args.quick:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    if not args.quick:
        # docs/performance.md includes this file as it is (pymdownx.snippets)
        (args.out_dir / "peers-cpu.md").write_text(report(results) + "\n")
        if str(args.img_dir) != "-":
            chart(results, args.img_dir / chart_name)
    return results


if __name__ == "__main__":
    main()
