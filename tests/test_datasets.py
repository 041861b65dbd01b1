import gzip
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_sparse_bnn import datasets
from pyro_sparse_bnn.datasets import (
    large_p_small_n,
    load,
    load_mnist,
    mnist_cache_dir,
    read_idx,
    sparse_regression,
)
from pyro_sparse_bnn.download import DownloadError, cache_dir, download, md5sum

# name: (rows, features, n_test = ceil(0.25 * rows))
SIZES = {
    "iris": (150, 4, 38),
    "digits": (1797, 64, 450),
    "breast_cancer": (569, 30, 143),
    "diabetes": (442, 10, 111),
}
CLASSIFICATION = ["iris", "digits", "breast_cancer"]


@pytest.mark.parametrize("name", list(SIZES))
def test_load_shapes_and_dtypes(name):
    rows, features, n_test = SIZES[name]
    X_train, y_train = load(name, "train")
    X_test, y_test = load(name, "test")
    X_all, y_all = load(name, "all")
    assert X_train.shape == (rows - n_test, features) and y_train.shape == (rows - n_test,)
    assert X_test.shape == (n_test, features) and y_test.shape == (n_test,)
    assert X_all.shape == (rows, features) and y_all.shape == (rows,)
    assert X_train.dtype == torch.float32
    assert y_train.dtype == (torch.int64 if name in CLASSIFICATION else torch.float32)
    # train and test partition "all": column sums add up.
    torch.testing.assert_close(X_train.sum(0) + X_test.sum(0), X_all.sum(0), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", list(SIZES))
def test_train_split_is_standardised(name):
    X, y = load(name, "train", dtype=torch.float64)
    std = X.std(0, unbiased=False)
    constant = std == 0
    torch.testing.assert_close(X.mean(0), torch.zeros(X.shape[1], dtype=X.dtype), atol=1e-5, rtol=0)
    torch.testing.assert_close(std[~constant], torch.ones_like(std[~constant]), atol=1e-5, rtol=0)
    assert (X[:, constant] == 0).all()  # centred, not divided by zero
    if name == "digits":
        assert constant.any()  # pixels that are always blank in the train rows
    if name == "diabetes":
        assert abs(y.mean().item()) < 1e-5
        assert y.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)


def test_test_split_uses_train_statistics():
    X_test, _ = load("breast_cancer", "test", dtype=torch.float64)
    X_all, _ = load("breast_cancer", "all", dtype=torch.float64)
    # test rows are transformed with the train statistics, so they are not exactly standardised
    assert X_test.mean(0).abs().max() > 1e-3
    assert X_all.mean(0).abs().max() > 1e-4


def test_same_seed_same_split_and_different_seed_differs():
    X0, y0 = load("iris", "train", seed=0)
    X0b, y0b = load("iris", "train", seed=0)
    X1, _ = load("iris", "train", seed=1)
    assert torch.equal(X0, X0b) and torch.equal(y0, y0b)
    assert not torch.equal(X0, X1)


def test_row_order():
    _, y_all = load("iris", "all")
    assert y_all.tolist() == [0] * 50 + [1] * 50 + [2] * 50  # scikit-learn's order
    _, y_train = load("iris", "train")
    assert (y_train.diff() < 0).any()  # shuffled, not sorted by class


@pytest.mark.parametrize("name", CLASSIFICATION)
@pytest.mark.parametrize("test_size", [0.25, 0.4])
def test_split_is_stratified(name, test_size):
    _, y_all = load(name, "all")
    _, y_train = load(name, "train", test_size=test_size, seed=3)
    overall = torch.bincount(y_all).double() / len(y_all)
    train_counts = torch.bincount(y_train, minlength=len(overall)).double()
    assert (train_counts - overall * len(y_train)).abs().max() <= 1.0


def test_load_validation():
    with pytest.raises(ValueError, match="iris"):
        load("mnist")
    with pytest.raises(ValueError, match="train"):
        load("iris", "validation")
    for test_size in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="test_size"):
            load("iris", test_size=test_size)


# ----------------------------------------------------------------------------- IDX / MNIST


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    codes = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, codes[array.dtype.str[1:]], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + big_endian.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 0, 255, 3], dtype=np.uint8),
        np.array([[-1, 2], [300_000, -4]], dtype=np.int32),
        np.array([0.5, -1.25], dtype=np.float64),
    ],
    ids=["uint8-3d", "uint8-1d", "int32-2d", "float64-1d"],
)
def test_read_idx_round_trip(tmp_path, array, compress):
    path = write_idx(tmp_path / "data-idx", array, compress)
    out = read_idx(path)
    assert out.shape == array.shape and out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)


def test_read_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-idx"):
        read_idx(tmp_path / "missing-idx")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    good = write_idx(tmp_path / "short", np.zeros((3, 2), dtype=np.uint8), compress=False)
    good.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(ValueError, match="bytes"):
        read_idx(good)


def make_fake_mnist(root: Path, n: int = 20, compress: bool = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0] = 255
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if compress else ""
    paths = [
        write_idx(root / f"t10k-images-idx3-ubyte{suffix}", images, compress),
        write_idx(root / f"t10k-labels-idx1-ubyte{suffix}", labels, compress),
    ]
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n" for p in paths]
    (root / "MD5SUMS").write_text("".join(lines))
    return images


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_on_small_files(tmp_path, compress):
    images = make_fake_mnist(tmp_path, compress=compress)
    X_all, y_all = load_mnist(tmp_path, "all")
    X_train, y_train = load_mnist(tmp_path, "train", n_train=15)
    X_test, y_test = load_mnist(tmp_path, "test", n_train=15)
    assert X_all.shape == (20, 784) and X_all.dtype == torch.float32 and y_all.dtype == torch.int64
    torch.testing.assert_close(X_all[3], torch.as_tensor(images[3].reshape(-1) / 255.0).float())
    assert X_all[0, 0] == 1.0
    assert len(y_train) == 15 and len(y_test) == 5
    # train + test is a permutation of all rows, labels travelling with their images
    X_split, y_split = torch.cat([X_train, X_test]), torch.cat([y_train, y_test])
    match = (X_split[:, None, :] == X_all[None, :, :]).all(-1).long()
    assert (match.sum(0) == 1).all() and (match.sum(1) == 1).all()
    assert torch.equal(y_split, y_all[match.argmax(1)])


def test_load_mnist_md5_mismatch(tmp_path):
    make_fake_mnist(tmp_path)
    sums = (tmp_path / "MD5SUMS").read_text()
    (tmp_path / "MD5SUMS").write_text("0" * 32 + sums[32:])
    with pytest.raises(ValueError, match="MD5 mismatch"):
        load_mnist(tmp_path)
    X, _ = load_mnist(tmp_path, verify=False, n_train=10)
    assert len(X) == 10


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist(tmp_path / "nowhere")
    make_fake_mnist(tmp_path)
    with pytest.raises(ValueError, match="n_train"):
        load_mnist(tmp_path, n_train=20)
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, split="val")


def test_real_mnist_split():
    """The MNIST-10k copy shipped with the package (MD5-checked as it loads)."""
    X_train, y_train = load_mnist(split="train")
    X_test, y_test = load_mnist(split="test")
    _, y_all = load_mnist(split="all")
    assert X_train.shape == (8000, 784) and X_test.shape == (2000, 784)
    assert X_train.dtype == torch.float32
    assert X_train.min() == 0.0 and X_train.max() == 1.0
    assert y_all[0] == 7  # the first digit of the official test set
    # the published class counts of the 10k test set, recovered by train + test together
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(y_all).tolist() == counts
    assert (torch.bincount(y_train, minlength=10) + torch.bincount(y_test)).tolist() == counts


# ----------------------------------------------------------------------------- downloads
# A real HTTP server on 127.0.0.1 serves small synthetic MNIST files; no test reaches the network
# or the user's cache (the autouse fixture points both at nothing).

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"


@pytest.fixture(autouse=True)
def _no_real_network_or_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", ("http://127.0.0.1:9/unused/",))
    monkeypatch.setenv("PSBNN_DATA", str(tmp_path / "default-cache"))


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a stalled client hung up: not an error
        pass


class LocalServer:
    """Routes: ``path -> (mode, body)``, mode ``"ok"``, ``"partial"`` (half the promised bytes,
    then the connection closes) or ``"stall"`` (no answer until the test ends)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                mode, body = server.routes[self.path]
                if mode == "stall":
                    server.release.wait(10)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "partial" else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def serve(self, path: str, body: bytes, mode: str = "ok") -> None:
        self.routes[path] = (mode, body)


@pytest.fixture
def server():
    local = LocalServer()
    local.thread.start()
    yield local
    local.release.set()
    local.httpd.shutdown()
    local.httpd.server_close()
    local.thread.join(5)


def idx_gz(array: np.ndarray, tmp_path: Path) -> bytes:
    return write_idx(tmp_path / "scratch.gz", array, compress=True).read_bytes()


@pytest.fixture
def train_files(tmp_path, monkeypatch):
    """Five 28 x 28 training images as official-named gzip IDX bytes, their MD5s patched in."""
    images = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    files = {
        TRAIN_IMAGES: idx_gz(images, tmp_path),
        TRAIN_LABELS: idx_gz(np.array([3, 1, 4, 1, 5], dtype=np.uint8), tmp_path),
    }
    for name, body in files.items():
        monkeypatch.setitem(datasets.MNIST_MD5, name, hashlib.md5(body).hexdigest())
    return images, files


def serve_all(server: LocalServer, prefix: str, files: dict[str, bytes], mode: str = "ok") -> str:
    for name, body in files.items():
        server.serve(f"{prefix}{name}", body, mode)
    return server.url + prefix


def listing(directory: Path) -> list[str]:
    """Every file under ``directory`` (hidden temporary files included)."""
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def test_download_then_cache_hit(server, train_files, tmp_path):
    images, files = train_files
    mirror = serve_all(server, "/a/", files)
    cache = tmp_path / "cache"
    X, y = load_mnist(split="train", official=True, cache_dir=cache, mirrors=[mirror])
    assert X.shape == (5, 784) and y.tolist() == [3, 1, 4, 1, 5]
    torch.testing.assert_close(X[2], torch.as_tensor(images[2].reshape(-1) / 255.0).float())
    assert server.requests == [f"/a/{TRAIN_IMAGES}", f"/a/{TRAIN_LABELS}"]
    assert listing(cache) == sorted(files)  # no temporary file left behind
    assert all(md5sum(cache / name) == datasets.MNIST_MD5[name] for name in files)
    X2, y2 = load_mnist(split="train", official=True, cache_dir=cache, mirrors=[mirror])
    assert torch.equal(X, X2) and torch.equal(y, y2)
    assert len(server.requests) == 2  # the second call read the cache: no request


def test_default_cache_dir_from_environment(server, train_files, tmp_path, monkeypatch):
    monkeypatch.setenv("PSBNN_DATA", str(tmp_path / "data"))
    mirror = serve_all(server, "/a/", train_files[1])
    load_mnist(split="train", official=True, mirrors=[mirror], progress=False)
    assert listing(tmp_path / "data" / "mnist") == sorted(train_files[1])


def test_second_mirror_after_404(server, train_files, tmp_path):
    mirror = serve_all(server, "/good/", train_files[1])
    _, y = load_mnist(
        split="train",
        official=True,
        cache_dir=tmp_path / "cache",
        mirrors=[server.url + "/missing", mirror],
        progress=False,
    )
    assert y.tolist() == [3, 1, 4, 1, 5]
    assert server.requests == [
        f"/missing/{TRAIN_IMAGES}",
        f"/good/{TRAIN_IMAGES}",
        f"/missing/{TRAIN_LABELS}",
        f"/good/{TRAIN_LABELS}",
    ]


def test_every_mirror_failing_names_the_urls(server, tmp_path):
    urls = [f"{server.url}/x/file.bin", f"{server.url}/y/file.bin"]
    with pytest.raises(DownloadError, match="every URL") as info:
        download(urls, tmp_path / "file.bin", progress=False)
    assert isinstance(info.value, OSError)
    assert [url for url, _ in info.value.failures] == urls
    assert all(f"{url}: HTTP 404" in str(info.value) for url in urls)
    assert listing(tmp_path) == []


def test_checksum_mismatch_leaves_no_file(server, train_files, tmp_path, monkeypatch):
    mirror = serve_all(server, "/a/", train_files[1])
    monkeypatch.setitem(datasets.MNIST_MD5, TRAIN_IMAGES, "0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch") as info:
        load_mnist(split="train", official=True, cache_dir=cache, mirrors=[mirror], progress=False)
    assert f"{mirror}{TRAIN_IMAGES}" in str(info.value) and "0" * 32 in str(info.value)
    assert listing(cache) == []


def test_bad_mirror_then_good_mirror(server, tmp_path):
    body = b"the right bytes"
    server.serve("/bad/f.bin", b"the wrong bytes")
    server.serve("/good/f.bin", body)
    urls = [f"{server.url}/bad/f.bin", f"{server.url}/good/f.bin"]
    path = download(urls, tmp_path / "f.bin", md5=hashlib.md5(body).hexdigest(), progress=False)
    assert path.read_bytes() == body and listing(tmp_path) == ["f.bin"]


def test_truncated_transfer_leaves_no_file(server, train_files, tmp_path):
    mirror = serve_all(server, "/a/", train_files[1], mode="partial")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="transfer ended after") as info:
        load_mnist(split="train", official=True, cache_dir=cache, mirrors=[mirror], progress=False)
    assert f"{mirror}{TRAIN_IMAGES}" in str(info.value)
    assert listing(cache) == []


def test_interrupted_download_leaves_no_file(server, tmp_path, monkeypatch):
    import tqdm.auto

    class Interrupting(tqdm.auto.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.auto, "tqdm", Interrupting)
    server.serve("/f.bin", b"x" * 1000)
    with pytest.raises(KeyboardInterrupt):  # not taken for a failed mirror
        download([f"{server.url}/f.bin", f"{server.url}/f.bin"], tmp_path / "f.bin")
    assert listing(tmp_path) == [] and server.requests == ["/f.bin"]


def test_timeout_moves_on_to_the_next_mirror(server, tmp_path):
    server.serve("/slow/f.bin", b"late", mode="stall")
    server.serve("/fast/f.bin", b"on time")
    urls = [f"{server.url}/slow/f.bin", f"{server.url}/fast/f.bin"]
    path = download(urls, tmp_path / "f.bin", timeout=0.2, progress=False)
    assert path.read_bytes() == b"on time"
    with pytest.raises(DownloadError, match="timeout"):
        download(urls[:1], tmp_path / "g.bin", timeout=0.2, progress=False)
    assert listing(tmp_path) == ["f.bin"]


def test_download_false_with_empty_cache(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        load_mnist(split="train", official=True, cache_dir=cache, download=False)
    assert TRAIN_IMAGES in str(info.value) and str(cache) in str(info.value)
    assert not cache.exists() and server.requests == []


def test_corrupted_cache_file(server, train_files, tmp_path):
    mirror = serve_all(server, "/a/", train_files[1])
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / TRAIN_IMAGES).write_bytes(b"garbage")
    (cache / TRAIN_LABELS).write_bytes(train_files[1][TRAIN_LABELS])
    with pytest.raises(ValueError, match="MD5 mismatch"):
        load_mnist(split="train", official=True, cache_dir=cache, download=False)
    X, _ = load_mnist(split="train", official=True, cache_dir=cache, mirrors=[mirror])
    assert X.shape == (5, 784) and server.requests == [f"/a/{TRAIN_IMAGES}"]  # refetched


def test_progress_bar_can_be_disabled(server, train_files, tmp_path, capsys):
    mirror = serve_all(server, "/a/", train_files[1])
    load_mnist(
        split="train", official=True, cache_dir=tmp_path / "c1", mirrors=[mirror], progress=False
    )
    assert capsys.readouterr().err == ""
    load_mnist(split="train", official=True, cache_dir=tmp_path / "c2", mirrors=[mirror])
    err = capsys.readouterr().err
    assert TRAIN_IMAGES in err and TRAIN_LABELS in err


def test_official_test_split_is_shipped(server, train_files, tmp_path):
    """The official test set needs no download; ``"all"`` is train then test."""
    X_test, y_test = load_mnist(split="test", official=True, download=False)
    assert X_test.shape == (10_000, 784) and y_test[0] == 7
    mirror = serve_all(server, "/a/", train_files[1])
    X_all, y_all = load_mnist(
        split="all", official=True, cache_dir=tmp_path / "c", mirrors=[mirror], progress=False
    )
    assert X_all.shape == (10_005, 784)
    assert y_all[:5].tolist() == [3, 1, 4, 1, 5] and torch.equal(y_all[5:], y_test)
    assert len(server.requests) == 2  # the training files only


def test_official_split_from_a_user_directory(tmp_path, server):
    make_fake_mnist(tmp_path, n=6)
    write_idx(tmp_path / TRAIN_IMAGES, np.zeros((4, 28, 28), dtype=np.uint8), compress=True)
    write_idx(tmp_path / TRAIN_LABELS, np.arange(4, dtype=np.uint8), compress=True)
    X, y = load_mnist(tmp_path, "train", official=True)
    assert X.shape == (4, 784) and y.tolist() == [0, 1, 2, 3]
    assert load_mnist(tmp_path, "all", official=True)[0].shape == (10, 784)
    assert server.requests == []
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(empty, official=True)  # a user directory is read, never downloaded into


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PSBNN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist_cache_dir() == tmp_path / "data" / "mnist"
    monkeypatch.setenv("PSBNN_DATA", "")
    assert mnist_cache_dir() == tmp_path / "xdg" / "pyro_sparse_bnn" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "pyro_sparse_bnn"
    assert not (tmp_path / "home").exists()  # nothing created


def test_cached_file_is_not_requested_again(server, tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"already here")
    assert download([f"{server.url}/f.bin"], path) == path
    assert download([f"{server.url}/f.bin"], path, md5=md5sum(path)) == path
    assert server.requests == [] and path.read_bytes() == b"already here"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mirrors": "http://127.0.0.1/"}, TypeError, "mirrors"),
        ({"mirrors": []}, ValueError, "mirrors"),
        ({"mirrors": ["ftp://127.0.0.1/"]}, ValueError, "mirrors"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"progress": "no"}, TypeError, "progress"),
        ({"download": 1}, TypeError, "download"),
        ({"official": None}, TypeError, "official"),
        ({"official": True, "n_train": 100}, ValueError, "n_train"),
        ({"n_train": 1.5}, TypeError, "n_train"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"cache_dir": 3}, TypeError, "cache_dir"),
        ({"root": ".", "cache_dir": "."}, ValueError, "cache_dir"),
        ({"split": "validation", "official": True}, ValueError, "split"),
    ],
)
def test_load_mnist_rejects_bad_arguments_before_any_work(server, kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        load_mnist(**kwargs)
    assert server.requests == [] and listing(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"urls": "http://127.0.0.1/f"}, TypeError, "urls"),
        ({"urls": [b"http://127.0.0.1/f"]}, TypeError, "urls"),
        ({"md5": "abc"}, ValueError, "md5"),
        ({"timeout": -1.0}, ValueError, "timeout"),
        ({"path": 5}, TypeError, "path"),
    ],
)
def test_download_rejects_bad_arguments(kwargs, error, match, tmp_path):
    call = {"urls": ["http://127.0.0.1:9/f"], "path": tmp_path / "f", **kwargs}
    with pytest.raises(error, match=match):
        download(call.pop("urls"), call.pop("path"), **call)
    assert listing(tmp_path) == []


# ----------------------------------------------------------------------------- synthetic


def test_sparse_regression():
    X, y, beta = sparse_regression(n=20_000, p=8, n_nonzero=3, noise=0.5, seed=2)
    assert X.shape == (20_000, 8) and y.shape == (20_000,) and beta.shape == (8,)
    magnitude = beta[:3].abs()
    assert ((magnitude >= 2) & (magnitude <= 4)).all()
    assert (beta[3:] == 0).all()
    # residual variance 0.25, sd of its estimate 0.25 * sqrt(2 / n) = 0.0025: tolerance 0.0125
    assert (y - X @ beta).var().item() == pytest.approx(0.25, abs=0.0125)
    # X ~ N(0, I): column variances 1 (sd 0.01), tolerance 0.05
    torch.testing.assert_close(X.var(0), torch.ones(8), atol=0.05, rtol=0)
    X2, _, beta2 = sparse_regression(n=20_000, p=8, n_nonzero=3, noise=0.5, seed=2)
    assert torch.equal(X, X2) and torch.equal(beta, beta2)
    with pytest.raises(ValueError, match="n_nonzero"):
        sparse_regression(p=3, n_nonzero=4)


def test_large_p_small_n_default_shapes():
    data = large_p_small_n()
    assert data.X_train.shape == (100, 1000) and data.X_test.shape == (100, 1000)
    assert data.y_train.shape == (100,) and data.y_test.shape == (100,)
    assert data.beta.shape == (1000,) and (data.beta[3:] == 0).all()
    same = large_p_small_n()
    other = large_p_small_n(seed=1)
    assert torch.equal(data.X_train, same.X_train) and torch.equal(data.beta, same.beta)
    assert not torch.equal(data.X_train, other.X_train)


def test_large_p_small_n_statistics():
    # n = 20,000 rows. Sample-correlation sd ~ (1 - r^2) / sqrt(n): 0.0045 at lag 1 (r = 0.6),
    # 0.0062 at lag 2 (r = 0.36); means over 39 / 38 column pairs. Tolerances 0.02 and 0.03 are
    # > 4 sd even for a single pair. Residual variance 3 has sd 3 sqrt(2 / n) = 0.03: tolerance
    # 0.15.
    data = large_p_small_n(n_train=10_000, n_test=10_000, p=40, rho=0.6, noise_var=3.0, seed=0)
    X = torch.cat([data.X_train, data.X_test]).double()
    y = torch.cat([data.y_train, data.y_test]).double()
    corr = torch.corrcoef(X.T)
    lag1 = torch.diagonal(corr, offset=1)
    lag2 = torch.diagonal(corr, offset=2)
    assert lag1.mean().item() == pytest.approx(0.6, abs=0.02)
    assert lag2.mean().item() == pytest.approx(0.36, abs=0.03)
    assert (lag1 - 0.6).abs().max() < 0.03
    torch.testing.assert_close(X.var(0), torch.ones(40, dtype=X.dtype), atol=0.05, rtol=0)
    assert (y - X @ data.beta.double()).var().item() == pytest.approx(3.0, abs=0.15)
    # b1, b2, b3 ~ N(3, 0.04), N(2, 0.04), N(1, 0.04): within 5 sd
    torch.testing.assert_close(data.beta[:3], torch.tensor([3.0, 2.0, 1.0]), atol=1.0, rtol=0)


def test_large_p_small_n_validation():
    with pytest.raises(ValueError, match="rho"):
        large_p_small_n(rho=1.0)
    with pytest.raises(ValueError, match="p"):
        large_p_small_n(p=2)
