"""Structured compression of a small transformer encoder on scikit-learn digits: attention heads
and feed-forward neurons removed, error against the dense twin, over seeds.

    python benchmarks/compress_transformer.py [--epochs E] [--seeds 0 1 2] [--quick]

Data: ``datasets.load("digits")`` (stratified 1347 train / 450 test, standardised), each image's
eight pixel rows as eight tokens of eight pixels. Network (torch seed = the run's seed): a linear
token embedding to 32 dimensions plus a learned position embedding, two
``nn.TransformerEncoderLayer`` (4 heads of 8 dimensions, 128 feed-forward neurons, no dropout),
mean over tokens, Linear(32, 10).

Methods, ``--epochs`` epochs of Adam at batch 100, learning rate constant for the first half and
then linearly to zero (the same for every method):

* ``dense``: point estimates (``fit(method="l1", l1=0)``);
* ``group_sparsevd``: SVI with the SparseVD guide and group log-uniform priors
  (``GroupLogUniform``): one per attention head in the output projection (its 8 columns,
  ``groups=("in", 8)``) and per head block of 8 rows of the query, key and value projection
  (``groups=("out", 8)``); per neuron of the feed-forward layers (rows of the expansion,
  columns of the contraction); per input elsewhere;
* ``group_horseshoe``: the same groups with horseshoe priors.

L0 gates do not cover attention layers (``L0Network`` refuses them). Each posterior is pruned at
the relevance thresholds of ``_compress.THRESHOLDS`` plus SparseVD's ``exp(-1.5)``; the pruned
network (``prune.prune``: torch-pruning's dependency graph) is checked to give the masked
network's test predictions. Reported per point: test error, feed-forward neurons removed (the
pruned network's), heads whose output-projection columns are all pruned (an
``nn.MultiheadAttention`` cannot drop a head and keep its width, so these heads are zero but
still computed), FLOP reduction and latency speed-up at batch 256 (one thread). Goal: at least
half the heads and 70 % of the feed-forward neurons removed within dense + 1 pp. Writes
benchmarks/results/compress_transformer.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import print_table, write_results
from _compress import SPARSE_VD_SNR, THRESHOLDS, any_network_options, fit_dense
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.priors import GroupLogUniform
from pyro_sparse_bnn.report import _flops, _latencies

METHODS = ("dense", "group_sparsevd", "group_horseshoe")
DIM, HEADS, FEED_FORWARD, LAYERS = 32, 4, 128, 2
SETTINGS = {"batch_size": 100, "lr": 3e-3, "lr_vi": 3e-3}
COLUMNS = ["method", "seed", "threshold", "test_error", "ff_removed", "heads_removed",
           "flop_reduction", "speedup_256"]  # fmt: skip


class TokenEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, DIM)
        self.position = nn.Parameter(0.02 * torch.randn(8, DIM))
        self.layers = nn.Sequential(*(
            nn.TransformerEncoderLayer(DIM, HEADS, FEED_FORWARD, dropout=0.0, batch_first=True)
            for _ in range(LAYERS)
        ))  # fmt: skip
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], 8, 8)) + self.position
        return self.head(self.layers(tokens).mean(1))


def priors(family: type) -> dict:
    """One prior per layer, grouped by the unit a structured removal takes away."""
    out: dict = {"embed": family(groups="in"), "head": family(groups="in")}
    for i in range(LAYERS):
        out |= {
            f"layers.{i}.self_attn": family(groups=("out", DIM // HEADS)),
            f"layers.{i}.self_attn.out_proj": family(groups=("in", DIM // HEADS)),
            f"layers.{i}.linear1": family(groups="out"),
            f"layers.{i}.linear2": family(groups="in"),
        }
    return out


def fit(method: str, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> psb.FitResult:
    torch.manual_seed(seed)
    net = TokenEncoder()
    common = any_network_options(SETTINGS, epochs, seed)
    if method == "dense":
        return fit_dense(net, x, y, SETTINGS["lr"], **common)
    family = {"group_sparsevd": GroupLogUniform, "group_horseshoe": psb.priors.Horseshoe}[method]
    bnn = psb.SparseBNN(net, priors(family), psb.likelihoods.Categorical())
    return psb.fit(bnn, x, y, method="svi", guide="sparse_vd", lr=SETTINGS["lr_vi"],
                   kl_warmup=max(1, epochs // 10), num_posterior_samples=5, **common)  # fmt: skip


def error(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) != y).float().mean())


def heads_removed(masked: nn.Module) -> int:
    """Heads whose every output-projection column is zero (their output reaches nothing)."""
    count = 0
    for layer in masked.layers:
        columns = layer.self_attn.out_proj.weight.reshape(DIM, HEADS, DIM // HEADS)
        count += int((columns == 0).all(2).all(0).sum())
    return count


def points(method: str, seed: int, result: psb.FitResult, data: tuple, dense: nn.Module,
           rounds: int) -> list[dict]:  # fmt: skip
    _, _, x_test, y_test = data
    thresholds = [None] if method == "dense" else [SPARSE_VD_SNR, *THRESHOLDS]
    rows = []
    for threshold in thresholds:
        t = 0.0 if threshold is None else threshold
        masked, small = result.masked_network(t), result.prune(t, x_test[:2])
        err = error(small, x_test, y_test)
        if abs(err - error(masked, x_test, y_test)) > 1e-9:
            raise AssertionError(f"{method}: the pruned network disagrees with the masked one")
        kept_ff = sum(layer.linear1.out_features for layer in small.layers)
        with psb.isolation.loop_threads(None, 1):
            t_dense, t_small = _latencies([dense, small], x_test, 256, rounds)
        rows.append({
            "method": method, "seed": seed, "threshold": threshold, "test_error": err,
            "ff_removed": 1 - kept_ff / (LAYERS * FEED_FORWARD),
            "heads_removed": heads_removed(masked) / (LAYERS * HEADS),
            "flop_reduction": _flops(dense, x_test) / _flops(small, x_test),
            "speedup_256": t_dense / t_small,
        })  # fmt: skip
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per method, over seeds: the best point within dense + 1 pp of that seed's dense error."""
    out = []
    for method in METHODS[1:]:
        best = []
        for seed in sorted({r["seed"] for r in rows}):
            dense = next(r for r in rows if r["method"] == "dense" and r["seed"] == seed)
            ok = [r for r in rows if r["method"] == method and r["seed"] == seed
                  and r["test_error"] <= dense["test_error"] + 0.01 + 1e-12]  # fmt: skip
            if ok:
                best.append(max(ok, key=lambda r: (r["heads_removed"], r["ff_removed"])))
        met = [r["heads_removed"] >= 0.5 and r["ff_removed"] >= 0.7 for r in best]
        out.append({
            "method": method, "seeds_with_a_point": len(best), "goal_met_seeds": sum(met),
            "ff_removed": [r["ff_removed"] for r in best],
            "heads_removed": [r["heads_removed"] for r in best],
            "test_error": [r["test_error"] for r in best],
            "ff_removed_median": statistics.median(r["ff_removed"] for r in best) if best else None,
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="2 epochs, one seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = (*psb.datasets.load("digits", "train"), *psb.datasets.load("digits", "test"))
    epochs, seeds = (2, [0]) if args.quick else (args.epochs, args.seeds)
    rows = []
    for seed in seeds:
        dense = None
        for method in METHODS:
            start = time.perf_counter()
            result = fit(method, data[0], data[1], epochs, seed)
            seconds = time.perf_counter() - start
            dense = result.masked_network(0.0) if dense is None else dense
            for row in points(method, seed, result, data, dense, 5 if args.quick else 20):
                rows.append(row | {"seconds": seconds, "epochs": epochs})
                print_table([rows[-1]], COLUMNS)
    print_table(rows, COLUMNS)
    goals = summary(rows)
    print_table(goals, ["method", "goal_met_seeds", "ff_removed", "heads_removed", "test_error"])
    name = "compress_transformer_quick" if args.quick else "compress_transformer"
    write_results(name, rows, summary=goals, settings=SETTINGS, epochs=epochs, seeds=seeds,
                  data_split="digits: load('digits') seed 0, 1347 train / 450 test")  # fmt: skip


if __name__ == "__main__":
    main()
