"""SGLD-SA beyond the paper's one simulation: a variant of the large-p-small-n regression over
five data draws, with and without the recommended inclusion pruning.

    python benchmarks/sgld_sa_draws.py [--quick] [--draws 5]

Data (``datasets.large_p_small_n``): n = 80 train + 100 test rows, p = 400 AR(1) features with
correlation 0.8 (the paper: 100, 1000, 0.6), noise variance 2 (the paper: 3), beta = (~3, ~2, ~1,
0, ...); data seeds 10, 11, ... Each fit is the paper's SGLD-SA (SSGL prior v0 = 0.1, v1 = 10,
a = 1, b = p, nu = lambda = 1; SGLD step 1e-3 k^(-1/3); 8 chains, 4000 burn-in iterations, 200
draws thinned by 20). ``pruned`` adds ``pruning=InclusionPruning()``: at the end of warm-up the
weights that every chain excludes (rho <= 0.5) are zeroed, unless their late warm-up
states stay away from zero (undecided).

Reported per fit: the SA noise estimate sigma per chain against the truth sqrt(2), the true and
false variables in the median-probability model (chain-averaged rho > 0.5) and the test MSE of
the posterior predictive mean. Writes benchmarks/results/sgld_sa_draws.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import print_table, write_results
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.sgmcmc import InclusionPruning, PolynomialDecay

N, P, RHO, NOISE_VAR = 80, 400, 0.8, 2.0


def run(seed: int, pruned: bool, burn_in: int) -> dict:
    data = psb.datasets.large_p_small_n(
        n_train=N, n_test=100, p=P, rho=RHO, noise_var=NOISE_VAR, seed=seed
    )
    net = nn.Sequential(nn.Linear(P, 1, bias=False))
    bnn = psb.SparseBNN(net, psb.priors.Normal(), psb.likelihoods.Gaussian(noise_prior_scale=2.0))
    start = time.perf_counter()
    fit = psb.fit(
        bnn, data.X_train, data.y_train, method="sgld_sa",
        step_size=PolynomialDecay(1e-3, power=1 / 3), num_samples=200, warmup=burn_in, thin=20,
        num_chains=8, init={"0.weight": torch.zeros(1, P)}, seed=seed, progress=False,
        pruning=InclusionPruning() if pruned else None,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    included = fit.info["inclusion"]["0.weight"].reshape(-1)
    truth = data.beta != 0
    sigma = fit.info["sigma"] / NOISE_VAR**0.5
    prediction = fit.predict(data.X_test)["mean"]
    return {
        "recipe": "pruned" if pruned else "unpruned",
        "data_seed": seed,
        "sigma_over_truth_min": float(sigma.min()),
        "sigma_over_truth_max": float(sigma.max()),
        "n_true_included": int((included & truth).sum()),
        "n_false_included": int((included & ~truth).sum()),
        "test_mse": float(((prediction - data.y_test) ** 2).mean()),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1000 burn-in iterations")
    parser.add_argument("--draws", type=int, default=5, help="data draws (seeds 10, 11, ...)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    burn_in = 1000 if args.quick else 4000
    seeds = range(10, 10 + args.draws)
    rows = [run(seed, pruned, burn_in) for pruned in (True, False) for seed in seeds]
    print_table(rows, list(rows[0]))
    for recipe in ("pruned", "unpruned"):
        mine = [r for r in rows if r["recipe"] == recipe]
        low = min(r["sigma_over_truth_min"] for r in mine)
        high = max(r["sigma_over_truth_max"] for r in mine)
        print(f"{recipe}: sigma / truth over all chains and draws in [{low:.2f}, {high:.2f}]")
    write_results(
        "sgld_sa_draws" + ("_quick" if args.quick else ""),
        rows,
        data=f"datasets.large_p_small_n(n_train={N}, n_test=100, p={P}, rho={RHO}, "
        f"noise_var={NOISE_VAR}, seed=10..{9 + args.draws})",
        warmup=burn_in,
    )


if __name__ == "__main__":
    main()
