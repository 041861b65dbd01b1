"""VADAM / VOGN against mean-field SVI (Bayes by Backprop, BBB) on breast cancer: test log-loss.

    python benchmarks/vadam_vs_bbb.py [--quick] [--seeds 3]

The Vadam paper's BNN comparison uses LIBSVM's australian-credit set, which cannot be built
offline here, so this runs its setup on scikit-learn's breast-cancer set instead
(``datasets.load("breast_cancer")``: 426 train / 143 test rows, 30 standardised features): an MLP
30-64(ReLU)-1, Bernoulli likelihood, the same N(0, 1) prior on every weight (biases are point
estimates) for all methods. Reference numbers on australian (REFERENCES.md section 5): test
log-loss BBB 0.588, Vadam 0.373, VOGN 0.382.

Methods (``DRAWS`` posterior draws for the predictive, same epochs and lr for a batch size):

VADAM and VOGN start at the prior and keep a constant step, as published (``PUBLISHED_VADAM``;
``fit``'s defaults start narrower and decay the step).

* ``vadam_b1``: ``fit(method="vadam")``, batch size 1 (squared per-example gradients), lr 1e-3,
  20 epochs.
* ``vogn_b32``: ``fit(method="vadam")``, batch 32 with per-example squared gradients, lr 1e-2,
  200 epochs (VADAM's precision is not bias-corrected: ``s`` needs ~1/(1 - beta2) = 1000 steps
  to warm up, so short runs give too-wide posteriors).
* ``bbb_b32`` / ``bbb_b1``: ``fit(method="svi")``, mean-field Gaussian guide, Adam, analytic KL,
  batch 32 (lr 1e-2, 200 epochs) / batch 1 (lr 1e-3, 20 epochs).

Writes benchmarks/results/vadam_vs_bbb.json (rows: method, seed, batch_size, epochs,
test_log_loss, test_accuracy, seconds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import print_table, write_results

import pyro_sparse_bnn as psb

DRAWS = 100
PUBLISHED_VADAM = {"prec_init": 1.0, "lr_schedule": "constant"}
"""The published algorithm's start (posterior = prior) and constant step, not ``fit``'s defaults."""
REFERENCE_AUSTRALIAN = {"bbb": 0.588, "vadam": 0.373, "vogn": 0.382}


def make_model(seed: int) -> psb.SparseBNN:
    torch.manual_seed(seed)
    return psb.SparseBNN(psb.mlp([30, 64, 1]), psb.priors.Normal(1.0), psb.likelihoods.Bernoulli())


def run(method: str, seed: int, epochs: int, data: tuple) -> dict:
    x, y, x_test, y_test = data
    batch = 1 if method.endswith("_b1") else 32
    lr = 1e-3 if batch == 1 else 1e-2
    common = {"epochs": epochs, "lr": lr, "seed": seed, "progress": False}
    common["num_posterior_samples"] = DRAWS
    start = time.perf_counter()
    if method.startswith("bbb"):
        result = psb.fit(  # Bayes by backprop as published: no KL warm-up
            make_model(seed), x, y, method="svi", batch_size=batch, kl_warmup=0, **common
        )
    else:
        result = psb.fit(make_model(seed), x, y, method="vadam", batch_size=batch,
                         **common, **PUBLISHED_VADAM)  # fmt: skip
    seconds = time.perf_counter() - start
    metrics = result.evaluate(x_test, y_test)
    return {
        "method": method,
        "seed": seed,
        "batch_size": batch,
        "lr": lr,
        "epochs": epochs,
        "test_log_loss": metrics["nll"],
        "test_accuracy": metrics["accuracy"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 seed, 5 / 40 epochs")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = psb.datasets.load("breast_cancer", split="train", seed=0)
    x_test, y_test = psb.datasets.load("breast_cancer", split="test", seed=0)
    data = (x, y, x_test, y_test)
    seeds = range(1 if args.quick else args.seeds)
    epochs = {"vadam_b1": 20, "vogn_b32": 200, "bbb_b32": 200, "bbb_b1": 20}
    if args.quick:
        epochs = {"vadam_b1": 5, "vogn_b32": 40, "bbb_b32": 40, "bbb_b1": 5}
    rows = []
    for method, n_epochs in epochs.items():
        for seed in seeds:
            rows.append(run(method, seed, n_epochs, data))
            print_table(rows[-1:], list(rows[-1]))
    summary = []
    for method in epochs:
        mine = [r for r in rows if r["method"] == method]
        losses = [r["test_log_loss"] for r in mine]
        summary.append(
            {
                "method": method,
                "epochs": epochs[method],
                "test_log_loss_mean": statistics.mean(losses),
                "test_log_loss_sd": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                "test_accuracy_mean": statistics.mean(r["test_accuracy"] for r in mine),
                "seconds_mean": statistics.mean(r["seconds"] for r in mine),
            }
        )
    print()
    print_table(summary, list(summary[0]))
    print(f"reference (australian, Vadam paper): {REFERENCE_AUSTRALIAN}")
    path = write_results(
        "vadam_vs_bbb",
        rows,
        seeds=list(seeds),
        data_split="datasets.load('breast_cancer', split='train'|'test', seed=0): 426 / 143",
        network="30-64(ReLU)-1, Bernoulli, Normal(0, 1) prior on weights, point-estimate biases",
        summary=summary,
        reference_australian=REFERENCE_AUSTRALIAN,
        note="australian-credit (the paper's set) cannot be built offline here",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
