"""Compression of a 64-300-100-10 MLP on scikit-learn digits by every sparse method.

    python benchmarks/compress_digits.py [--quick]

Data: ``datasets.load("digits")`` (seed 0, stratified, 1347 train / 450 test, standardised).
Every method starts from the same initial network (torch seed 0) and trains with Adam, batch 100,
the learning rate constant for the first half of the epochs and then linearly to 0:

* ``dense``: plain training (``fit(method="l1", l1=0, threshold=0)``);
* ``l1``: ``mean NLL + sum_l l1_l * sum |w_l|`` with ``l1_l`` a hundredth of the layer's
  Glorot-consistent Bayesian factor ``sqrt(2 fan_in) / N`` (``penalties.glorot_penalties``; the
  validation sweep of ``scalp_width.py`` found its best ratios between 0.003 and 0.03), then
  weights with ``|w| < threshold`` are zeroed;
* ``sparsevd``: log-uniform prior, SparseVD guide, local reparameterisation ELBO, KL warm-up;
  pruned at ``log_alpha > 3``;
* ``ard``: the same with the profiled ARD prior;
* ``group_sparsevd``: group normal-Jeffreys prior (one log-uniform multiplier per input neuron);
* ``group_horseshoe``: non-centred horseshoe with one local scale per input neuron;
* ``l0``: hard-concrete gates on every layer's inputs, ``lambda = 10`` per layer (the paper's 0.1
  barely moves the gates in 2,800 steps), weight decay 5e-4, gate learning rate 1e-2.

The variational methods prune each weight whose *effective* ``log_alpha = log(Var / E^2)`` of
``w`` (``guides.weight_moments``) exceeds 3; their test-time network uses the posterior
means. Their ``threshold_sweep`` scores the same posterior at other relevance thresholds
(``_compress.THRESHOLDS``), and the ``summary`` row lists each method's most compressed point
within the goal's error budget (dense + 0.5 pp). The error is that of the physically pruned
network (``prune.prune``), checked to equal the masked network's. Writes
benchmarks/results/compress_digits.json.
"""

from __future__ import annotations

import argparse

import torch
from _common import print_table, write_results
from _compress import METHODS, best_point, run_method

import pyro_sparse_bnn as psb

SIZES = [64, 300, 100, 10]
SETTINGS = {
    "epochs": 200,
    "batch_size": 100,
    "lr": 1e-3,
    "lr_vi": 1e-2,
    "kl_warmup": 20,
    "l1_glorot_ratio": 0.01,
    "l1_threshold": 1e-2,
    "l0_lambdas": [10.0, 10.0, 10.0],
    "l0_weight_decay": 5e-4,
    "l0_gate_lr": 1e-2,
    "horseshoe_scale": 1e-2,
    "num_posterior_samples": 10,
    "seed": 0,
    "progress": False,
}
QUICK = {"epochs": 20, "kl_warmup": 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized run (few epochs)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = SETTINGS | (QUICK if args.quick else {})
    data = (*psb.datasets.load("digits", "train"), *psb.datasets.load("digits", "test"))

    def make_net() -> torch.nn.Module:
        torch.manual_seed(settings["seed"])
        return psb.mlp(SIZES)

    rows = []
    for method in args.methods:
        row = run_method(method, make_net, data, settings)
        row.pop("pruned_network")
        rows.append(row)
        print_table([row], ["method", "test_error", "compression", "kept_neurons", "seconds"])
    print_table(rows, ["method", "test_error", "compression", "kept_neurons", "seconds"])
    budget = rows[0]["test_error"] + 0.005 if rows[0]["method"] == "dense" else None
    if budget is not None:
        best = []
        for row in rows[1:]:
            point = best_point(row, budget)
            if point is not None:
                best.append({
                    "method": row["method"], "threshold": point.get("threshold", "default"),
                    "test_error": point["test_error"], "compression": point["compression"],
                    "kept_neurons": point["kept_neurons"],
                })  # fmt: skip
        print(f"most compressed point per method at test error <= dense + 0.5 pp = {budget:.4f}:")
        print_table(best, ["method", "threshold", "test_error", "compression", "kept_neurons"])
        rows.append({"method": "summary", "error_budget": budget, "best_within_budget": best})
    write_results(
        "compress_digits",
        rows,
        seed=settings["seed"],
        data_split="digits: load('digits') seed 0, 1347 train / 450 test",
        network="64-300-100-10 ReLU",
        settings=settings,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
