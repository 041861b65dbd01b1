"""SGHMC-SA with gradual magnitude pruning to 90 % sparsity vs the dense SGHMC net on MNIST-10k.

    python benchmarks/mnist_ssgl.py [--quick] [--seed 0]

Data: the 10,000-image MNIST test set read by ``datasets.load_mnist`` from
the copy shipped with the package, seeded 8,000 train / 2,000 test split, pixels in [0, 1].

Model: ``SparseBNN(mlp([784, 100, 10]), priors.Normal(1), likelihoods.Categorical())``; biases are
point estimates fitted during burn-in (the SparseBNN default).

* ``sghmc``: the dense net, ``fit(method="sghmc")`` under the Normal(0, 1) prior.
* ``sghmc_pruned``: the same sampler with gradual magnitude pruning (no SSGL prior): the ablation.
* ``sghmc_sa``: ``fit(method="sghmc_sa", pruning=MagnitudePruning(sparsity=0.9))``: SSGL prior with
  the default hyperparameters (v0 = 0.1, v1 = 10, a = 1, b = p per layer, classification form)
  and SA updates; each layer's smallest weights are zeroed at the rate
  s_k = 0.9 (1 - 0.99^(k / U)), U chosen so that s_k reaches 99 % of 0.9 at the end of burn-in,
  the mask refreshed every 10 iterations; pruned weights leave the SA counts.

All: learning rate 1e-5, momentum 0.9 (friction 0.1), batch 100, temperature 1, 2 chains.
Metrics: posterior predictive accuracy, NLL and ECE on the 2,000 test images; ``sparsity`` is
the fraction of weights that are exactly zero in a kept draw (averaged over draws; each draw is
one pruned network), ``sparsity_all_draws`` the fraction zero in every kept draw of a chain (the
mask moves a little between refreshes, so the average over draws is denser).

Writes benchmarks/results/mnist_ssgl.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import print_table, write_results

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.sgmcmc import MagnitudePruning

SIZES = [784, 100, 10]
WEIGHTS = ("0.weight", "2.weight")


def run(name: str, data: tuple, args: argparse.Namespace) -> dict:
    (X, y), (X_test, y_test) = data
    bnn = psb.SparseBNN(psb.mlp(SIZES), psb.priors.Normal(1.0), psb.likelihoods.Categorical())
    method = "sghmc_sa" if name == "sghmc_sa" else "sghmc"
    pruning = {} if name == "sghmc" else {"pruning": MagnitudePruning(sparsity=0.9)}
    start = time.perf_counter()
    fit = psb.fit(
        bnn, X, y, method=method, step_size=1e-5, friction=0.1, batch_size=100,
        num_chains=args.chains, warmup=args.burn_in, num_samples=args.draws, thin=args.thin,
        seed=args.seed, progress=False, **pruning,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    metrics = fit.evaluate(X_test, y_test)
    zero = {k: fit.samples[k] == 0 for k in WEIGHTS}
    total = sum(z[0, 0].numel() for z in zero.values())
    per_draw = sum(z.flatten(2).sum(-1) for z in zero.values()) / total
    return {
        "method": name,
        "accuracy": metrics["accuracy"],
        "nll": metrics["nll"],
        "ece": metrics["ece"],
        "sparsity": float(per_draw.mean()),
        "sparsity_all_draws": sum(int(z.all(dim=1).sum()) for z in zero.values())
        / (total * args.chains),
        **{f"sparsity_{k.split('.')[0]}": float(z.float().mean()) for k, z in zero.items()},
        "seconds": seconds,
        "iterations": args.burn_in + args.draws * args.thin,
        "compiled": fit.info["traced"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="600 iterations instead of 3000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.chains = 2
    args.burn_in, args.draws, args.thin = (400, 10, 20) if args.quick else (2000, 20, 50)
    data = (psb.datasets.load_mnist(split="train"), psb.datasets.load_mnist(split="test"))
    rows = []
    for name in ("sghmc", "sghmc_pruned", "sghmc_sa"):
        rows.append(run(name, data, args))
        print(f"{name}: accuracy {rows[-1]['accuracy']:.4f} in {rows[-1]['seconds']:.0f} s")
    columns = ["method", "accuracy", "nll", "ece", "sparsity", "sparsity_all_draws", "seconds"]
    print_table(rows, columns)
    path = write_results(
        "mnist_ssgl",
        rows,
        seed=args.seed,
        data_split="datasets.load_mnist(mnist10k): seeded 8000 train / 2000 test (seed 0)",
        network="784-100-10 ReLU MLP, biases point-estimated during burn-in",
        chains=args.chains,
        quick=args.quick,
        torch_threads=1,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
