"""VADAM-ARD on the thesis' synthetic ARD regression: 10 features + bias = 11 weights under ARD.

    python benchmarks/ard_regression.py [--quick] [--seed 0]

Data: ``X ~ U(0, 1)``, 100 rows x 10 features, a column of ones for the bias, noise sd 0.5. The
thesis' own true coefficients are not in our references; we use four relevant features
(1.5, -1.0, 0.75, -0.5), six zeros and a bias of 1.0. The model is a hand-written Pyro model with
an ARD prior on the 11-vector ``w``; both VADAM-ARD variants (``gamma``: mean-field optimum,
``thesis``: the thesis code's update) run with VOGN gradients, full batch. A weight survives at
threshold ``k`` when ``|mu| > k * sigma``. The OLS z-score of each weight is printed alongside.

Writes benchmarks/results/ard_regression.json (rows: variant, weight, true, mu, sigma, psi,
relevance, ols_z, kept_k1, kept_k2, kept_k3).
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from _common import print_table, write_results
from torch import Tensor

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.vadam import ARDOptions

TRUE = [1.5, -1.0, 0.75, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # last: the bias
NOISE = 0.5
N = 100


def simulate(seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(N, 10, generator=gen, dtype=torch.float64)
    x = torch.cat([x, torch.ones(N, 1, dtype=torch.float64)], 1)
    y = x @ torch.tensor(TRUE, dtype=torch.float64)
    return x, y + NOISE * torch.randn(N, generator=gen, dtype=torch.float64)


PRIOR = psb.priors.ARD().double()


def model(x: Tensor, y: Tensor | None = None) -> Tensor:
    w = PRIOR.sample("w", (x.shape[1],))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, NOISE), obs=y)


def ols_z(x: Tensor, y: Tensor) -> Tensor:
    """OLS estimate over its standard error with the known noise sd."""
    cov = NOISE**2 * torch.linalg.inv(x.T @ x)
    return torch.linalg.solve(x.T @ x, x.T @ y) / cov.diagonal().sqrt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1000 epochs instead of 4000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = 1000 if args.quick else 4000
    x, y = simulate(args.seed)
    z = ols_z(x, y)
    rows = []
    for variant in ("gamma", "thesis"):
        start = time.perf_counter()
        result = psb.fit(
            model, x, y, method="vadam", ard=ARDOptions(variant), epochs=epochs, lr=0.05,
            seed=args.seed, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        info = result.info
        mu, sigma, psi = info["mu"]["w"], info["sigma"]["w"], info["prior_precision"]["w"]
        for j in range(len(TRUE)):
            rows.append(
                {
                    "variant": variant,
                    "weight": "bias" if j == len(TRUE) - 1 else f"x{j}",
                    "true": TRUE[j],
                    "mu": float(mu[j]),
                    "sigma": float(sigma[j]),
                    "psi": float(psi[j]),
                    "relevance": float(mu[j].abs() / sigma[j]),
                    "ols_z": float(z[j]),
                    **{f"kept_k{k}": bool(mu[j].abs() > k * sigma[j]) for k in (1, 2, 3)},
                    "seconds": seconds,
                }
            )
    columns = ["variant", "weight", "true", "mu", "sigma", "psi", "relevance", "ols_z"]
    print_table(rows, [*columns, "kept_k1", "kept_k3"])
    for variant in ("gamma", "thesis"):
        kept = [r["weight"] for r in rows if r["variant"] == variant and r["kept_k3"]]
        print(f"{variant}: survive |mu| > 3 sigma: {kept}")
    path = write_results(
        "ard_regression",
        rows,
        seed=args.seed,
        data_split=f"simulated: X ~ U(0,1) {N} x 10 + bias column, noise sd {NOISE}, all rows",
        true_weights=TRUE,
        epochs=epochs,
        lr=0.05,
        gradients="VOGN (per-example), full batch",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
