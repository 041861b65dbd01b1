"""Data sets named on the command line: CSV tables with a header, IDX images with MNIST-named
labels beside them, seeded splits."""

import gzip

import numpy as np
import pytest
import torch

from pyro_sparse_bnn.data_files import load_data


def test_csv_with_header_keeps_rows_and_targets_together(tmp_path):
    """Every row lands in train or test exactly once, with its own target; the named target
    column is taken out of the features; float targets make a regression."""
    rng = np.random.default_rng(1)
    table = rng.normal(size=(20, 3))
    path = tmp_path / "t.csv"
    np.savetxt(path, table, delimiter=",", header="a,target,b", comments="")
    data = load_data(str(path), target="target", test_size=0.2, seed=3)
    assert (len(data.X_train), len(data.X_test)) == (16, 4)
    X = torch.cat([data.X_train, data.X_test]).double()
    y = torch.cat([data.y_train, data.y_test]).double()
    expected = torch.as_tensor(table)
    order = torch.argsort(X[:, 0])
    truth = torch.argsort(expected[:, 0])
    torch.testing.assert_close(X[order], expected[truth][:, [0, 2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(y[order], expected[truth][:, 1], rtol=0, atol=1e-6)


def idx_bytes(array, code):
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_with_mnist_named_labels(tmp_path, compress):
    """uint8 images are flattened and scaled by 1/255; labels come from the file named like
    MNIST's beside them; the split is the seeded permutation."""
    images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2) * 5
    labels = np.arange(10, dtype=np.uint8) % 3
    suffix = ".gz" if compress else ""
    write = gzip.compress if compress else bytes
    (tmp_path / f"x-images-idx3-ubyte{suffix}").write_bytes(write(idx_bytes(images, 0x08)))
    (tmp_path / f"x-labels-idx1-ubyte{suffix}").write_bytes(write(idx_bytes(labels, 0x08)))
    data = load_data(str(tmp_path / f"x-images-idx3-ubyte{suffix}"), test_size=0.3, seed=0)
    test = np.random.default_rng(0).permutation(10)[:3]
    expected = torch.as_tensor(images[test].reshape(3, 4) / 255.0, dtype=torch.float32)
    torch.testing.assert_close(data.X_test, expected)
    assert data.y_test.tolist() == labels[test].tolist()
