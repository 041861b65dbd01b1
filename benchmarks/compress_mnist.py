"""Compression of LeNet-300-100 and LeNet-5-Caffe on MNIST-10k by every sparse method.

    python benchmarks/compress_mnist.py [--quick] [--nets lenet300 lenet5]

Data: the 10,000 official MNIST test images (``datasets.load_mnist``: the MD5-checked copy
shipped with the package), seeded split 8,000 train / 2,000 test, pixels in [0, 1]. Networks
(torch seed 0, the same initial weights for every method):

* LeNet-300-100: 784-300(ReLU)-100(ReLU)-10, all seven methods (``_compress.METHODS``);
* LeNet-5-Caffe: conv 20@5x5 - maxpool 2 - conv 50@5x5 - maxpool 2 - 800-500(ReLU)-10, SparseVD and
  L0 only (CPU time).

Training (400 epochs for LeNet-300-100: the papers' 200 epochs of 60,000 images are 120,000
Adam steps, 400 epochs of 8,000 are 32,000; 10 for LeNet-5, whose convolutions are slow on two
CPU cores): Adam, batch 100, ``EPOCHS`` epochs with the learning rate constant for the
first half and then linearly to 0 (lr 1e-3; 3e-3 for the variational methods; 1e-2 for the L0
gates, which move at most about lr per Adam step); variational methods use the local
reparameterisation ELBO, traced (``fit(..., graph="traced")``), with a KL weight rising linearly
over ``KL_WARMUP`` epochs. The L0 ``lambda`` is 20 per layer instead of the paper's 0.1: with
8,000 images instead of 60,000 and far fewer steps the penalty must dominate the gradient noise
of the gates sooner. The L1 factor of each layer is a
hundredth of its Glorot-consistent Bayesian value ``sqrt(2 fan_in) / N`` (see ``_compress.py``).

Methods, pruning rules and scoring as in ``_compress.py``: the reported error
is that of the physically pruned test-time network (posterior means, pruned weights zeroed; L0:
deterministic gates), ``compression = |W| / |W != 0|`` over Linear/Conv weights, ``kept_neurons``
= inputs of each layer still read by a non-zero weight.

Writes benchmarks/results/compress_mnist.json (a run of some ``--nets`` keeps the other nets'
rows) and, for benchmarks/prune_speed.py, the pruned LeNet-300-100 networks to
benchmarks/results/compress_mnist_lenet300.pt.
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import RESULTS, print_table, write_results
from _compress import METHODS, run_method
from torch import nn

import pyro_sparse_bnn as psb

EPOCHS = {"lenet300": 400, "lenet5": 10}
KL_WARMUP = {"lenet300": 40, "lenet5": 5}
NET_METHODS = {"lenet300": METHODS, "lenet5": ("sparsevd", "l0")}
SETTINGS = {
    "batch_size": 100,
    "lr": 1e-3,
    "lr_vi": 3e-3,
    "l1_glorot_ratio": 0.01,
    "l1_threshold": 1e-2,
    "l0_weight_decay": 5e-4,
    "l0_gate_lr": 1e-2,
    "horseshoe_scale": 1.0,
    "num_posterior_samples": 5,
    "seed": 0,
    "progress": False,
}
L0_LAMBDAS = {"lenet300": [20.0, 20.0, 20.0], "lenet5": [20.0, 20.0, 20.0, 20.0]}
QUICK = {"lenet300": 2, "lenet5": 1}
COLUMNS = ["net", "method", "test_error", "compression", "kept_neurons", "seconds"]


def lenet300() -> nn.Module:
    return psb.mlp([784, 300, 100, 10])


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized run (1-2 epochs)")
    parser.add_argument("--nets", nargs="+", default=list(NET_METHODS), choices=list(NET_METHODS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = psb.datasets.load_mnist(split="train")
    x_test, y_test = psb.datasets.load_mnist(split="test")
    rows, pruned = [], {}
    for name in args.nets:
        epochs = QUICK[name] if args.quick else EPOCHS[name]
        settings = SETTINGS | {"epochs": epochs, "l0_lambdas": L0_LAMBDAS[name]}
        settings["kl_warmup"] = 1 if args.quick else KL_WARMUP[name]
        shape = (-1, 1, 28, 28) if name == "lenet5" else (-1, 784)
        data = (x.reshape(shape), y, x_test.reshape(shape), y_test)

        def make_net(name: str = name) -> nn.Module:
            torch.manual_seed(SETTINGS["seed"])
            return {"lenet300": lenet300, "lenet5": lenet5}[name]()

        for method in NET_METHODS[name]:
            row = {"net": name, **run_method(method, make_net, data, settings)}
            small = row.pop("pruned_network")
            if name == "lenet300" and method != "dense":
                pruned[method] = small
            rows.append(row)
            print_table([row], COLUMNS)
    previous = RESULTS / "compress_mnist.json"
    if not args.quick and previous.exists():  # keep the rows of networks not rerun
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["net"] not in args.nets]
        rows = kept + rows
    print_table(rows, COLUMNS)
    write_results(
        "compress_mnist",
        rows,
        seed=SETTINGS["seed"],
        data_split="MNIST t10k via load_mnist(seed=0): 8000 train / 2000 test",
        epochs=QUICK if args.quick else EPOCHS,
        settings=SETTINGS | {"l0_lambdas": L0_LAMBDAS, "kl_warmup": KL_WARMUP},
        quick=args.quick,
    )
    if pruned and not args.quick:
        torch.save(pruned, RESULTS / "compress_mnist_lenet300.pt")


if __name__ == "__main__":
    main()
