"""Structured compression of a ResNet-20-style network on MNIST-10k: FLOPs, error and latency of
the physically pruned network against its dense twin.

    python benchmarks/compress_resnet.py [--epochs E] [--methods ...] [--seeds ...] [--quick]

Data: the 10,000 official MNIST test images (``datasets.load_mnist``), the seeded 8,000 / 2,000
split of the other MNIST benchmarks, as 1x28x28 images. Network (torch seed = the run's seed, the
same initial weights for every method of a seed): a 3x3 stem convolution to 16 channels, three
stages of three basic blocks (conv-BN-ReLU-conv-BN plus the input, then ReLU) at 16, 32 and 64
channels, the last two stages starting with stride 2 and a 1x1 convolution + BatchNorm on the
shortcut (identity shortcuts everywhere else), global average pooling, Linear(64, 10): ResNet-20's
layout.

Methods, all for ``--epochs`` epochs of Adam at batch 100 with the learning rate constant for the
first half and then linearly to zero:

* ``dense``: the same network, point estimates (``fit(method="l1", l1=0)``);
* ``group_sparsevd``: SVI with the group log-uniform prior per input channel
  (``GroupLogUniform(groups="in")``), one variable per channel shared by all the layers that read
  it across a stage's residual additions (``ties=prune_graph.shared_inputs(net, x)``), and the
  SparseVD guide (input side: a BatchNorm after a convolution would divide an output-side
  variable away);
* ``group_sparsevd_kl10`` / ``group_sparsevd_kl30``: the same, tempered: the KL weighs 10 or
  30 times more (``fit(..., kl_weight=...)``, the role of a larger L1 ``lambda``);
* ``group_horseshoe``: the same with a horseshoe per input channel (``Horseshoe(groups="in")``,
  the local scales tied the same way);
* ``l0``: hard-concrete gates per output channel (``fit(method="l0")``).

Each posterior is pruned at SparseVD's point ``log alpha > 3`` (SNR below ``exp(-1.5)``) and at
the other relevance thresholds of ``_compress.THRESHOLDS``; for each point the full-size masked
network is made physically smaller with ``prune.prune`` (torch-pruning's dependency graph) and
checked to give the same test predictions. Reported per point: test error, FLOPs per image
(``torch.utils.flop_counter``) and their reduction, channels kept per convolution, and the CPU
latency of dense and pruned networks at batch 256 (median of interleaved rounds, one thread).
Goal: at least 10x fewer FLOPs at test error within dense + 0.5 pp; latency speed-up at least
0.5x the FLOP reduction. Writes benchmarks/results/compress_resnet.json, keeping the rows of
(method, seed) pairs not rerun.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import RESULTS, print_table, write_results
from _compress import SPARSE_VD_SNR, THRESHOLDS, any_network_options, fit_dense
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.priors import GroupLogUniform
from pyro_sparse_bnn.prune_graph import shared_inputs
from pyro_sparse_bnn.report import _flops, _latencies

METHODS = ("dense", "group_sparsevd", "group_sparsevd_kl10", "group_sparsevd_kl30",
           "group_horseshoe", "l0")  # fmt: skip
KL_WEIGHTS = {"group_sparsevd_kl10": 10.0, "group_sparsevd_kl30": 30.0}
"""Tempered group SparseVD (``fit(..., kl_weight=beta)``): the KL weighs ``beta`` times more,
as a larger ``lambda`` does for L1."""
SETTINGS = {"batch_size": 100, "lr": 1e-3, "lr_vi": 3e-3, "l0_lambda": 1.0}
COLUMNS = ["method", "seed", "threshold", "test_error", "flop_reduction", "speedup_256",
           "channels"]  # fmt: skip


class Block(nn.Module):
    """A basic residual block; a 1x1 convolution on the shortcut where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.shortcut(x) + self.bn2(self.conv2(inner)))


class ResNet20(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())  # fmt: skip
        layers, c_in = [], widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks):
                layers.append(Block(c_in, width, 2 if i > 0 and b == 0 else 1))
                c_in = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def fit(method: str, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> psb.FitResult:
    torch.manual_seed(seed)
    net = ResNet20()
    common = any_network_options(SETTINGS, epochs, seed)
    likelihood = psb.likelihoods.Categorical()
    if method == "dense":
        return fit_dense(net, x, y, SETTINGS["lr"], **common)
    if method == "l0":
        bnn = psb.SparseBNN(net, psb.priors.Normal(), likelihood)
        return psb.fit(bnn, x, y, method="l0", lambdas=SETTINGS["l0_lambda"], lr=SETTINGS["lr"],
                       num_posterior_samples=2, **common)  # fmt: skip
    horseshoe = method == "group_horseshoe"
    prior = psb.priors.Horseshoe(groups="in") if horseshoe else GroupLogUniform(groups="in")
    bnn = psb.SparseBNN(net, prior, likelihood, ties=shared_inputs(net, x[:2]))
    return psb.fit(bnn, x, y, method="svi", guide="sparse_vd", lr=SETTINGS["lr_vi"],
                   kl_warmup=max(1, epochs // 4), kl_weight=KL_WEIGHTS.get(method, 1.0),
                   num_posterior_samples=5, **common)  # fmt: skip


def error(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        predictions = torch.cat([net(b).argmax(1) for b in x.split(500)])
    return float((predictions != y).float().mean())


def channels(net: nn.Module) -> list[int]:
    return [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]


def points(method: str, result: psb.FitResult, x_test: torch.Tensor, y_test: torch.Tensor,
           dense: nn.Module, rounds: int) -> list[dict]:  # fmt: skip
    thresholds = [None] if method in ("dense", "l0") else [SPARSE_VD_SNR, *THRESHOLDS]
    rows = []
    for threshold in thresholds:
        full = result.masked_network(threshold if threshold is not None else 0.0)
        small = result.prune(threshold if threshold is not None else 0.0, x_test[:2])
        err, full_err = error(small, x_test, y_test), error(full, x_test, y_test)
        if abs(err - full_err) > 1e-9:
            raise AssertionError(f"{method}: pruned {err} vs masked {full_err}")
        with psb.isolation.loop_threads(None, 1):
            t_dense, t_small = _latencies([dense, small], x_test, 256, rounds)
        flop_reduction = _flops(dense, x_test) / _flops(small, x_test)
        rows.append({
            "method": method, "threshold": threshold, "test_error": err,
            "flops": _flops(small, x_test), "flop_reduction": flop_reduction,
            "latency_ms_256": t_small, "dense_latency_ms_256": t_dense,
            "speedup_256": t_dense / t_small, "channels": channels(small),
            "parameters": sum(p.numel() for p in small.parameters()),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on 1,000 images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = psb.datasets.load_mnist(split="train")
    x_test, y_test = psb.datasets.load_mnist(split="test")
    x, x_test = x.reshape(-1, 1, 28, 28), x_test.reshape(-1, 1, 28, 28)
    epochs = 1 if args.quick else args.epochs
    if args.quick:
        x, y = x[:1000], y[:1000]
    rows = []
    for seed in args.seeds:
        dense = None
        for method in args.methods:
            start = time.perf_counter()
            result = fit(method, x, y, epochs, seed)
            seconds = time.perf_counter() - start
            if dense is None:
                dense = result.masked_network(0.0) if method == "dense" else ResNet20().eval()
            rounds = 5 if args.quick else 20
            for row in points(method, result, x_test, y_test, dense, rounds):
                rows.append(row | {"seed": seed, "seconds": seconds, "epochs": epochs})
                print_table([rows[-1]], COLUMNS)
    name = "compress_resnet_quick" if args.quick else "compress_resnet"
    previous = RESULTS / f"{name}.json"
    if not args.quick and previous.exists():  # keep the rows of (method, seed) pairs not rerun
        rerun = {(r["method"], r["seed"]) for r in rows}
        old = json.loads(previous.read_text())["rows"]
        rows = [r for r in old if (r["method"], r.get("seed", 0)) not in rerun] + rows
    print_table(rows, COLUMNS)
    split = "MNIST t10k via load_mnist(seed=0): 8000 train / 2000 test"
    write_results(name, rows, settings=SETTINGS, epochs=epochs, quick=args.quick, data_split=split)


if __name__ == "__main__":
    main()
