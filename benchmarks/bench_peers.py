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

Two workloads: a ResNet-20 (``build_cnn(block="residual")`` as the residual-blocks guide
builds it) on seeded random CIFAR-shaped 3x32x32 images, 16 steps of 128 per epoch; and the
teaching notebook's network on the bundled 4,000 MNIST training images, 32 steps of 128, with
test accuracy on the 1,000 bundled test images. Each call trains ``--epochs`` epochs (2: the
first and one in steady state).

How it is timed: every contender runs in its own worker process (started before any
timing, so each one's imports and peak memory are its own), warms up once on a few
batches, then runs ``--rounds`` times in alternating order (A..Z, Z..A, ...), one
contender at a time. Inside the call, each trainer's own end-of-epoch hook records the
clock (convkit ``Callback.on_epoch_end``, Lightning ``on_train_epoch_end``, skorch
``on_epoch_end``, ignite ``Events.EPOCH_COMPLETED``, Keras ``on_epoch_end``; the hand loop
after its epoch): the first epoch runs from the call to the first hook (set-up included),
the steady-state epochs from hook to hook. Each round gives every contender's steady-state
epoch over the hand loop's in the same round; two contenders whose ranges of those ratios
overlap are *unsettled*: neither a win nor a loss. Peak RSS is each worker's high-water
mark over its training call. The targets (``TARGETS``) are checked on the steady-state
ratios; the script exits with status 1 when one is missed.

    pip install "torch-convkit[bench]"                 # the peers, never needed by convkit
    python benchmarks/bench_peers.py                   # ~12 min on an idle 2-core machine
    python benchmarks/bench_peers.py --threads 1       # one torch thread per contender
    python benchmarks/bench_peers.py --quick           # a smoke run: 2 rounds, tiny data
    python benchmarks/bench_peers.py --render          # redraw from the saved JSON only

A peer that isn't installed is reported as such and left out; nothing here is imported by
convkit or by its tests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import io
import itertools
import json
import logging
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
from convkit import build_cnn, fit, mnist_sample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from notebook_baseline import notebook_net  # noqa: E402

LR = 1e-3
SEED = 0
#: glibc keeps freed blocks of up to 32 MiB in the process instead of giving them back and
#: faulting them in again on the next batch (``--malloc-retain``; see the Performance page).
MALLOC_RETAIN = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
PEERS = {  # import name: distribution name
    "lightning": "lightning",
    "skorch": "skorch",
    "ignite": "pytorch-ignite",
    "keras": "keras",
}


# ------------------------------------------------------------------------- the workloads


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    short: str
    images: int
    batch_size: int
    epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.images // self.batch_size)

    @property
    def warm_up_images(self) -> int:
        """Two batches, the second of the size the epoch ends with (every kernel shape)."""
        return self.batch_size + (self.images % self.batch_size or self.batch_size)


def workloads(quick: bool, epochs: int = 2) -> list[Workload]:
    """The two workloads; ``quick``: tiny ones for a smoke run (2 epochs)."""
    if quick:
        return [
            Workload("resnet20", "ResNet-20, 64 random 3x32x32 images", "ResNet-20", 64, 32, 2),
            Workload(
                "mnist", "notebook network, 256 MNIST images", "notebook network", 256, 128, 2
            ),
        ]
    return [
        Workload(
            "resnet20",
            "ResNet-20, 2,048 random 3x32x32 images (16 steps of 128 per epoch)",
            "ResNet-20",
            2048,
            128,
            epochs,
        ),
        Workload(
            "mnist",
            "notebook network, bundled MNIST (4,000 images, 32 steps of 128 per epoch)",
            "notebook network",
            4000,
            128,
            epochs,
        ),
    ]


def resnet20() -> nn.Module:
    """The CIFAR ResNet-20 of He et al. (2016), as docs/guide/residual-blocks.md builds it."""
    return build_cnn(
        (3, 32, 32),
        10,
        block="residual",
        stem=16,
        channels=(16, 32, 64),
        depths=3,
        stride=(1, 2, 2),
        pool=None,
        head_pool="avg",
        hidden=(),
    )


def make_model(w: Workload) -> nn.Module:
    """The workload's network with the same initial weights in every process."""
    torch.manual_seed(SEED)
    return resnet20() if w.name == "resnet20" else notebook_net()


@dataclass
class Data:
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None


def load_data(w: Workload) -> Data:
    """The same images in every process: seeded random ones, or the bundled MNIST sample."""
    if w.name == "resnet20":
        gen = torch.Generator().manual_seed(SEED)
        x = torch.randn(w.images, 3, 32, 32, generator=gen)
        return Data(x, torch.randint(0, 10, (w.images,), generator=gen))
    x, y = mnist_sample(train=True).tensors
    x_test, y_test = mnist_sample(train=False).tensors
    return Data(x[: w.images], y[: w.images], x_test, y_test)


def test_accuracy(model: nn.Module, data: Data) -> float | None:
    """Accuracy on the workload's test images, measured the same way for every contender."""
    if data.x_test is None or data.y_test is None:
        return None
    model = model.to(memory_format=torch.contiguous_format).float().eval()
    with torch.no_grad():
        predictions = torch.cat([model(xb).argmax(1) for xb in data.x_test.split(500)])
    return float((predictions == data.y_test).float().mean())


class EpochClock:
    """Readings at the start of a training call and at each epoch's end: the wall clock,
    the process's CPU time and its minor page faults (the last two barely move with the
    load of other jobs, so they tell a shared machine's noise from a real difference)."""

    def __init__(self) -> None:
        self.readings: list[float] = []
        self.cpu: list[float] = []
        self.faults: list[int] = []

    def start(self) -> None:
        self.readings, self.cpu, self.faults = [], [], []
        self.mark()

    def mark(self, *args: Any, **kwargs: Any) -> None:
        """Called by each trainer's own end-of-epoch hook (any arguments ignored)."""
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        self.cpu.append(time.process_time())
        self.readings.append(time.perf_counter())

    def epoch_seconds(self) -> list[float]:
        """First epoch (from the call, set-up included), then hook to hook."""
        return [b - a for a, b in itertools.pairwise(self.readings)]

    def epoch_cpu_seconds(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.cpu)]

    def epoch_faults(self) -> list[int]:
        return [b - a for a, b in itertools.pairwise(self.faults)]


# ----------------------------------------------------------------------- the contenders

#: A contender trains ``model`` on ``x, y`` in batches of ``batch_size`` for ``epochs``
#: epochs and calls ``clock.mark`` at the end of each epoch; it returns the trained network.
Train = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, int, EpochClock], nn.Module]


def hand_loop(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, clock: Any
) -> nn.Module:
    """The baseline: a plain fp32 loop over tensors in memory, no DataLoader, no extras."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        clock.mark()
    return model


def convkit_fit(**settings: Any) -> Train:
    class Clock(convkit.Callback):
        def __init__(self, clock: EpochClock) -> None:
            self.clock = clock

        def on_epoch_end(self, state: Any) -> None:
            self.clock.mark()

    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, clock: Any
    ) -> nn.Module:
        fit(
            model,
            TensorDataset(x, y),
            epochs=epochs,
            batch_size=batch_size,
            lr=LR,
            device="cpu",
            progress=False,
            seed=SEED,
            callbacks=[Clock(clock)],
            **settings,
        )
        return model

    return run


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> DataLoader[Any]:
    gen = torch.Generator().manual_seed(SEED)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=gen)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def lightning_fit(fastest: bool) -> Train:
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

    class Clock(L.Callback):
        def __init__(self, clock: EpochClock) -> None:
            self.clock = clock

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.clock.mark()

    def run(
        net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, clock: Any
    ) -> nn.Module:
        if fastest:
            net = net.to(memory_format=torch.channels_last)
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            precision="bf16-mixed" if fastest else "32-true",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Clock(clock)],
        )
        trainer.fit(Module(net), loader(x, y, batch_size))
        return net

    return run


def skorch_fit(fastest: bool) -> Train:
    from skorch import NeuralNet
    from skorch.callbacks import Callback

    class BF16Net(NeuralNet):  # type: ignore[misc]
        """skorch's documented way to change a step: override ``infer`` (here: autocast)."""

        def infer(self, x: Any, **fit_params: Any) -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return super().infer(to_channels_last(x), **fit_params).float()

    class Clock(Callback):  # type: ignore[misc]
        def __init__(self, clock: EpochClock) -> None:
            self.clock = clock

        def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
            self.clock.mark()

    def run(
        net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, clock: Any
    ) -> nn.Module:
        if fastest:
            net = net.to(memory_format=torch.channels_last)
        trainer = (BF16Net if fastest else NeuralNet)(
            module=net,
            criterion=nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=LR,
            max_epochs=epochs,
            batch_size=batch_size,
            train_split=None,  # skorch holds out 20 % for validation by default
            iterator_train__shuffle=True,  # skorch doesn't shuffle by default
            device="cpu",
            verbose=0,
            callbacks=[("clock", Clock(clock))],
        )
        trainer.fit(x.numpy(), y.numpy())
        return net

    return run


def ignite_fit(fastest: bool) -> Train:
    from ignite.engine import Events, create_supervised_trainer

    def bf16_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # ignite's amp_mode="amp" autocasts for CUDA only; model_fn is its hook for the rest
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(to_channels_last(x)).float()

    def run(
        net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, clock: Any
    ) -> nn.Module:
        if fastest:
            net = net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        extra: dict[str, Any] = {"model_fn": bf16_forward} if fastest else {}
        trainer = create_supervised_trainer(
            net, optimizer, nn.CrossEntropyLoss(), device="cpu", **extra
        )
        trainer.logger.setLevel(logging.WARNING)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, clock.mark)
        trainer.run(loader(x, y, batch_size), max_epochs=epochs)
        return net

    return run


def keras_fit() -> Train:
    import keras

    def run(
        net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, clock: Any
    ) -> nn.Module:
        keras.utils.set_random_seed(SEED)
        model = keras.Sequential(
            [keras.Input(shape=tuple(x.shape[1:])), keras.layers.TorchModuleWrapper(net)]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=LR),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(
            x.numpy(),
            y.numpy(),
            batch_size=batch_size,
            epochs=epochs,
            verbose=0,
            callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=clock.mark)],
        )
        return net

    return run


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    peer: str | None  # import name of the peer, None for convkit and the hand loop
    settings: str  # "baseline", "defaults", "equal" (fit at the peers' settings) or "fastest"
    how: str
    make: Callable[[], Train]


CONTENDERS = [
    Contender(
        "hand",
        "hand-written loop",
        None,
        "baseline",
        "fp32, contiguous, tensors in memory, torch.optim.Adam",
        lambda: hand_loop,
    ),
    Contender(
        "fit",
        "convkit.fit",
        None,
        "defaults",
        "defaults (channels_last for conv nets, fused Adam, NaN guard, accuracy)",
        lambda: convkit_fit(),
    ),
    Contender(
        "fit_contiguous",
        "convkit.fit, peers' settings",
        None,
        "equal",
        'memory_format="contiguous" (fp32, the layout the peers use)',
        lambda: convkit_fit(memory_format="contiguous"),
    ),
    Contender(
        "fit_bf16",
        "convkit.fit, fastest",
        None,
        "fastest",
        'precision="bf16" (channels_last by default)',
        lambda: convkit_fit(precision="bf16"),
    ),
    Contender(
        "lightning",
        "Lightning",
        "lightning",
        "defaults",
        "Trainer(accelerator='cpu'), DataLoader(shuffle=True)",
        lambda: lightning_fit(fastest=False),
    ),
    Contender(
        "lightning_fast",
        "Lightning, fastest",
        "lightning",
        "fastest",
        'precision="bf16-mixed", channels_last model and batches',
        lambda: lightning_fit(fastest=True),
    ),
    Contender(
        "skorch",
        "skorch",
        "skorch",
        "defaults",
        "NeuralNet, NumPy arrays, no validation split, shuffled",
        lambda: skorch_fit(fastest=False),
    ),
    Contender(
        "skorch_fast",
        "skorch, fastest",
        "skorch",
        "fastest",
        "bf16 autocast in an overridden infer(), channels_last",
        lambda: skorch_fit(fastest=True),
    ),
    Contender(
        "ignite",
        "ignite",
        "ignite",
        "defaults",
        "create_supervised_trainer, DataLoader(shuffle=True)",
        lambda: ignite_fit(fastest=False),
    ),
    Contender(
        "ignite_fast",
        "ignite, fastest",
        "ignite",
        "fastest",
        "bf16 autocast through model_fn, channels_last",
        lambda: ignite_fit(fastest=True),
    ),
    Contender(
        "keras",
        "Keras 3 (torch)",
        "keras",
        "defaults",
        "TorchModuleWrapper, NumPy arrays, compile + fit",
        keras_fit,
    ),
]
BY_KEY = {c.key: c for c in CONTENDERS}
# Keras's mixed_bfloat16 policy is not a contender: Keras casts the wrapper's input to
# bfloat16 while the wrapped torch module keeps float32 weights, and the first batch fails.
KERAS_FASTEST_NOTE = (
    "Keras's fastest documented CPU setting, the `mixed_bfloat16` policy, does not work with "
    "a wrapped torch module: Keras casts the input to bfloat16 while the module keeps its "
    "float32 weights, and building the model fails. Keras has no row at its fastest, so its "
    "defaults stand for it there."
)


# ---------------------------------------------------------------- one process per contender


def reset_peak_rss() -> bool:
    """Start a new high-water mark of this process's RSS (Linux); False where it can't."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mib(field: str = "VmHWM") -> float:
    """This process's peak RSS since ``reset_peak_rss`` (else since it started), in MiB;
    ``field="VmRSS"``: its RSS now (Linux; elsewhere the lifetime peak either way)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


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


def timed_run(train: Train, w: Workload, data: Data, *, images: int, epochs: int) -> dict[str, Any]:
    """One training call: its epoch times, its tail after the last epoch, its peak RSS."""
    model = make_model(w)  # built before the clock starts, the same way for every contender
    clock = EpochClock()
    exact = reset_peak_rss()
    rss_before = rss_mib("VmRSS")
    with quiet():
        clock.start()
        trained = train(model, data.x[:images], data.y[:images], w.batch_size, epochs, clock)
        end = time.perf_counter()
    seconds = clock.epoch_seconds()
    if len(seconds) != epochs:
        raise RuntimeError(f"the epoch hook fired {len(seconds)} times in {epochs} epochs")
    return {
        "epoch_seconds": seconds,
        "epoch_cpu_seconds": clock.epoch_cpu_seconds(),
        "epoch_minor_faults": clock.epoch_faults(),
        "tail_seconds": end - clock.readings[-1],
        "peak_rss_mib": rss_mib(),
        "rss_growth_mib": rss_mib() - rss_before,
        "rss_exact": exact,
        "test_accuracy": test_accuracy(trained, data),
    }


def worker(conn: Any, key: str, w: Workload, threads: int | None) -> None:
    """A contender's process: set up once, then train on each ``"warm"``/``"run"`` asked."""
    try:
        if threads:
            torch.set_num_threads(threads)
        data = load_data(w)
        with quiet():
            train = BY_KEY[key].make()
        conn.send({"ready": True})
        while (command := conn.recv()) != "stop":
            warm = command == "warm"
            images = w.warm_up_images if warm else w.images
            conn.send(timed_run(train, w, data, images=images, epochs=1 if warm else w.epochs))
    except Exception:  # the parent reports it and stops
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


class Worker:
    """The parent's handle on one contender's process."""

    def __init__(self, key: str, w: Workload, threads: int | None) -> None:
        context = multiprocessing.get_context("spawn")
        self.key = key
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker, args=(child, key, w, threads), daemon=True)
        self.process.start()
        child.close()

    def receive(self) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.key}: the worker process died") from None
        if "error" in reply:
            raise RuntimeError(f"{self.key} failed in its worker:\n{reply['error']}")
        return reply

    def ask(self, command: str) -> dict[str, Any]:
        self.conn.send(command)
        return self.receive()

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send("stop")
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


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


def alternating(names: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, name): names in order, then reversed, and so on."""
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            yield r, name


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def measure(w: Workload, keys: list[str], rounds: int, threads: int | None) -> dict[str, Any]:
    """Every contender's rounds on one workload, each in its own process."""
    load_before = load()
    workers = {key: Worker(key, w, threads) for key in keys}  # started side by side
    try:
        for worker_ in workers.values():
            worker_.receive()  # ready: imports and data loaded before any timing
        for worker_ in workers.values():
            worker_.ask("warm")
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
        order = []
        started = time.perf_counter()
        for r, key in alternating(keys, rounds):
            if r == 1 and len(order) == len(keys):
                per_round = time.perf_counter() - started
                print(
                    f"  round 1 took {per_round:.0f} s; about {per_round * (rounds - 1) / 60:.1f} "
                    "min to go on this workload",
                    flush=True,
                )
            run = workers[key].ask("run")
            runs[key].append(run)
            order.append(key)
            acc = run["test_accuracy"]
            epochs = " ".join(f"{s:6.2f}" for s in run["epoch_seconds"])
            accuracy = f", test accuracy {acc:.3f}" if acc is not None else ""
            print(
                f"  {w.name} round {r + 1}: {key:15s} epochs {epochs} s, peak RSS "
                f"{run['peak_rss_mib']:.0f} MiB{accuracy}",
                flush=True,
            )
    finally:
        for worker_ in workers.values():
            worker_.close()
    return {
        "name": w.name,
        "title": w.title,
        "short": w.short,
        "epochs": w.epochs,
        "batch_size": w.batch_size,
        "images": w.images,
        "steps_per_epoch": w.steps_per_epoch,
        "load_before": load_before,
        "load_after": load(),
        "order": order,
        "contenders": summarize(runs),
    }


# ------------------------------------------------------------------------- the figures


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per contender: first and steady-state epochs, their per-round ratios to the hand loop."""

    def steady(run: dict[str, Any]) -> float:
        return statistics.fmean(run["epoch_seconds"][1:])

    out: dict[str, Any] = {}
    hand = runs["hand"]
    for key, rounds in runs.items():
        firsts = [r["epoch_seconds"][0] for r in rounds]
        steadies = [steady(r) for r in rounds]
        ratios = [s / steady(h) for s, h in zip(steadies, hand, strict=True)]
        first_ratios = [f / h["epoch_seconds"][0] for f, h in zip(firsts, hand, strict=True)]
        accuracy = [r["test_accuracy"] for r in rounds if r["test_accuracy"] is not None]
        out[key] = {
            "epoch_seconds": [r["epoch_seconds"] for r in rounds],
            "epoch_cpu_seconds": [r["epoch_cpu_seconds"] for r in rounds],
            "steady_minor_faults": spread(
                [statistics.fmean(r["epoch_minor_faults"][1:]) for r in rounds]
            ),
            "tail_seconds": [r["tail_seconds"] for r in rounds],
            "first_epoch": spread(firsts),
            "steady_epoch": spread(steadies),
            "ratios": ratios,
            "ratio": spread(ratios),
            "first_ratios": first_ratios,
            "first_ratio": spread(first_ratios),
            "peak_rss_mib": spread([r["peak_rss_mib"] for r in rounds]),
            "rss_growth_mib": spread([r["rss_growth_mib"] for r in rounds]),
            "rss_exact": all(r["rss_exact"] for r in rounds),
            "test_accuracy": statistics.median(accuracy) if accuracy else None,
        }
    return out


def settle(a: Sequence[float], b: Sequence[float], tolerance: float = 0.0) -> str:
    """``"faster"`` or ``"slower"`` when ``a``'s range and ``b``'s (times ``1 + tolerance``)
    don't overlap, else ``"unsettled"``: neither a win nor a loss."""
    if max(a) < min(b) * (1 + tolerance):
        return "faster"
    if min(a) > max(b) * (1 + tolerance):
        return "slower"
    return "unsettled"


@dataclass(frozen=True)
class Target:
    name: str
    subject: str  # the fit contender checked
    kind: str  # "ahead" of each rival, "within" tolerance of the best, or "memory"
    rivals: str  # "peer defaults" or "peer fastest" (each peer's fastest row), or "hand"
    tolerance: float = 0.0
    text: str = field(default="", compare=False)


TARGETS = [
    Target(
        "defaults",
        "fit",
        "ahead",
        "peer defaults",
        text="`fit` at its defaults: the fastest contender at their defaults",
    ),
    Target(
        "peers' settings",
        "fit_contiguous",
        "within",
        "peer defaults",
        0.03,
        text="`fit` at the peers' settings (fp32, contiguous): within 3 % of the fastest peer",
    ),
    Target(
        "fastest",
        "fit_bf16",
        "ahead",
        "peer fastest",
        text="`fit` at its fastest: ahead of every peer at its fastest (its faster row)",
    ),
    Target(
        "memory",
        "fit",
        "memory",
        "hand",
        0.10,
        text="`fit`'s peak RSS: at most the hand loop's + 10 %",
    ),
]


def rivals(target: Target, contenders: dict[str, Any]) -> dict[str, str]:
    """Peer name -> the contender key that stands for it in ``target`` (its fastest row:
    the lowest median ratio among its rows, for "peer fastest")."""
    if target.rivals == "hand":
        return {"hand": "hand"} if "hand" in contenders else {}
    chosen: dict[str, str] = {}
    for key, r in contenders.items():
        c = BY_KEY[key]
        if c.peer is None or (target.rivals == "peer defaults" and c.settings != "defaults"):
            continue
        best = chosen.get(c.peer)
        if best is None or r["ratio"]["median"] < contenders[best]["ratio"]["median"]:
            chosen[c.peer] = key
    return chosen


def check_target(target: Target, contenders: dict[str, Any]) -> dict[str, Any]:
    """``result``: "met", "missed", "unsettled" or "not measured"; ``detail``: the figures."""
    against = rivals(target, contenders)
    out = {"target": target.name, "text": target.text, "subject": target.subject}
    if target.subject not in contenders or not against:
        return {**out, "result": "not measured", "detail": "contenders missing"}
    mine = contenders[target.subject]
    if target.kind == "memory":
        rss, limit = mine["peak_rss_mib"]["median"], contenders["hand"]["peak_rss_mib"]["median"]
        met = rss <= limit * (1 + target.tolerance)
        detail = f"{rss:.0f} MiB vs the hand loop's {limit:.0f} MiB (medians)"
        return {**out, "result": "met" if met else "missed", "detail": detail}
    if target.kind == "within":
        best = min(against.values(), key=lambda k: contenders[k]["ratio"]["median"])
        a, b = mine["ratio"], contenders[best]["ratio"]
        gap = a["median"] / b["median"] - 1
        if gap <= target.tolerance:
            result = "met"
        else:
            verdict = settle(mine["ratios"], contenders[best]["ratios"], target.tolerance)
            result = "missed" if verdict == "slower" else "unsettled"
        detail = f"{gap * 100:+.1f} % vs {BY_KEY[best].label} ({fmt_range(a)} vs {fmt_range(b)})"
        return {**out, "result": result, "detail": detail}
    verdicts = {k: settle(mine["ratios"], contenders[k]["ratios"]) for k in against.values()}
    if all(v == "faster" for v in verdicts.values()):
        result = "met"
    elif any(v == "slower" for v in verdicts.values()):
        result = "missed"
    else:
        result = "unsettled"
    words = {"faster": "faster than", "slower": "slower than", "unsettled": "unsettled against"}
    detail = "; ".join(
        f"{words[v]} {BY_KEY[k].label} ({fmt_range(contenders[k]['ratio'])})"
        for k, v in verdicts.items()
    )
    return {**out, "result": result, "detail": f"{fmt_range(mine['ratio'])}: {detail}"}


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"workload": w["short"], **check_target(target, w["contenders"])}
        for w in results["workloads"]
        for target in TARGETS
    ]


def exit_status(checks: list[dict[str, Any]]) -> int:
    """1 when a target is missed; unsettled and unmeasured ones don't count as misses."""
    return 1 if any(c["result"] == "missed" for c in checks) else 0


# ------------------------------------------------------------------------- reporting

SETTINGS_ORDER = {"baseline": 0, "defaults": 1, "equal": 2, "fastest": 3}


def fmt_range(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def machine(threads: int | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def header(results: dict[str, Any]) -> str:
    m = results["machine"]
    versions = ", ".join(f"{name} {v}" for name, v in results["versions"].items() if v)
    missing = [name for name, v in results["versions"].items() if v is None]
    threads = m["torch_threads"]
    text = (
        f"Measured {results['date']} on {m['cpu']} ({m['cores']} cores; each contender in its "
        f"own process with {threads} torch thread{'s' if threads != 1 else ''}), {m['os']}, "
        f"Python {m['python']}; {versions}. {results['rounds']} rounds per contender, "
        f"alternating order, in {results['minutes']:.1f} minutes. Load average (1 min) "
        f"{results['load_before'][0]:.2f} before the run, {results['load_after'][0]:.2f} after."
    )
    allocator = results.get("allocator") or {}
    text += (
        " Memory allocator: "
        + (", ".join(f"`{k}={v}`" for k, v in allocator.items()) or "glibc's defaults")
        + "."
    )
    if results.get("quick"):
        text += " A `--quick` smoke run: tiny data, not a measurement."
    if missing:
        text += "\n\nNot installed, so not measured: " + ", ".join(missing) + "."
    return text


def workload_table(w: dict[str, Any]) -> list[str]:
    steady = w["epochs"] - 1
    lines = [
        "",
        f"**{w['title']}**: {w['epochs']} epochs per call, the first timed apart (set-up "
        f"included) and {steady} steady-state epoch{'s' if steady != 1 else ''}. Load average "
        f"{w['load_before'][0]:.2f} before, {w['load_after'][0]:.2f} after.",
        "",
        "| contender | settings | first epoch, s | steady epoch, s | × hand loop, steady "
        "| per-round ratios | peak RSS (growth in the call), MiB | minor faults per epoch |"
        + (" test accuracy |" if any_accuracy(w) else ""),
        "|---|---|---:|---:|---:|---|---:|---:|" + ("---:|" if any_accuracy(w) else ""),
    ]
    rows = sorted(
        w["contenders"].items(),
        key=lambda kv: (SETTINGS_ORDER[BY_KEY[kv[0]].settings], kv[1]["ratio"]["median"]),
    )
    for key, r in rows:
        c = BY_KEY[key]
        per_round = " ".join(f"{v:.2f}" for v in r["ratios"])
        acc = f" {r['test_accuracy']:.3f} |" if r["test_accuracy"] is not None else ""
        lines.append(
            f"| {c.label} | {c.how} | {r['first_epoch']['median']:.2f} | "
            f"{fmt_range(r['steady_epoch'])} | {fmt_range(r['ratio'])} | {per_round} | "
            f"{r['peak_rss_mib']['median']:.0f} ({round(r['rss_growth_mib']['median']):+d}) | "
            f"{r['steady_minor_faults']['median']:,.0f} |{acc}"
        )
    return lines


def any_accuracy(w: dict[str, Any]) -> bool:
    return any(r["test_accuracy"] is not None for r in w["contenders"].values())


def targets_table(checks: list[dict[str, Any]]) -> list[str]:
    lines = ["", "| workload | target | result | figures (× hand loop, steady: median (range)) |"]
    lines.append("|---|---|---|---|")
    for c in checks:
        lines.append(f"| {c['workload']} | {c['text']} | **{c['result']}** | {c['detail']} |")
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "baseline": "#888888",
        "defaults": "#3f51b5",
        "equal": "#7986cb",
        "fastest": "#e91e63",
    }
    ws = results["workloads"]
    fig, axes = plt.subplots(1, len(ws), figsize=(6.5 * len(ws), 5), squeeze=False)
    for ax, w in zip(axes[0], ws, strict=True):
        rows = sorted(w["contenders"].items(), key=lambda kv: -kv[1]["ratio"]["median"])
        names = [BY_KEY[k].label for k, _ in rows]
        med = [r["ratio"]["median"] for _, r in rows]
        err = [
            [m - r["ratio"]["min"] for m, (_, r) in zip(med, rows, strict=True)],
            [r["ratio"]["max"] - m for m, (_, r) in zip(med, rows, strict=True)],
        ]
        colours = [colors[BY_KEY[k].settings] for k, _ in rows]
        bars = ax.barh(names, med, xerr=err, capsize=3, color=colours)
        for bar, (_, r) in zip(bars, rows, strict=True):  # the median, past the whisker
            y = bar.get_y() + bar.get_height() / 2
            ax.text(
                r["ratio"]["max"] + 0.02, y, f" {r['ratio']['median']:.2f}", va="center", fontsize=8
            )
        first = [r["first_ratio"]["median"] for _, r in rows]
        ax.plot(first, names, "kx", markersize=5, label="first epoch (set-up included)")
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_title(w["short"], fontsize=10)
        ax.set_xlabel("steady-state epoch / hand-written loop's (lower is faster)")
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlim(0, max(max(med), max(first), max(r["ratio"]["max"] for _, r in rows)) * 1.2)
        ax.legend(loc="lower right", fontsize=7, frameon=False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    labels = ["baseline", "defaults", "fit at the peers' settings", "fastest"]
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict[str, Any]) -> str:
    """The generated part of the Performance page: tables, targets, chart."""
    lines = [header(results)]
    for w in results["workloads"]:
        lines += workload_table(w)
    lines += targets_table(results["targets"])
    lines += [
        "",
        "- A comparison is *unsettled* when the two contenders' ranges of per-round ratios "
        "overlap: on this machine, in this run, neither was measurably faster. Only a missed "
        "target (a settled loss) makes the script exit with status 1.",
        f"- {KERAS_FASTEST_NOTE}",
    ]
    if results["load_before"][0] > 0.5:
        lines.append(
            f"- The machine was not idle (load average {results['load_before'][0]:.2f} at the "
            "start): other jobs share its cores, so the spread between rounds is wider than "
            "on an idle machine."
        )
    if results.get("chart"):
        lines += ["", f"![steady-state epoch relative to the hand loop](img/{results['chart']})"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per contender (>= 2)")
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per training call (>= 2: the first apart)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in each contender's process",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2 rounds on tiny data; writes files only with --out-dir",
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated contender keys (the hand loop always runs)"
    )
    parser.add_argument("--workloads", default="resnet20,mnist", help="comma-separated")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where the JSON and the table go (default benchmarks/results)",
    )
    parser.add_argument(
        "--img-dir",
        type=Path,
        default=ROOT / "docs" / "img",
        help="where the chart goes; '-' to skip it",
    )
    parser.add_argument(
        "--malloc-retain",
        action="store_true",
        help="start every worker with MALLOC_RETAIN: glibc keeps freed memory",
    )
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: redraw from the saved JSON"
    )
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f"--rounds must be at least 2 (ranges need two rounds); got {args.rounds}")
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first is timed apart); got {args.epochs}")
    return args


def contender_keys(only: str | None, versions: dict[str, str | None]) -> list[str]:
    """The contenders to run: installed ones, narrowed by ``--only``; the hand loop first."""
    wanted = None if only is None else {"hand", *only.split(",")}
    unknown = (wanted or set()) - set(BY_KEY)
    if unknown:
        raise SystemExit(f"--only: unknown contender(s) {sorted(unknown)}; valid: {list(BY_KEY)}")
    keys = []
    for c in CONTENDERS:
        if c.peer is not None and versions[PEERS[c.peer]] is None:
            print(f"{c.peer} is not installed: {c.label} left out")
        elif wanted is None or c.key in wanted:
            keys.append(c.key)
    return keys


@contextlib.contextmanager
def worker_environment(updates: dict[str, str]) -> Iterator[None]:
    """Environment variables the workers start with (glibc reads MALLOC_* as they start)."""
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    rounds = 2 if args.quick else args.rounds
    versions: dict[str, str | None] = {
        "convkit": convkit.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    versions.update({dist: installed(peer) for peer, dist in PEERS.items()})
    keys = contender_keys(args.only, versions)
    names = args.workloads.split(",")
    if os.getloadavg()[0] > 0.5 and not args.quick:
        print(
            f"Load average {os.getloadavg()[0]:.2f}: other jobs are running, so the rounds "
            "will spread and comparisons come out unsettled; an idle machine (< 0.5) gives "
            "figures to rely on.",
            file=sys.stderr,
        )
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(args.threads),
        "versions": versions,
        "rounds": rounds,
        "quick": args.quick,
        "load_before": load(),
        "allocator": {
            k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"
        },
        "workloads": [],
    }
    with worker_environment(MALLOC_RETAIN if args.malloc_retain else {}):
        results["allocator"] = {
            k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"
        }
        for w in workloads(args.quick, args.epochs):
            if w.name in names:
                print(f"{w.title}: {len(keys)} contenders, {rounds} rounds", flush=True)
                results["workloads"].append(measure(w, keys, rounds, args.threads))
    results["load_after"] = load()
    results["minutes"] = (time.perf_counter() - started) / 60
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    write = args.out_dir is not None or not args.quick
    out_dir = args.out_dir or ROOT / "benchmarks" / "results"
    json_path = out_dir / "peers-cpu.json"
    results = json.loads(json_path.read_text()) if args.render else run_all(args)
    results["targets"] = check_targets(results)
    chart_name = "benchmark-peers-cpu.png"
    draw = write and str(args.img_dir) != "-"
    results["chart"] = chart_name if draw else None
    text = report(results)
    print(text)
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        # docs/performance.md includes this file as it is (pymdownx.snippets)
        (out_dir / "peers-cpu.md").write_text(text + "\n")
        if draw:
            chart(results, args.img_dir / chart_name)
    return exit_status(results["targets"])


if __name__ == "__main__":
    sys.exit(main())
