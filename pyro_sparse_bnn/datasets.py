"""Datasets: scikit-learn's bundled tables, an MNIST IDX reader and synthetic regressions.

* :func:`load` returns a seeded (stratified, for classification) train/test split of ``"iris"``,
  ``"digits"``, ``"breast_cancer"`` or ``"diabetes"``, standardised with the training split's
  statistics. Nothing is downloaded.
* :func:`load_mnist` reads the official MNIST test-set IDX files (10,000 digits, shipped with the
  package) and splits them into a seeded 8,000 train / 2,000 test split; with ``official=True``
  it returns the official 60,000 / 10,000 split, downloading the training files into a cache
  (:func:`mnist_cache_dir`) the first time. :func:`read_idx` is the general IDX reader.
* :func:`sparse_regression` and :func:`large_p_small_n` simulate sparse linear regressions.

Randomness comes only from a ``numpy.random.Generator`` (splits) or a ``torch.Generator``
(simulations) seeded from ``seed``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
from collections.abc import Callable, Sequence
from numbers import Integral
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import download as _dl

__all__ = [
    "DATASETS",
    "SPLITS",
    "RegressionSplit",
    "large_p_small_n",
    "load",
    "load_mnist",
    "mnist_cache_dir",
    "read_idx",
    "sparse_regression",
]

SPLITS = ("train", "test", "all")


def _bundled(name: str, **kwargs: object) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """Loader of a data set bundled with scikit-learn (imported on first use: it costs ~1 s)."""

    def load_bundled() -> tuple[np.ndarray, np.ndarray]:
        from sklearn import datasets as sk_datasets

        return getattr(sk_datasets, f"load_{name}")(return_X_y=True, **kwargs)

    return load_bundled


_LOADERS: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], bool]] = {
    "iris": (_bundled("iris"), True),
    "digits": (_bundled("digits"), True),
    "breast_cancer": (_bundled("breast_cancer"), True),
    "diabetes": (_bundled("diabetes", scaled=False), False),
}
DATASETS = tuple(_LOADERS)
"""Names accepted by :func:`load`."""

MNIST_SHIPPED = Path(__file__).resolve().parent / "data" / "mnist10k"
"""The MNIST-10k files shipped with the package (the default of :func:`load_mnist`)."""
MNIST_IMAGES = "t10k-images-idx3-ubyte"
MNIST_LABELS = "t10k-labels-idx1-ubyte"
MNIST_OFFICIAL = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": (MNIST_IMAGES, MNIST_LABELS),
}
"""The IDX file stems (without ``.gz``) of the official train and test sets."""
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
"""Where :func:`load_mnist` downloads missing MNIST files from, tried in order."""
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""The MD5 sums of the official gzip files, checked on download and on reading the cache."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _stratified_train_mask(
    labels: np.ndarray, n_train: int, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask choosing ``n_train`` rows so each class's train count is within 1 of exact."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * n_train / len(labels)
    take = np.floor(quota).astype(int)
    remainder_order = np.argsort(-(quota - take), kind="stable")
    take[remainder_order[: n_train - take.sum()]] += 1
    mask = np.zeros(len(labels), dtype=bool)
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        mask[rng.permutation(members)[: take[c]]] = True
    return mask


def _standardise(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Centre and scale by ``reference``'s mean and population std; constant columns unscaled."""
    constant = reference.max(axis=0) == reference.min(axis=0)
    scale = np.where(constant, 1.0, reference.std(axis=0))
    return (values - reference.mean(axis=0)) / scale


def load(
    name: str,
    split: str = "train",
    *,
    test_size: float = 0.25,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Load a scikit-learn bundled dataset as ``(X, y)`` tensors.

    The rows are split once, seeded by ``seed``, into ``ceil(test_size * n)`` test rows and the rest
    train, stratified by class for the classification sets (each class's train count is within one
    row of its proportional share). Train and test rows come in a seeded random order (so iris is
    not sorted by class); ``split="all"`` returns every row in the original order.
    ``X`` (and ``y`` for the regression set ``"diabetes"``) is standardised with the *train* rows'
    mean and population std, whatever ``split`` is returned; features that are constant in the train
    rows are centred but not scaled. ``y`` is int64 for classification and ``dtype`` for regression.

    >>> X, y = load("iris", split="train")
    >>> tuple(X.shape), y.dtype, sorted(y.unique().tolist())
    ((112, 4), torch.int64, [0, 1, 2])
    """
    if name not in _LOADERS:
        raise ValueError(f"name must be one of {DATASETS}, got {name!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    _check_split(split)
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must lie in the open interval (0, 1), got {test_size!r}")
    fetch, is_classification = _LOADERS[name]
    X, y = fetch()
    X = X.astype(np.float64)
    n_test = math.ceil(test_size * len(X))
    if not 0 < n_test < len(X):
        raise ValueError(f"test_size={test_size} leaves an empty split of the {len(X)} rows")
    rng = np.random.default_rng(seed)
    if is_classification:
        train = _stratified_train_mask(y, len(X) - n_test, rng)
    else:
        train = np.zeros(len(X), dtype=bool)
        train[rng.permutation(len(X))[n_test:]] = True
        y = _standardise(y.astype(np.float64), y[train].astype(np.float64))
    X = _standardise(X, X[train])
    order = rng.permutation(len(X))
    rows = {"train": order[train[order]], "test": order[~train[order]], "all": slice(None)}[split]
    y_dtype = torch.int64 if is_classification else dtype
    return torch.as_tensor(X[rows], dtype=dtype), torch.as_tensor(y[rows], dtype=y_dtype)


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzip-compressed (detected by magic bytes).

    The header is two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a big-endian
    uint32; the big-endian data follow. Returns an array in native byte order.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny-idx1-ubyte"
    >>> _ = path.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(path).tolist()
    [7, 8, 9]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: header promises {expected} bytes for shape {shape}, got {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _md5sums(root: Path) -> dict[str, str]:
    """Parse ``root/MD5SUMS`` (``md5sum`` output) into ``{file name: digest}``; empty if absent."""
    sums_file = root / "MD5SUMS"
    if not sums_file.is_file():
        return {}
    sums = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*").strip()] = digest.lower()
    return sums


def _find_idx(root: Path, stem: str, sums: dict[str, str], verify: bool) -> Path:
    for path in (root / f"{stem}.gz", root / stem):
        if path.is_file():
            if verify and path.name in sums:
                digest = hashlib.md5(path.read_bytes()).hexdigest()
                if digest != sums[path.name]:
                    raise ValueError(
                        f"MD5 mismatch for {path}: got {digest}, MD5SUMS says {sums[path.name]}"
                    )
            return path
    raise FileNotFoundError(f"MNIST file not found: {root / stem}.gz (or uncompressed {stem})")


def mnist_cache_dir() -> Path:
    """Where :func:`load_mnist` keeps downloaded MNIST files when no ``cache_dir`` is given.

    ``$PSBNN_DATA/mnist``, else ``$XDG_CACHE_HOME/pyro_sparse_bnn/mnist``, else
    ``~/.cache/pyro_sparse_bnn/mnist`` (see :func:`pyro_sparse_bnn.download.cache_dir`).

    >>> mnist_cache_dir().name
    'mnist'
    """
    return _dl.cache_dir("mnist")


def _mnist_file(
    stem: str,
    root: Path | None,
    cache: Path,
    *,
    verify: bool,
    download: bool,
    mirrors: tuple[str, ...],
    timeout: float,
    progress: bool,
) -> Path:
    """The path of MNIST file ``stem``: from ``root``, else shipped, else cached or downloaded."""
    if root is not None:
        return _find_idx(root, stem, _md5sums(root), verify)
    name = f"{stem}.gz"
    if (MNIST_SHIPPED / name).is_file():
        return _find_idx(MNIST_SHIPPED, stem, _md5sums(MNIST_SHIPPED), verify)
    target, expected = cache / name, MNIST_MD5[name]
    if target.is_file() and not verify:
        return target
    if download:
        urls = [f"{mirror.rstrip('/')}/{name}" for mirror in mirrors]
        return _dl.download(urls, target, md5=expected, timeout=timeout, progress=progress)
    if not target.is_file():
        raise FileNotFoundError(
            f"MNIST file {name} is not in the cache {cache} and download=False. Call "
            f"load_mnist(..., download=True) to fetch it from {mirrors[0]} (11 MB for all four "
            "files), or pass root= a directory holding the official IDX files"
        )
    digest = _dl.md5sum(target)
    if digest != expected:
        raise ValueError(
            f"MD5 mismatch for {target}: got {digest}, expected {expected}; delete the file or "
            "pass download=True to fetch it again"
        )
    return target


def _check_path(value: object, name: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike, got {value!r}")
    return Path(value)


def load_mnist(
    root: str | PathLike[str] | None = None,
    split: str = "train",
    *,
    n_train: int | None = None,
    seed: int = 0,
    verify: bool = True,
    official: bool = False,
    download: bool = True,
    cache_dir: str | PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> tuple[Tensor, Tensor]:
    """Load MNIST: by default a seeded 8,000 / 2,000 split of the 10,000-image test set.

    With ``official=False`` (the default) only the official test set is read
    (``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``) and a random permutation
    seeded by ``seed`` sends ``n_train`` images (default 8,000) to train and the rest to test (not
    stratified); ``split="all"`` returns all images in file order and ignores ``n_train``. With
    ``official=True`` the official split is returned in file order: ``"train"`` is the 60,000
    training images (``train-*-ubyte.gz``), ``"test"`` the 10,000 test images and ``"all"`` both
    (train first); ``n_train`` must then be left out and ``seed`` is not used.

    Where the files come from: with ``root``, that directory only (gzip or uncompressed files;
    with ``verify=True`` each file listed in ``root/MD5SUMS`` is checked). Without it, the
    test-set files come from the copy shipped with the package (CC BY-SA 3.0, see its README), so
    the default needs no network; the training files come from ``cache_dir`` (default
    :func:`mnist_cache_dir`, ``~/.cache/pyro_sparse_bnn/mnist``). A missing (or, with ``verify``,
    corrupted) cached file is downloaded when ``download=True``: ``mirrors`` (default
    :data:`MNIST_MIRRORS`) are tried in order, waiting at most ``timeout`` seconds for data, with a
    progress bar unless ``progress=False``; each file is checked against its official MD5
    (:data:`MNIST_MD5`) and written atomically (see :func:`pyro_sparse_bnn.download.download`).
    With ``download=False`` a missing file is a ``FileNotFoundError`` saying how to get it.
    Returns ``X`` float32 of shape ``(n, 784)`` with pixels in [0, 1] and ``y`` int64 labels.

    >>> X, y = load_mnist(split="test")
    >>> tuple(X.shape), tuple(y.shape), float(X.max())
    ((2000, 784), (2000,), 1.0)
    >>> X, y = load_mnist(split="test", official=True, download=False)  # shipped: no network
    >>> tuple(X.shape), y[:3].tolist()
    ((10000, 784), [7, 2, 1])
    """
    _check_split(split)
    root_path = _check_path(root, "root")
    cache = _check_path(cache_dir, "cache_dir")
    for flag, flag_name in [
        (verify, "verify"),
        (official, "official"),
        (download, "download"),
        (progress, "progress"),
    ]:
        _dl._check_flag(flag, flag_name)
    if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int)):
        raise TypeError(f"n_train must be an integer or None, got {n_train!r}")
    if official and n_train is not None:
        raise ValueError("n_train applies only to official=False (the official split is fixed)")
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    mirror_urls = MNIST_MIRRORS if mirrors is None else _dl._check_urls(mirrors, "mirrors")
    timeout = _dl._check_timeout(timeout)
    if root_path is not None and cache is not None:
        raise ValueError(
            "pass root (a directory to read) or cache_dir (to download into), not both"
        )
    if root_path is not None and not root_path.is_dir():
        raise FileNotFoundError(f"MNIST directory not found: {root_path}")

    def read(stems: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        paths = [
            _mnist_file(
                stem,
                root_path,
                mnist_cache_dir() if cache is None else cache,
                verify=verify,
                download=download,
                mirrors=mirror_urls,
                timeout=timeout,
                progress=progress,
            )
            for stem in stems
        ]
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"expected images (n, rows, cols) and labels (n,), got {images.shape}, "
                f"{labels.shape}"
            )
        return images, labels

    if official:
        parts = [read(MNIST_OFFICIAL[part]) for part in ("train", "test") if split in (part, "all")]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    else:
        images, labels = read(MNIST_OFFICIAL["test"])
    X = torch.as_tensor(images.reshape(len(images), -1), dtype=torch.float32) / 255.0
    y = torch.as_tensor(labels, dtype=torch.int64)
    if official or split == "all":
        return X, y
    n_train = 8000 if n_train is None else n_train
    if not 0 < n_train < len(images):
        raise ValueError(f"n_train must be an integer in [1, {len(images) - 1}], got {n_train!r}")
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(images)))
    rows = order[:n_train] if split == "train" else order[n_train:]
    return X[rows], y[rows]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sparse_regression(
    n: int = 200,
    p: int = 50,
    n_nonzero: int = 5,
    noise: float = 1.0,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """Simulate ``y = X beta + noise * eps`` with ``X ~ N(0, I)`` and ``eps ~ N(0, 1)``.

    The first ``n_nonzero`` coefficients have magnitudes uniform on [2, 4] and random signs; the
    other ``p - n_nonzero`` are exactly zero. Returns ``(X, y, beta)`` of shapes (n, p), (n,), (p,).

    >>> X, y, beta = sparse_regression(n=10, p=6, n_nonzero=2)
    >>> tuple(X.shape), tuple(y.shape), (beta != 0).tolist()
    ((10, 6), (10,), [True, True, False, False, False, False])
    """
    if n < 1 or p < 1:
        raise ValueError(f"n and p must be >= 1, got n={n}, p={p}")
    if not 0 <= n_nonzero <= p:
        raise ValueError(f"n_nonzero must lie in [0, p={p}], got {n_nonzero}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    gen = _generator(seed)
    magnitude = 2.0 + 2.0 * torch.rand(n_nonzero, generator=gen, dtype=torch.float64)
    sign = torch.randint(0, 2, (n_nonzero,), generator=gen).double() * 2.0 - 1.0
    beta = torch.zeros(p, dtype=torch.float64)
    beta[:n_nonzero] = sign * magnitude
    X = torch.randn(n, p, generator=gen, dtype=torch.float64)
    y = X @ beta + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    return X.to(dtype), y.to(dtype), beta.to(dtype)


class RegressionSplit(NamedTuple):
    """Train and test data of a simulated regression and its true coefficients."""

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    beta: Tensor


def large_p_small_n(
    n_train: int = 100,
    n_test: int = 100,
    p: int = 1000,
    rho: float = 0.6,
    noise_var: float = 3.0,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
) -> RegressionSplit:
    """Simulate the large-p-small-n regression with AR(1)-correlated features.

    Rows of ``X`` are ``N(0, Sigma)`` with ``Sigma_ij = rho^|i-j|``, drawn as the AR(1) process
    ``x_1 ~ N(0, 1)``, ``x_j = rho x_{j-1} + sqrt(1 - rho^2) e_j``. The coefficients are
    ``beta = (b1, b2, b3, 0, ..., 0)`` with ``b1 ~ N(3, 0.2^2)``, ``b2 ~ N(2, 0.2^2)``,
    ``b3 ~ N(1, 0.2^2)``, and ``y = X beta + sqrt(noise_var) eps``. Train and test rows are
    independent draws from the same model.

    >>> data = large_p_small_n(n_train=5, n_test=3, p=20)
    >>> tuple(data.X_train.shape), tuple(data.y_test.shape), int((data.beta != 0).sum())
    ((5, 20), (3,), 3)
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    if p < 3:
        raise ValueError(f"p must be >= 3 (three non-zero coefficients), got {p}")
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must lie in the open interval (-1, 1), got {rho}")
    if noise_var < 0:
        raise ValueError(f"noise_var must be >= 0, got {noise_var}")
    gen = _generator(seed)
    beta = torch.zeros(p, dtype=torch.float64)
    beta[:3] = torch.tensor([3.0, 2.0, 1.0]) + 0.2 * torch.randn(
        3, generator=gen, dtype=torch.float64
    )
    n = n_train + n_test
    columns = torch.randn(p, n, generator=gen, dtype=torch.float64)
    columns[1:] *= math.sqrt(1.0 - rho**2)
    for j in range(1, p):
        columns[j] += rho * columns[j - 1]
    X = columns.T
    y = X @ beta + math.sqrt(noise_var) * torch.randn(n, generator=gen, dtype=torch.float64)
    X, y, beta = X.to(dtype), y.to(dtype), beta.to(dtype)
    return RegressionSplit(X[:n_train], y[:n_train], X[n_train:], y[n_train:], beta)
