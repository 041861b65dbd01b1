"""ScaLP's claim on digits, and the Bayesian L1 factor against a lambda sweep.

Part 1 (width): a 64-h-10 ReLU network, initial width h in {100, 300, 1000, 2000}, 5 seeds, trained
as a MAP (``fit(method="svi", guide="map")``, Adam lr 0.01, batch 128, 30 epochs: a short budget
so the whole script stays near 15 minutes on 2 shared cores) under three priors with the same
penalty strength ``lam = 1/(9N)`` (the convention of ``penalties``; Wolinski reports the best lam
10-100x below the Bayesian 1/N):

* ``scalp``: ScaLP prior, profile ``fan_in`` on the input layer and ``inverse`` (sigma_k ∝ 1/k)
  on the output layer, scale 3 (= 1/sqrt(9));
* ``l2``: Glorot-consistent L2 (Normal priors with variance 9/P);
* ``group_lasso``: Glorot-consistent group lasso, rows of layer 0 and columns of layer 2.

Every method is then pruned the same way, ScaLP's rule: a hidden neuron goes when the mean |w| of
its outgoing weights is below 1e-3. ``final_width`` is what is left; ``width_at_1pp`` is the
smallest number of hidden neurons (largest outgoing norms first) that keeps the training accuracy
within 1 point of the unpruned network's, a threshold-free measure.

Part 2 (lambda): the L1 + magnitude-pruning baseline (``fit(method="l1")``) on 64-64-10, whose two
layers have the same Glorot L1 factor sqrt(2 * 64), so the Bayesian default is the scalar
``l1 = sqrt(128) / N``. The sweep multiplies it by 3 ... 1/1000 and picks the value with the best
validation NLL (20 % of the training split held out; N = the remaining 1078 rows).

    python benchmarks/scalp_width.py [--quick]

Writes benchmarks/results/scalp_width.json; rows carry ``experiment`` = ``width``,
``width_summary``, ``l1_lambda`` or ``l1_best``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from _common import print_table, write_results

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.penalties import Penalty, glorot_factor, glorot_penalties, penalty_priors
from pyro_sparse_bnn.priors import ScaLP
from pyro_sparse_bnn.prune import masked_network, scalp_prune
from pyro_sparse_bnn.sparsity import outgoing_norms

LAM_RATIO = 1 / 9  # lam * N for every method of part 1
THRESHOLD = 1e-3
L1_RATIOS = [3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]


def width_priors(method: str, net: torch.nn.Sequential, n: int) -> dict:
    lam, width = LAM_RATIO / n, net[0].out_features
    if method == "scalp":
        scale = 1 / math.sqrt(LAM_RATIO)
        return {"0": ScaLP("fan_in", scale), "2": ScaLP("inverse", scale)}
    if method == "l2":
        return penalty_priors(glorot_penalties(net, "l2", lam=lam), n_data=n)
    rows = glorot_factor("group_lasso", (width, 64), "out")
    columns = glorot_factor("group_lasso", (10, width), "in")
    penalties = {
        "0": Penalty("group_lasso", lam * rows, "out"),
        "2": Penalty("group_lasso", lam * columns, "in"),
    }
    return penalty_priors(penalties, n_data=n)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


def width_at_1pp(result: psb.FitResult, x: torch.Tensor, y: torch.Tensor) -> int:
    """Fewest hidden neurons (largest outgoing norms first) within 1 point of full accuracy."""
    params = {k: v.mean(0) for k, v in result.sample_posterior().items() if k.endswith("weight")}
    net = masked_network(result.model.net, params)
    with torch.no_grad():
        hidden = net[1](net[0](x))
        w2, b2 = net[2].weight, net[2].bias
        order = outgoing_norms(w2).argsort(descending=True)
        target = accuracy(hidden @ w2.T + b2, y) - 0.01
        lo, hi = 1, len(order)
        while lo < hi:  # binary search, assuming accuracy grows with the neurons kept
            mid = (lo + hi) // 2
            keep = order[:mid]
            if accuracy(hidden[:, keep] @ w2[:, keep].T + b2, y) >= target:
                hi = mid
            else:
                lo = mid + 1
    return lo


def run_width(method: str, width: int, seed: int, epochs: int, data: tuple) -> dict:
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    net = psb.mlp([64, width, 10])
    bnn = psb.SparseBNN(net, width_priors(method, net, len(y)), psb.likelihoods.Categorical())
    start = time.perf_counter()
    result = psb.fit(bnn, x, y, method="svi", guide="map", epochs=epochs, batch_size=128,
                     lr=0.01, kl_warmup=0, seed=seed, progress=False,
                     num_posterior_samples=1)  # fmt: skip
    seconds = time.perf_counter() - start
    pruned, _ = scalp_prune(result, THRESHOLD, sites=["2.weight"])
    with torch.no_grad():
        test_pruned = accuracy(pruned(x_test), y_test)
    return {
        "experiment": "width",
        "method": method,
        "initial_width": width,
        "seed": seed,
        "final_width": pruned[-1].in_features,
        "width_at_1pp": width_at_1pp(result, x, y),
        "test_accuracy": test_pruned,
        "test_accuracy_unpruned": result.evaluate(x_test, y_test)["accuracy"],
        "seconds": seconds,
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Per method: spread of the per-width mean final width across initial widths, against the
    spread across seeds (range over seeds, averaged over widths)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        by_width: dict[int, list[int]] = {}
        for r in rows:
            if r["method"] == method:
                by_width.setdefault(r["initial_width"], []).append(r["final_width"])
        means = {w: statistics.mean(v) for w, v in by_width.items()}
        seed_range = statistics.mean(max(v) - min(v) for v in by_width.values())
        width_range = max(means.values()) - min(means.values())
        out.append({
            "experiment": "width_summary",
            "method": method,
            **{f"mean_final_width_{w}": m for w, m in means.items()},
            "spread_across_widths": width_range,
            "spread_across_seeds": seed_range,
            "width_independent": width_range <= seed_range,
        })  # fmt: skip
    return out


def run_lambda(ratio: float, seed: int, epochs: int, data: tuple) -> dict:
    x_fit, y_fit, x_val, y_val, x_test, y_test = data
    n = len(y_fit)
    torch.manual_seed(seed)
    net = psb.mlp([64, 64, 10])
    bayes = {p.lam for p in glorot_penalties(net, "l1", lam=1 / n).values()}
    assert len(bayes) == 1, "both layers share the Glorot L1 factor sqrt(2 * 64)"
    bnn = psb.SparseBNN(net, psb.priors.Normal(), psb.likelihoods.Categorical())
    result = psb.fit(bnn, x_fit, y_fit, method="l1", l1=ratio * bayes.pop(), epochs=epochs,
                     batch_size=64, lr=1e-3, seed=seed, progress=False)  # fmt: skip
    val, test = result.evaluate(x_val, y_val), result.evaluate(x_test, y_test)
    return {
        "experiment": "l1_lambda",
        "method": "l1",
        "seed": seed,
        "lam_ratio": ratio,
        "l1": result.info["l1"],
        "val_nll": val["nll"],
        "val_accuracy": val["accuracy"],
        "test_accuracy": test["accuracy"],
        "compression": result.compression()["compression"],
    }


def lambda_data(seed: int) -> tuple:
    x, y = psb.datasets.load("digits", split="train")
    x_test, y_test = psb.datasets.load("digits", split="test")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(100 + seed))
    n_val = len(y) // 5
    val, fit = perm[:n_val], perm[n_val:]
    return x[fit], y[fit], x[val], y[val], x_test, y_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 widths, 2 seeds, 10 epochs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    widths = [100, 1000] if args.quick else [100, 300, 1000, 2000]
    seeds = range(2 if args.quick else 5)
    epochs = 10 if args.quick else 30
    x, y = psb.datasets.load("digits", split="train")
    data = (x, y, *psb.datasets.load("digits", split="test"))
    start = time.perf_counter()
    rows = [
        run_width(method, width, seed, epochs, data)
        for method in ("scalp", "l2", "group_lasso")
        for width in widths
        for seed in seeds
    ]
    print_table(rows, ["method", "initial_width", "seed", "final_width", "width_at_1pp",
                       "test_accuracy", "test_accuracy_unpruned", "seconds"])  # fmt: skip
    summary = summarise(rows)
    print_table(summary, list(summary[0]))
    ratios = [1.0, 0.1, 0.01] if args.quick else L1_RATIOS
    lam_seeds = range(1 if args.quick else 3)
    sweep = [
        run_lambda(r, s, 30 if args.quick else 100, lambda_data(s))
        for s in lam_seeds
        for r in ratios
    ]
    print_table(sweep, ["seed", "lam_ratio", "l1", "val_nll", "val_accuracy", "test_accuracy",
                        "compression"])  # fmt: skip
    best = []
    for s in lam_seeds:
        top = min((r for r in sweep if r["seed"] == s), key=lambda r: r["val_nll"])
        best.append({
            "experiment": "l1_best",
            "method": "l1",
            "seed": s,
            "best_lam_ratio": top["lam_ratio"],
            "bayes_over_best": 1 / top["lam_ratio"],
            "test_accuracy": top["test_accuracy"],
        })  # fmt: skip
    print_table(best, list(best[0]))
    write_results(
        "scalp_width" + ("_quick" if args.quick else ""),
        rows + summary + sweep + best,
        seed=list(seeds),
        data_split="digits: datasets.load split train (1347 rows) / test (450); lambda sweep "
        "holds out 20 % of train for validation",
        epochs=epochs,
        threshold=THRESHOLD,
        lam_ratio=LAM_RATIO,
        seconds=time.perf_counter() - start,
    )


if __name__ == "__main__":
    main()
