"""Multi-instance data sets: MNIST-bags from digit images, and the UCI Musk file format.

* :func:`mnist_bags` builds the MNIST-bags task of Ilse, Tomczak & Welling (2018) offline: a bag
  is a random set of digit images, positive when it holds at least one image of ``target``.
  Images come from scikit-learn's bundled 8x8 digits (64 standardised pixels, the default) or
  from the MNIST test set shipped with the package (784 pixels in [0, 1]); train and test bags
  draw from disjoint image pools.
* :func:`load_musk` reads UCI Musk's ``clean1.data``/``clean2.data`` (one conformation per line:
  molecule, conformation, 166 features, class) into bags, one per molecule.
* :func:`musk_net` is the seed's bag network, 166 -> 10 (tanh) -> MeanMax -> 10 (tanh) -> 2.

>>> X, y = mnist_bags("train", n_bags=20, seed=0)
>>> tuple(X.shape[::2]), y.dtype
((20, 65), torch.int64)
"""

from __future__ import annotations

import csv
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import datasets
from ..validation import check_number
from .bags import MILNet, pad_bags

__all__ = ["MNIST_BAG_SOURCES", "load_musk", "mnist_bags", "musk_net"]

MNIST_BAG_SOURCES = ("digits", "mnist")
MUSK_FEATURES = 166


def _images(source: str, split: str) -> tuple[Tensor, Tensor]:
    if source == "digits":
        return datasets.load("digits", split=split, seed=0)
    return datasets.load_mnist(split=split, seed=0, download=False)


def mnist_bags(
    split: str = "train",
    *,
    n_bags: int | None = None,
    source: str = "digits",
    target: int = 9,
    mean_size: float = 10.0,
    var_size: float = 2.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """MNIST-bags as ``(X, y)``: ``X`` in :func:`~pyro_sparse_bnn.mil.pad_bags`' layout, ``y`` 1
    for bags holding a ``target`` digit, else 0.

    Bag sizes are ``round(Normal(mean_size, sqrt(var_size)))``, at least 1; each bag draws its
    images without replacement from the ``split`` pool of ``source`` (``datasets.load("digits")``
    or ``datasets.load_mnist()``, both with their seed-0 split, so train and test bags never share
    an image). ``n_bags`` defaults to 200 for ``"train"`` and 1000 for ``"test"``; ``seed`` draws
    the bags.

    >>> X, y = mnist_bags("test", n_bags=300, seed=1)
    >>> round(float(X[..., 0].sum(1).mean()), 1), round(float(y.float().mean()), 2)
    (9.9, 0.67)
    """
    if source not in MNIST_BAG_SOURCES:
        raise ValueError(f"source must be one of {MNIST_BAG_SOURCES}, got {source!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    n_bags = {"train": 200, "test": 1000}[split] if n_bags is None else n_bags
    n_bags = check_number(n_bags, "n_bags", integer=True, low=1)
    target = check_number(target, "target", integer=True, low=0, high=9)
    mean_size = check_number(mean_size, "mean_size", low=1.0)
    var_size = check_number(var_size, "var_size", low=0.0)
    seed = check_number(seed, "seed", integer=True, low=0)
    images, labels = _images(source, split)
    rng = np.random.default_rng(seed)
    sizes = np.rint(rng.normal(mean_size, np.sqrt(var_size), n_bags)).astype(int)
    sizes = np.clip(sizes, 1, len(images))
    picks = [torch.as_tensor(rng.choice(len(images), s, replace=False)) for s in sizes]
    X = pad_bags([images[p] for p in picks])
    y = torch.stack([(labels[p] == target).any() for p in picks]).long()
    return X, y


def _musk_rows(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    names, features, labels = [], [], []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != MUSK_FEATURES + 3:
                raise ValueError(
                    f"{path}:{line}: expected {MUSK_FEATURES + 3} comma-separated fields "
                    f"(molecule, conformation, {MUSK_FEATURES} features, class), got {len(row)}"
                )
            try:
                values = [float(v) for v in row[2:]]
            except ValueError:
                raise ValueError(f"{path}:{line}: features and class must be numbers") from None
            if values[-1] not in (0.0, 1.0):
                raise ValueError(f"{path}:{line}: class must be 0 or 1, got {row[-1]!r}")
            names.append(row[0].strip())
            features.append(values[:-1])
            labels.append(int(values[-1]))
    if not names:
        raise ValueError(f"{path} holds no conformations")
    return names, np.asarray(features), np.asarray(labels)


def load_musk(
    path: str | PathLike[str],
    split: str = "train",
    *,
    test_size: float = 0.25,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Read a UCI Musk file (``clean1.data`` or ``clean2.data``) into bags, one per molecule.

    Features are standardised with the training conformations' mean and std; molecules are split
    once, seeded and stratified by class as in :func:`~pyro_sparse_bnn.datasets.load`, into
    ``ceil(test_size * n)`` test bags and the rest train (``split="all"``: every bag, in file
    order). A molecule whose conformations disagree on the class is an error. Returns ``X`` in
    :func:`~pyro_sparse_bnn.mil.pad_bags`' layout and int64 ``y``; fit it with
    ``SparseBNN(musk_net(), ...)``.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Musk file not found: {file}")
    if split not in datasets.SPLITS:
        raise ValueError(f"split must be one of {datasets.SPLITS}, got {split!r}")
    test_size = check_number(test_size, "test_size", low=0.0, high=1.0, low_open=True,
                             high_open=True)  # fmt: skip
    seed = check_number(seed, "seed", integer=True, low=0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    names, features, labels = _musk_rows(file)
    molecules = list(dict.fromkeys(names))
    index = np.array([molecules.index(n) for n in names])
    bag_labels = np.zeros(len(molecules), dtype=int)
    for m in range(len(molecules)):
        classes = np.unique(labels[index == m])
        if len(classes) != 1:
            raise ValueError(f"{file}: molecule {molecules[m]!r} has conformations of both classes")
        bag_labels[m] = classes[0]
    n_test = int(np.ceil(test_size * len(molecules)))
    if not 0 < n_test < len(molecules):
        raise ValueError(f"test_size={test_size} leaves an empty split of {len(molecules)} bags")
    train = datasets._stratified_train_mask(bag_labels, len(molecules) - n_test,
                                            np.random.default_rng(seed))  # fmt: skip
    features = datasets._standardise(features, features[train[index]])
    chosen = {"train": np.flatnonzero(train), "test": np.flatnonzero(~train),
              "all": np.arange(len(molecules))}[split]  # fmt: skip
    bags = [torch.as_tensor(features[index == m], dtype=dtype) for m in chosen]
    return pad_bags(bags), torch.as_tensor(bag_labels[chosen], dtype=torch.int64)


def musk_net(in_features: int = MUSK_FEATURES, hidden: int = 10, classes: int = 2) -> MILNet:
    """The seed's Musk network: ``in_features -> hidden`` (tanh) -> MeanMax -> ``hidden`` (tanh)
    -> ``classes``: 1,902 parameters at the defaults.

    >>> sum(p.numel() for p in musk_net().parameters())
    1902
    """
    for value, name in ((in_features, "in_features"), (hidden, "hidden"), (classes, "classes")):
        check_number(value, name, integer=True, low=1)
    return MILNet(
        nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh()),
        nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, classes)),
        pooling="meanmax",
    )
