"""Read a data set named on the command line: a built-in name
(:data:`pyro_sparse_bnn.datasets.DATASETS`), a directory holding the MNIST IDX files
(:func:`~pyro_sparse_bnn.datasets.load_mnist`), or a file:

* ``.npz`` with arrays ``X`` and ``y`` (and optionally ``X_test``, ``y_test``);
* ``.csv``, one row per example, the target in the last column (or ``target``), with an
  optional header row whose names are kept; a target of strings is a classification, its
  labels numbered in sorted order;
* an IDX file of inputs (raw or gzip; uint8 pixels are scaled to [0, 1]) with its labels in
  ``labels`` or, by the MNIST naming, in the ``labels-idx1`` file beside it.

Files without test arrays are split by ``test_size`` with a seeded permutation.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import datasets

__all__ = ["Data", "load_data"]


class Data(NamedTuple):
    """Train and test tensors of a data set, where they came from, and the names the file gave
    its features and class labels (class ``i`` is ``class_names[i]``)."""

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    source: str
    feature_names: list[str] | None = None
    class_names: list[str] | None = None


def _split(X: np.ndarray, y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, ...]:
    n_test = math.ceil(test_size * len(X))
    if not 0 < n_test < len(X):
        raise ValueError(f"--test-size {test_size} leaves an empty split of the {len(X)} rows")
    order = np.random.default_rng(seed).permutation(len(X))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(
    path: Path, target: str | None
) -> tuple[np.ndarray, np.ndarray, list[str] | None, list[str] | None]:
    """Features, targets (class indices for string labels), feature names and class names.

    The first row is a header when some cell of it is not a number although the cell below it
    is, or when no cell of it is a number.
    """
    with path.open(newline="") as f:
        rows = [[cell.strip() for cell in row] for row in csv.reader(f) if row]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise ValueError(f"{path}: needs a feature column, the target and at least two rows")
    first, second = rows[0], rows[1]
    header = None
    if not any(map(_number, first)) or any(
        not _number(a) and _number(b) for a, b in zip(first, second, strict=False)
    ):
        header, rows = first, rows[1:]
    width = len(rows[0])
    if any(len(row) != width for row in rows) or (header and len(header) != width):
        raise ValueError(f"{path}: rows have different numbers of columns")
    column = width - 1
    if target is not None:
        if header and target in header:
            column = header.index(target)
        elif target.lstrip("-").isdigit() and -width <= int(target) < width:
            column = int(target) % width
        else:
            raise ValueError(f"--target {target!r} is neither a column name nor index of {path}")
    features = [[v for i, v in enumerate(row) if i != column] for row in rows]
    try:
        X = np.array(features, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: the features are not a table of numbers ({err})") from None
    labels = [row[column] for row in rows]
    class_names = None
    if all(map(_number, labels)):
        y = np.array(labels, dtype=np.float64)
    else:
        class_names = sorted(set(labels))
        y = np.array([class_names.index(v) for v in labels], dtype=np.int64)
    names = None if header is None else [v for i, v in enumerate(header) if i != column]
    return X, y, names, class_names


def _labels_beside(images: Path) -> Path:
    name = images.name.replace("images-idx3", "labels-idx1")
    if name == images.name:
        raise ValueError(f"{images}: give the labels file with --labels")
    return images.with_name(name)


def _read_idx_pair(images: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray]:
    X = datasets.read_idx(images)
    y = datasets.read_idx(labels if labels is not None else _labels_beside(images))
    if len(X) != len(y):
        raise ValueError(f"{images} has {len(X)} inputs but the labels file has {len(y)}")
    X = X.reshape(len(X), -1)
    return (X / 255.0 if X.dtype == np.uint8 else X), y


def _is_idx(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(3)
    return head[:2] == b"\x1f\x8b" or (head[:2] == b"\x00\x00" and len(head) == 3)


def load_data(
    spec: str,
    *,
    test_size: float = 0.25,
    seed: int = 0,
    target: str | None = None,
    labels: str | None = None,
    standardize: bool = False,
) -> Data:
    """Read ``spec`` (a built-in name, an MNIST directory, or a .npz/.csv/IDX file) as tensors.

    Raises ``ValueError`` (or ``FileNotFoundError``) with a one-line reason for bad input.

    >>> data = load_data("iris")
    >>> tuple(data.X_train.shape), tuple(data.X_test.shape), data.y_train.dtype
    ((112, 4), (38, 4), torch.int64)
    """
    if spec in datasets.DATASETS:
        X, y = datasets.load(spec, "train", test_size=test_size, seed=seed)
        X_test, y_test = datasets.load(spec, "test", test_size=test_size, seed=seed)
        return Data(X, y, X_test, y_test, f"{spec} (built-in)")
    path = Path(spec)
    feature_names = class_names = None
    if not path.exists():
        raise ValueError(
            f"dataset {spec!r} is neither a built-in name {list(datasets.DATASETS)} nor an "
            "existing path"
        )
    if path.is_dir():
        X, y = datasets.load_mnist(path, "train", seed=seed)
        X_test, y_test = datasets.load_mnist(path, "test", seed=seed)
        return Data(X, y, X_test, y_test, f"MNIST IDX files in {path}")
    if path.suffix == ".npz":
        with np.load(path) as archive:
            arrays = dict(archive)
        if not {"X", "y"} <= set(arrays):
            raise ValueError(f"{path} must hold arrays 'X' and 'y', found {sorted(arrays)}")
        X, y = arrays["X"], arrays["y"]
        X, y = X.reshape(len(X), -1), y.reshape(len(y))
        parts = (X, y, arrays["X_test"], arrays["y_test"]) if "X_test" in arrays else None
    elif path.suffix == ".csv":
        X, y, feature_names, class_names = _read_csv(path, target)
        parts = None
    elif _is_idx(path):
        X, y = _read_idx_pair(path, None if labels is None else Path(labels))
        parts = None
    else:
        raise ValueError(f"{path}: expected a .npz, .csv or IDX file")
    if len(X) != len(y):
        raise ValueError(f"{path}: {len(X)} rows of X but {len(y)} targets")
    X_train, y_train, X_test, y_test = parts or _split(X, y, test_size, seed)
    X_test = X_test.reshape(len(X_test), -1)
    if standardize:
        reference = X_train
        X_train = datasets._standardise(X_train, reference)
        X_test = datasets._standardise(X_test, reference)
    return Data(
        _floats(X_train),
        torch.as_tensor(y_train),
        _floats(X_test),
        torch.as_tensor(y_test),
        str(path),
        feature_names,
        class_names,
    )


def _floats(array: np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32))
