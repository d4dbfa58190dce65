from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from convkit.datasets import mnist, mnist_sample


def test_sample_split_shapes_and_ranges() -> None:
    train, test = mnist_sample(train=True), mnist_sample(train=False)
    (x, y), (xt, yt) = train.tensors, test.tensors
    assert x.shape == (4000, 1, 28, 28) and xt.shape == (1000, 1, 28, 28)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0.0 and x.max() == 1.0
    assert y.bincount().tolist() == [400] * 10 and yt.bincount().tolist() == [100] * 10
    assert len(set(y[:100].tolist())) == 10  # a slice mixes the digits


def test_sample_split_is_fixed_and_disjoint() -> None:
    a, b = mnist_sample().tensors[0], mnist_sample().tensors[0]
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # same data, fresh tensors
    train = {
        bytes(img.numpy().tobytes()) for img in (mnist_sample().tensors[0] * 255).to(torch.uint8)
    }
    test = {
        bytes(img.numpy().tobytes())
        for img in (mnist_sample(False).tensors[0] * 255).to(torch.uint8)
    }
    assert len(train) + len(test) - len(train & test) >= 4990  # essentially no shared images


def test_sample_matches_the_bundled_file_to_the_pixel() -> None:
    here = Path(__file__).resolve().parents[1]
    raw = np.load(here / "src" / "convkit" / "data" / "mnist_5k.npz")
    x, _ = mnist_sample().tensors
    # every sample image is exactly one of the raw images divided by 255
    raw_set = {img.tobytes() for img in raw["images"]}
    recovered = (x * 255).round().to(torch.uint8).squeeze(1).numpy()
    assert all(img.tobytes() in raw_set for img in recovered[:200])


def _write_idx(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / f"{split}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28))
        f.write(images.astype(np.uint8).tobytes())
    with open(raw / f"{split}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)))
        f.write(labels.astype(np.uint8).tobytes())


@pytest.fixture
def idx_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    x, y = mnist_sample(False).tensors
    images = (x * 255).round().to(torch.uint8).squeeze(1).numpy()[:300]
    labels = y.numpy()[:300]
    _write_idx(tmp_path, "train", images, labels)
    _write_idx(tmp_path, "t10k", images[:50], labels[:50])
    return tmp_path, images, labels


def test_mnist_is_bit_for_bit_torchvision_to_tensor(idx_root) -> None:
    from torchvision.datasets import MNIST

    root, images, labels = idx_root
    ours = mnist(root, train=True)
    reference = MNIST(root, train=True, transform=transforms.ToTensor())
    assert len(ours) == len(reference) == 300
    for i in (0, 1, 57, 299):
        img, label = reference[i]
        assert torch.equal(ours.tensors[0][i], img)  # bit for bit, dtype and shape included
        assert ours.tensors[1][i].item() == label == labels[i]
    # and ToTensor on a PIL image of the raw bytes, directly
    direct = transforms.ToTensor()(Image.fromarray(images[3], mode="L"))
    assert torch.equal(ours.tensors[0][3], direct)
    assert len(mnist(root, train=False)) == 50


def test_missing_files_say_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"train-images-idx3-ubyte.*MNIST/raw.*download=True.*mnist_sample"
    ):
        mnist(tmp_path)


def _serve(handler) -> tuple[int, threading.Event]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def run() -> None:
        server.settimeout(0.2)
        conns = []
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conns.append(conn)
            handler(conn)
        for conn in conns:
            conn.close()
        server.close()

    threading.Thread(target=run, daemon=True).start()
    return server.getsockname()[1], stop


def test_download_that_hangs_times_out_with_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    from torchvision.datasets import MNIST

    port, stop = _serve(lambda conn: None)  # accepts, never answers: a hanging mirror
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
    start = time.monotonic()
    try:
        with pytest.raises(
            ConnectionError, match=r"Downloading MNIST.*failed.*offline.*mnist_sample"
        ):
            mnist(tmp_path, download=True, timeout=0.5)
    finally:
        stop.set()
    assert time.monotonic() - start < 20
    assert socket.getdefaulttimeout() is None  # restored


def test_download_refused_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    from torchvision.datasets import MNIST

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
    with pytest.raises(ConnectionError, match=r"Downloading MNIST"):
        mnist(tmp_path, download=True, timeout=2)


def test_download_skipped_when_files_exist(idx_root, monkeypatch) -> None:
    from torchvision.datasets import MNIST

    root, _, _ = idx_root
    monkeypatch.setattr(MNIST, "download", lambda self: pytest.fail("must not download"))
    assert len(mnist(root, download=True)) == 300


@pytest.mark.parametrize("train", ["test", "train", 0, 1, None])
@pytest.mark.parametrize("loader", ["mnist", "mnist_sample"])
def test_train_must_be_a_bool(idx_root, train: object, loader: str) -> None:
    root, _, _ = idx_root
    call = (lambda: mnist(root, train=train)) if loader == "mnist" else (
        lambda: mnist_sample(train=train)
    )  # fmt: skip
    with pytest.raises(TypeError, match=rf"`train`.*True.*False.*Received train={train!r}"):
        call()


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "header only":
        path.write_bytes(data[:6])
    elif how == "text":
        path.write_text("<html>404 Not Found</html>\n" * 40)
    elif how == "trailing":
        path.write_bytes(data + b"\0" * 7)
    elif how == "gzip":  # the still-compressed download
        import gzip

        path.write_bytes(gzip.compress(data))


@pytest.mark.parametrize("how", ["truncated", "empty", "header only", "text", "trailing", "gzip"])
@pytest.mark.parametrize("kind", ["images", "labels"])
def test_corrupt_idx_files_name_the_file(idx_root, how: str, kind: str) -> None:
    root, _, _ = idx_root
    name = f"train-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    _corrupt(root / "MNIST" / "raw" / name, how)
    with pytest.raises(ValueError, match=rf"{name} is not a valid MNIST IDX file: .*download=True"):
        mnist(root)
    assert len(mnist(root, train=False)) == 50  # the intact split still loads


def test_mismatched_idx_files_name_the_file(tmp_path: Path) -> None:
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path, "train", images, np.arange(4))  # one label short
    with pytest.raises(ValueError, match=r"labels-idx1-ubyte .*4 labels for the 5 images"):
        mnist(tmp_path)
    _write_idx(tmp_path, "train", images, np.array([0, 1, 2, 3, 200]))
    with pytest.raises(ValueError, match=r"labels-idx1-ubyte .*label 200; digits are 0..9"):
        mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    raw.write_bytes(struct.pack(">IIII", 2051, 5, 32, 32) + bytes(5 * 32 * 32))
    with pytest.raises(ValueError, match=r"images-idx3-ubyte .*\(32, 32\) pixels"):
        mnist(tmp_path)
