"""SGHMC vs SGHMC-SA on a one-hidden-layer regression network: diabetes, RMSE over 5 splits.

    python benchmarks/uci_ssgl.py [--quick]

Data: scikit-learn's diabetes table (``datasets.load("diabetes", split, seed=s, test_size=0.1)``,
the UCI protocol's 90/10 split) for seeds s = 0..4; X and y are standardised with the training
rows' statistics, and RMSE is reported on that scale and in the original units of y.

Model: ``SparseBNN(mlp([10, 50, 1]), priors.Normal(1), likelihoods.Gaussian())`` with a latent
noise scale; the biases are point estimates (the SparseBNN default), fitted during burn-in.

* ``sghmc``: ``fit(method="sghmc")`` under that Normal(0, 1) prior.
* ``sghmc_sa``: ``fit(method="sghmc_sa")``: SSGL prior on the two weight matrices (one inclusion
  rate per layer, a shared sigma that is also the noise scale), v0 = 0.1, v1 = 10, a = 1,
  b = 10 (the SSGL reference code's UCI setting), nu = lambda = 1, SA weights
  min(0.1, 1000 / (100 + k)^0.7).

Both: learning rate 1e-5 (SGD-with-momentum form), momentum 0.9 (friction 0.1), batch 50,
temperature 1 (the reference code anneals the temperature towards 0, i.e. ends as an optimiser;
this benchmark samples the posterior), 4 chains. Predictions: posterior predictive mean.

Writes benchmarks/results/uci_ssgl.json (one row per method and split, plus a mean row each).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import print_table, write_results
from sklearn import datasets as sk_datasets

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.sgmcmc import SSGLPrior

SPLITS = 5
TEST_SIZE = 0.1


def y_scale(seed: int) -> float:
    """Standard deviation of y over the training rows (the factor back to original units)."""
    _, y_std = psb.datasets.load("diabetes", "all", seed=seed, test_size=TEST_SIZE)
    raw = sk_datasets.load_diabetes(return_X_y=True, scaled=False)[1]
    return float(np.polyfit(y_std.double().numpy(), raw, 1)[0])


def run(method: str, seed: int, args: argparse.Namespace) -> dict:
    X, y = psb.datasets.load("diabetes", "train", seed=seed, test_size=TEST_SIZE)
    X_test, y_test = psb.datasets.load("diabetes", "test", seed=seed, test_size=TEST_SIZE)
    bnn = psb.SparseBNN(psb.mlp([10, 50, 1]), psb.priors.Normal(1.0), psb.likelihoods.Gaussian())
    # sghmc_sa with b = 10 instead of the default b = p: fit_sgmcmc's SSGLPrior option
    options = {"prior": SSGLPrior("sa", b=10.0)} if method == "sghmc_sa" else {}
    sampler = "sghmc" if options else method
    start = time.perf_counter()
    fit = psb.fit(
        bnn, X, y, method=sampler, step_size=1e-5, friction=0.1, batch_size=50,
        num_chains=args.chains, warmup=args.burn_in, num_samples=args.draws, thin=args.thin,
        seed=seed, progress=False, **options,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    metrics = fit.evaluate(X_test, y_test)
    row = {
        "method": method,
        "split": seed,
        "rmse": metrics["rmse"],
        "rmse_original": metrics["rmse"] * y_scale(seed),
        "nll": metrics["nll"],
        "seconds": seconds,
        "n_train": len(X),
        "n_test": len(X_test),
    }
    if method == "sghmc_sa":
        included = sum(int(m.sum()) for m in fit.info["inclusion"].values())
        total = sum(m.numel() for m in fit.info["inclusion"].values())
        row |= {"included_fraction": included / total, "sigma": float(fit.info["sigma"].mean())}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 splits, 600 iterations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = 2 if args.quick else SPLITS
    args.chains = 4
    args.burn_in, args.draws, args.thin = (400, 100, 2) if args.quick else (2000, 250, 4)
    rows = []
    for method in ("sghmc", "sghmc_sa"):
        for seed in range(splits):
            rows.append(run(method, seed, args))
            print(f"{method} split {seed}: rmse {rows[-1]['rmse']:.3f}", flush=True)
    for method in ("sghmc", "sghmc_sa"):
        mine = [r for r in rows if r["method"] == method and r["split"] != "mean"]
        summary = {"method": method, "split": "mean"}
        for key in ("rmse", "rmse_original", "nll", "seconds"):
            values = np.array([r[key] for r in mine])
            summary[key] = float(values.mean())
            summary[f"{key}_sd"] = float(values.std(ddof=1))
        rows.append(summary)
    print_table(rows, ["method", "split", "rmse", "rmse_original", "nll", "seconds"])
    path = write_results(
        "uci_ssgl",
        rows,
        seed=list(range(splits)),
        data_split=f"datasets.load('diabetes', test_size={TEST_SIZE}, seed=s), s = 0..{splits - 1}",
        network="10-50-1 ReLU, biases point-estimated during burn-in",
        iterations=args.burn_in + args.draws * args.thin,
        chains=args.chains,
        quick=args.quick,
        torch_threads=1,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
