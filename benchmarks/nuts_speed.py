"""NUTS speed on sparse BNNs: Pyro's stock NUTS, this package's fast path, and NumPyro.

    python benchmarks/nuts_speed.py [--quick] [--skip-stock] [--skip-numpyro]

Model (all three methods): iris train split (112 rows), a 4-8(ReLU)-3 network, non-centred
Horseshoe(0.1) weights (``w = z * lambda * tau``), Normal(0, 1) biases, Categorical likelihood;
125 unconstrained dimensions. Every method runs NUTS with target acceptance 0.8, maximum tree
depth 10, a diagonal mass matrix adapted in Stan's windows, and starts each chain from Pyro's and
NumPyro's default ``uniform(-2, 2)`` in unconstrained space; one thread each
(``torch.set_num_threads(1)``, XLA single-threaded).

* ``psbnn``: ``fit_mcmc(graph="compiled")``, 4 chains x (500 warm-up + 500 draws), all chains
  batched in lockstep in one process;
* ``numpyro``: NumPyro's NUTS, 4 chains x (500 + 500), ``chain_method="sequential"`` (one CPU
  device), skipped if NumPyro is not installed (``pip install -e ".[benchmarks]"``);
* ``stock_pyro``: ``fit_mcmc(backend="pyro")`` (Pyro's NUTS kernel), far too slow for the full
  run here: 1 chain x (100 + 100), reported with those settings.

Wall time includes compilation (torch.compile, XLA). ``min_ess_bulk`` is the smallest bulk ESS
(ArviZ, rank-normalised) over all sampled parameters, ``min_ess_per_s`` divides it by the wall
time; ``leapfrogs_per_s`` counts gradient evaluations of all chains (warm-up included) per second.
A second model for scale: digits (1347 rows) 64-100-10, 14,120 dimensions, ``psbnn`` only with a
short run (trees capped at depth 6), and the per-gradient cost of Pyro's potential on it.

Writes benchmarks/results/nuts_speed.json (rows: model, method, chains, warmup, samples,
max_tree_depth, seconds, min_ess_bulk, min_ess_per_s, max_rhat, divergences, leapfrogs,
leapfrogs_per_s, ess_per_s_vs_stock, note).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import print_table, write_results

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.mcmc import fit_mcmc

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

SEED = 0
GLOBAL_SCALE = 0.1
COLUMNS = [
    "model", "method", "chains", "warmup", "samples", "seconds", "min_ess_bulk", "min_ess_per_s",
    "max_rhat", "divergences", "leapfrogs_per_s", "ess_per_s_vs_stock",
]  # fmt: skip


def bnn(sizes: list[int]) -> psb.SparseBNN:
    torch.manual_seed(SEED)
    return psb.SparseBNN(
        psb.mlp(sizes),
        psb.priors.Horseshoe(GLOBAL_SCALE),
        psb.likelihoods.Categorical(),
        bias_prior=psb.priors.Normal(1.0),
    )


def diagnostics(draws: dict[str, np.ndarray]) -> dict[str, float]:
    """Smallest bulk ESS and largest R-hat over every scalar of the ``(chain, draw, ...)`` draws."""
    summary = psb.arviz.summary(
        psb.arviz.to_inference_data(posterior=draws), kind="diagnostics", round_to="none"
    )
    return {
        "min_ess_bulk": float(summary["ess_bulk"].min()),
        "max_rhat": float(summary["r_hat"].max()),
    }


def sampled_sites(fit: psb.FitResult) -> dict[str, np.ndarray]:
    """The sampled sites (decentred weights, scales, biases), not the deterministic weights."""
    return {k: v.numpy() for k, v in fit.samples.items() if not k.endswith(".weight")}


def run_psbnn(sizes: list[int], x, y, chains: int, warmup: int, samples: int, depth: int) -> dict:
    start = time.perf_counter()
    fit = fit_mcmc(
        bnn(sizes), x, y, num_chains=chains, warmup=warmup, num_samples=samples, init="uniform",
        max_tree_depth=depth, graph="compiled", seed=SEED, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    steps = int(fit.info["leapfrog_steps"].sum())
    n_steps = fit.sample_stats["n_steps"].double()
    lockstep = float(n_steps.sum() / (n_steps.max(0).values.sum() * chains))
    return {
        "method": "psbnn",
        "seconds": seconds,
        "divergences": fit.info["divergences"],
        "leapfrogs": steps,
        "leapfrogs_per_s": steps / seconds,
        "mean_tree_depth": float(fit.sample_stats["tree_depth"].double().mean()),
        "lockstep_efficiency": lockstep,
        **diagnostics(sampled_sites(fit)),
    }


def run_stock(sizes: list[int], x, y, warmup: int, samples: int) -> dict:
    model = bnn(sizes)
    calls = {"n": 0}

    def counted(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        calls["n"] += 1
        return model(x, y)

    start = time.perf_counter()
    fit = fit_mcmc(
        counted, x, y, num_chains=1, warmup=warmup, num_samples=samples, init="uniform",
        backend="pyro", seed=SEED, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    draws = sampled_sites(fit)
    return {
        "method": "stock_pyro",
        "seconds": seconds,
        "divergences": fit.info["divergences"],
        "leapfrogs": calls["n"],
        "leapfrogs_per_s": calls["n"] / seconds,
        "note": "model runs counted as leapfrogs (each gradient runs the model once)",
        **diagnostics(draws),
    }


def numpyro_model(sizes: list[int]) -> Callable:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    def model(x: Any, y: Any) -> None:
        h = x
        layers = list(itertools.pairwise(sizes))
        for i, (n_in, n_out) in enumerate(layers):
            tau = numpyro.sample(f"{i}_global", nd.HalfCauchy(GLOBAL_SCALE))
            lam = numpyro.sample(f"{i}_local", nd.HalfCauchy(jnp.ones((n_out, n_in))).to_event(2))
            z = numpyro.sample(f"{i}_z", nd.Normal(jnp.zeros((n_out, n_in)), 1.0).to_event(2))
            bias = numpyro.sample(f"{i}_bias", nd.Normal(jnp.zeros(n_out), 1.0).to_event(1))
            h = h @ (z * lam * tau).T + bias
            if i < len(layers) - 1:
                h = jax.nn.relu(h)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", nd.Categorical(logits=h), obs=y)

    return model


def run_numpyro(sizes: list[int], x, y, chains: int, warmup: int, samples: int) -> dict:
    import jax
    from numpyro.infer import MCMC, NUTS

    start = time.perf_counter()
    mcmc = MCMC(
        NUTS(numpyro_model(sizes)), num_warmup=warmup, num_samples=samples, num_chains=chains,
        chain_method="sequential", progress_bar=False,
    )  # fmt: skip
    xj, yj = jax.numpy.asarray(x.numpy()), jax.numpy.asarray(y.numpy())
    mcmc.warmup(jax.random.PRNGKey(SEED), xj, yj, extra_fields=("num_steps",), collect_warmup=True)
    warm_steps = int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    mcmc.run(mcmc.post_warmup_state.rng_key, xj, yj, extra_fields=("num_steps", "diverging"))
    seconds = time.perf_counter() - start
    extra = mcmc.get_extra_fields()
    steps = warm_steps + int(np.asarray(extra["num_steps"]).sum())
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    return {
        "method": "numpyro",
        "seconds": seconds,
        "divergences": int(np.asarray(extra["diverging"]).sum()),
        "leapfrogs": steps,
        "leapfrogs_per_s": steps / seconds,
        **diagnostics(draws),
    }


def pyro_gradient_seconds(sizes: list[int], x, y, repeats: int) -> float:
    """Seconds per gradient of Pyro's own potential (what each stock NUTS leapfrog costs)."""
    from pyro.infer.mcmc.util import initialize_model
    from pyro.ops.integrator import potential_grad

    params, potential_fn, _, _ = initialize_model(bnn(sizes), (x, y))
    potential_grad(potential_fn, params)
    start = time.perf_counter()
    for _ in range(repeats):
        potential_grad(potential_fn, params)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few iterations of everything")
    parser.add_argument("--skip-stock", action="store_true", help="leave out stock Pyro")
    parser.add_argument("--skip-numpyro", action="store_true", help="leave out NumPyro")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    x, y = psb.datasets.load("iris", split="train", seed=SEED)
    sizes = [4, 8, 3]
    chains, warmup, samples = (4, 40, 40) if quick else (4, 500, 500)
    stock_warmup, stock_samples = (10, 10) if quick else (100, 100)
    base = {"model": "iris_4_8_3_horseshoe", "max_tree_depth": 10}
    rows = []
    if not args.skip_stock:
        stock = run_stock(sizes, x, y, stock_warmup, stock_samples)
        rows.append({**base, "chains": 1, "warmup": stock_warmup, "samples": stock_samples,
                     **stock})  # fmt: skip
    fast = run_psbnn(sizes, x, y, chains, warmup, samples, depth=10)
    rows.append({**base, "chains": chains, "warmup": warmup, "samples": samples, **fast})
    if not args.skip_numpyro and importlib.util.find_spec("numpyro") is not None:
        rows.append({**base, "chains": chains, "warmup": warmup, "samples": samples,
                     **run_numpyro(sizes, x, y, chains, warmup, samples)})  # fmt: skip
    else:
        print("NumPyro not installed (pip install numpyro jax jaxlib): skipped")
    for row in rows:
        row["min_ess_per_s"] = row["min_ess_bulk"] / row["seconds"]
    if not args.skip_stock:
        for row in rows:
            row["ess_per_s_vs_stock"] = row["min_ess_per_s"] / rows[0]["min_ess_per_s"]
    xd, yd = psb.datasets.load("digits", split="train", seed=SEED)
    digits = [64, 100, 10]
    d_chains, d_warm, d_samples = (4, 5, 5) if quick else (4, 100, 100)
    row = {"model": "digits_64_100_10_horseshoe", "max_tree_depth": 6, "chains": d_chains,
           "warmup": d_warm, "samples": d_samples,
           **run_psbnn(digits, xd, yd, d_chains, d_warm, d_samples, depth=6)}  # fmt: skip
    row["min_ess_per_s"] = row["min_ess_bulk"] / row["seconds"]
    row["pyro_gradient_ms"] = 1e3 * pyro_gradient_seconds(digits, xd, yd, 3 if quick else 20)
    row["note"] = "short run for scale: not converged; compare the gradient throughput"
    rows.append(row)
    print_table(rows, COLUMNS)
    path = write_results(
        "nuts_speed", rows, seed=SEED, split="iris/digits train (datasets.load, seed 0)",
        threads=1, quick=quick,
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
