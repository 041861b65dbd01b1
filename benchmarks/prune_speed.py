"""Forward time of structured-pruned LeNet-300-100 networks against the dense one, batch 1000.

    python benchmarks/prune_speed.py [--quick]

Loads the physically pruned networks that benchmarks/compress_mnist.py saved
(results/compress_mnist_lenet300.pt: one plain ``nn.Sequential`` per method, from
``prune.prune``; skipped with ``--quick`` or without that file), and always the dense network
pruned to the published L0-sep architecture 266-88-33 (Louizos et al.; random weights: the time
depends only on the shapes). For each network: multiply-accumulates per example (``MACs``,
Linear layers), forward time at batch 1000 on MNIST-10k rows (median over interleaved repeats,
one thread, no grad), ``speedup = t_dense / t_pruned``, ``flop_reduction = MACs_dense /
MACs_pruned`` and their ratio (goal >= 0.7). Writes benchmarks/results/prune_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import RESULTS, print_table, write_results
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.prune import masked_network, prune

SAVED = RESULTS / "compress_mnist_lenet300.pt"
BATCH = 1000
REPEATS = 200
PUBLISHED = (266, 88, 33)


def architecture(net: nn.Module) -> list[int]:
    """Inputs read, then the width of every Linear layer (784-300-100-10 for the dense net)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return [linears[0].in_features, *(m.out_features for m in linears)]


def macs(net: nn.Module) -> int:
    """Multiply-accumulates per example of the Linear layers."""
    return sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))


def published_architecture(dense: nn.Module) -> nn.Module:
    """``dense`` pruned to keep the first 266 inputs, 88 and 33 hidden units."""
    masks = {}
    keep = [torch.arange(784) < PUBLISHED[0], torch.arange(300) < PUBLISHED[1],
            torch.arange(100) < PUBLISHED[2], torch.ones(10, dtype=torch.bool)]  # fmt: skip
    for i, layer in enumerate((0, 2, 4)):
        masks[f"{layer}.weight"] = keep[i + 1][:, None] & keep[i][None, :]
    return prune(masked_network(dense, masks=masks), inputs="select")


def forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net`` on ``x``, reading only the kept input pixels of a net pruned with
    ``inputs="select"`` (the gather is part of the pruned network's time)."""
    kept = getattr(net, "kept_inputs", None)
    return net(x if kept is None else x[:, kept])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 repeats, published shapes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 20 if args.quick else REPEATS
    torch.manual_seed(0)
    dense = psb.mlp([784, 300, 100, 10]).eval()
    networks = {"dense": dense}
    source = "random weights pruned to 266-88-33"
    if SAVED.exists() and not args.quick:
        with torch.serialization.safe_globals([nn.Sequential, nn.Linear, nn.ReLU]):
            networks |= torch.load(SAVED, weights_only=True)
        source = f"{SAVED.relative_to(RESULTS.parent)}; {source}"
    networks["published_l0_sep_shapes"] = published_architecture(dense)
    networks = {k: v.eval() for k, v in networks.items()}
    x = psb.datasets.load_mnist(split="test")[0][:BATCH]
    times: dict[str, list[float]] = {k: [] for k in networks}
    with torch.no_grad():
        for net in networks.values():
            forward(net, x)
        for _ in range(repeats):
            for name, net in networks.items():
                start = time.perf_counter()
                forward(net, x)
                times[name].append((time.perf_counter() - start) * 1e3)
    t_dense = statistics.median(times["dense"])
    rows = []
    for name, net in networks.items():
        t = statistics.median(times[name])
        speedup, flops = t_dense / t, macs(dense) / macs(net)
        rows.append({
            "network": name,
            "architecture": architecture(net),
            "macs": macs(net),
            "ms_forward": t,
            "speedup": speedup,
            "flop_reduction": flops,
            "speedup_over_flop_reduction": speedup / flops,
        })  # fmt: skip
    print_table(rows, ["network", "macs", "ms_forward", "speedup", "flop_reduction",
                       "speedup_over_flop_reduction"])  # fmt: skip
    write_results(
        "prune_speed",
        rows,
        seed=0,
        data_split="MNIST t10k via load_mnist(seed=0): first 1000 test rows",
        batch=BATCH,
        repeats=repeats,
        threads=1,
        networks_from=source,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
