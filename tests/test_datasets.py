import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_sparse_bnn.datasets import (
    large_p_small_n,
    load,
    load_mnist,
    read_idx,
    sparse_regression,
)

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
