"""NUTS speed on sparse models: Pyro's stock NUTS, this package's fast path, and NumPyro.

    python benchmarks/nuts_speed.py [--quick] [--skip-stock] [--skip-numpyro]
                                    [--models leaf iris converging]

Part ``iris``: iris train split (112 rows), a 4-8(ReLU)-3 network, non-centred Horseshoe(0.1)
weights (``w = z * lambda * tau``), Normal(0, 1) biases, Categorical likelihood; 125
unconstrained dimensions. Every method runs NUTS with target acceptance 0.8, maximum tree depth
10, a diagonal mass matrix adapted in Stan's windows, and starts each chain from Pyro's and
NumPyro's default ``uniform(-2, 2)`` in unconstrained space; one thread each
(``torch.set_num_threads(1)``, XLA single-threaded).

* ``psbnn``: ``fit_mcmc`` at its defaults (traced potential, compiled once the run is long
  enough), 4 chains x (500 warm-up + 500 draws), all chains batched in lockstep, seeds 0-2;
* ``numpyro``: NumPyro's NUTS, 4 chains x (500 + 500), ``chain_method="sequential"`` (one CPU
  device), seeds 0-2, skipped if NumPyro is not installed (``pip install -e ".[benchmarks]"``);
* ``stock_pyro``: ``fit_mcmc(backend="pyro")`` (Pyro's NUTS kernel), far too slow for the full
  run here: 1 chain x (100 + 100); ``--skip-stock`` keeps its stored row.

``seconds`` is wall time including compilation (Inductor, XLA). ``min_ess_bulk`` is the smallest
bulk ESS (ArviZ, rank-normalised) over all sampled parameters, ``min_ess_per_s`` divides it by the
wall time; ``leapfrogs_per_s`` counts gradient evaluations of all chains (warm-up included) per
second. A second model for scale: digits (1347 rows) 64-100-10, 14,120 dimensions, ``psbnn``
only with a short run (trees capped at depth 6), and the per-gradient cost of Pyro's potential.

Steady state and fixed cost (``psbnn`` and ``numpyro`` rows): ``gradients_per_cpu_s_steady``
is the adapted sampler's throughput, for ``psbnn`` over its sampling iterations
(``fit.info["sampling_cpu_seconds"]``: warm-up, tracing and compilation are done by then), for
``numpyro`` from two more sampling runs continued from the first one's end (1/5 and 5 times
the draws for the converging models, 1/5 and 3/5 for iris; their draws are not kept): NumPyro with
sequential chains compiles its sampling loop anew for every chain of every run, and the
difference of the two runs leaves that out. ``fixed_seconds`` is the run's CPU seconds less its
gradients at that rate (set-up, tracing, compilation, XLA's included).

Part ``converging``: two sparse linear models on which both samplers should mix (the rows say
where they did not), so ESS per CPU second decides something. Both samplers run the same
hand-written model, a non-centred regularised horseshoe (global scale
``p0 / (p - p0) * s / sqrt(n)`` with ``p0 = 3`` and ``s`` 2 for logits, 1 for the standardised
regression; slab ``InverseGamma(2, 2 * 2^2)``, local ``HalfCauchy(1)``, intercept ``N(0, 5)``,
regression noise ``HalfNormal(1)``): ``breast_cancer_logistic_rhs`` (30 features, 427 rows) and
``diabetes_linear_rhs`` (10 features, 331 rows), 4 chains, target acceptance 0.99 (at 0.95 both
samplers diverged on the diabetes model), uniform initialisation, seeds 0-2, 500 warm-up
iterations and 500 draws per chain; ``psbnn`` is ``fit_mcmc`` at its defaults, ``numpyro``
NumPyro's NUTS with sequential chains. ``gradients_per_cpu_s`` counts every leapfrog (warm-up
included) per CPU second of the whole run; ``min_ess_per_cpu_s`` divides the smallest bulk ESS
by those CPU seconds (``os.times``: every thread of the process and its finished child
processes, which is where Inductor's C++ compiler runs; Inductor compiles with one thread,
``torch._inductor.config.compile_threads = 1``).

Part ``leaf``: CPU milliseconds per leaf of a NUTS subtree, 4 chains, for the traced step and
the compiled one, and the seconds the compilation takes (the first call): the break-even behind
``fit_mcmc``'s decision to compile (``infer.mcmc.run.COMPILE_FROM_LEAVES``).

Writes benchmarks/results/nuts_speed.json. A run of some parts keeps the stored rows of the
others.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import RESULTS, print_table, write_results

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.mcmc import Sampler, fit_mcmc
from pyro_sparse_bnn.infer.potential import FlatPotential

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its child processes that have ended (compilers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


SEED = 0
GLOBAL_SCALE = 0.1
COLUMNS = [
    "model", "method", "seed", "chains", "warmup", "samples", "seconds", "min_ess_bulk",
    "min_ess_per_s", "max_rhat", "divergences", "leapfrogs_per_s", "gradients_per_cpu_s_steady",
    "fixed_seconds", "ess_per_s_vs_stock",
]  # fmt: skip
LEAF_COLUMNS = [
    "model", "dim", "traced_ms_per_leaf", "compiled_ms_per_leaf", "leaves_per_call",
    "compile_seconds", "break_even_leaves",
]  # fmt: skip
CONVERGING_COLUMNS = [
    "model", "method", "seed", "cpu_seconds", "min_ess_bulk", "max_rhat", "divergences",
    "gradients_per_cpu_s", "gradients_per_cpu_s_steady", "fixed_seconds", "min_ess_per_cpu_s",
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


def run_psbnn(
    sizes: list[int], x, y, samples: int, *, chains: int, warmup: int, depth: int, seed: int
) -> dict:
    start, cpu = time.perf_counter(), cpu_seconds()
    fit = fit_mcmc(
        bnn(sizes), x, y, num_chains=chains, warmup=warmup, num_samples=samples, init="uniform",
        max_tree_depth=depth, seed=seed, progress=False,
    )  # fmt: skip
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    steps = int(fit.info["leapfrog_steps"].sum())
    n_steps = fit.sample_stats["n_steps"].double()
    lockstep = float(n_steps.sum() / (n_steps.max(0).values.sum() * chains))
    return {
        "method": "psbnn",
        "seed": seed,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "steady": steady_psbnn(fit),
        "compiled": fit.info["compiled"],
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


def run_numpyro(
    sizes: list[int], x, y, samples: int, *, chains: int, warmup: int, seed: int
) -> dict:
    import jax
    from numpyro.infer import MCMC, NUTS

    start, cpu = time.perf_counter(), cpu_seconds()
    mcmc = MCMC(
        NUTS(numpyro_model(sizes)), num_warmup=warmup, num_samples=samples, num_chains=chains,
        chain_method="sequential", progress_bar=False,
    )  # fmt: skip
    xj, yj = jax.numpy.asarray(x.numpy()), jax.numpy.asarray(y.numpy())
    mcmc.warmup(jax.random.PRNGKey(seed), xj, yj, extra_fields=("num_steps",), collect_warmup=True)
    warm_steps = int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    mcmc.run(mcmc.post_warmup_state.rng_key, xj, yj, extra_fields=("num_steps", "diverging"))
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    extra = mcmc.get_extra_fields()
    steps = warm_steps + int(np.asarray(extra["num_steps"]).sum())
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    return {
        "method": "numpyro",
        "seed": seed,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "steady": steady_numpyro(mcmc, xj, yj, draws=(samples // 5, 3 * samples // 5)),
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


# -- converging models: the same regularised-horseshoe linear model in both samplers --------------

CONVERGING = {"breast_cancer_logistic_rhs": "breast_cancer", "diabetes_linear_rhs": "diabetes"}
CONVERGING_SEEDS = (0, 1, 2)
IRIS_SEEDS = (0, 1, 2)
P0, SLAB_SCALE, TARGET_ACCEPT = 3, 2.0, 0.99


def global_scale(x: torch.Tensor, logistic: bool) -> float:
    n, p = x.shape
    return P0 / (p - P0) * (2.0 if logistic else 1.0) / n**0.5


def pyro_rhs(tau0: float, logistic: bool) -> Callable:
    import pyro
    import pyro.distributions as dist

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        p = x.shape[1]
        tau = pyro.sample("tau", dist.HalfCauchy(x.new_tensor(tau0)))
        lam = pyro.sample("lam", dist.HalfCauchy(x.new_ones(p)).to_event(1))
        c2 = pyro.sample("c2", dist.InverseGamma(x.new_tensor(2.0), 2.0 * SLAB_SCALE**2))
        z = pyro.sample("z", dist.Normal(x.new_zeros(p), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 5.0))
        f = x @ (z * tau * (c2 * lam**2 / (c2 + tau**2 * lam**2)).sqrt()) + b
        if logistic:
            likelihood = dist.Bernoulli(logits=f)
        else:
            likelihood = dist.Normal(f, pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0))))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", likelihood, obs=y)

    return model


def numpyro_rhs(tau0: float, logistic: bool) -> Callable:
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    def model(x: Any, y: Any) -> None:
        p = x.shape[1]
        tau = numpyro.sample("tau", nd.HalfCauchy(tau0))
        lam = numpyro.sample("lam", nd.HalfCauchy(jnp.ones(p)).to_event(1))
        c2 = numpyro.sample("c2", nd.InverseGamma(2.0, 2.0 * SLAB_SCALE**2))
        z = numpyro.sample("z", nd.Normal(jnp.zeros(p), 1.0).to_event(1))
        b = numpyro.sample("b", nd.Normal(0.0, 5.0))
        f = x @ (z * tau * jnp.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))) + b
        if logistic:
            likelihood = nd.Bernoulli(logits=f)
        else:
            likelihood = nd.Normal(f, numpyro.sample("sigma", nd.HalfNormal(1.0)))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", likelihood, obs=y)

    return model


def sample_psbnn(model: Callable, x, y, samples: int, seed: int) -> dict:
    start = cpu_seconds()
    fit = fit_mcmc(
        model, x, y, num_chains=4, warmup=500, num_samples=samples, init="uniform",
        target_accept=TARGET_ACCEPT, seed=seed, progress=False,
    )  # fmt: skip
    return {
        "cpu_seconds": cpu_seconds() - start,
        "leapfrogs": int(fit.info["leapfrog_steps"].sum()),
        "steady": steady_psbnn(fit),
        "divergences": fit.info["divergences"],
        "compiled": fit.info["compiled"],
        "draws": {k: v.numpy() for k, v in fit.samples.items()},
    }


def sample_numpyro(model: Callable, x, y, samples: int, seed: int) -> dict:
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_uniform

    start = cpu_seconds()
    kernel = NUTS(model, target_accept_prob=TARGET_ACCEPT, init_strategy=init_to_uniform)
    mcmc = MCMC(kernel, num_warmup=500, num_samples=samples, num_chains=4,
                chain_method="sequential", progress_bar=False)  # fmt: skip
    xj, yj = jax.numpy.asarray(x.numpy()), jax.numpy.asarray(y.numpy())
    mcmc.warmup(jax.random.PRNGKey(seed), xj, yj, extra_fields=("num_steps",), collect_warmup=True)
    warm = int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    mcmc.run(mcmc.post_warmup_state.rng_key, xj, yj, extra_fields=("num_steps", "diverging"))
    cpu = cpu_seconds() - start
    extra = mcmc.get_extra_fields()
    run = {
        "cpu_seconds": cpu,
        "leapfrogs": warm + int(np.asarray(extra["num_steps"]).sum()),
        "divergences": int(np.asarray(extra["diverging"]).sum()),
        "draws": {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()},
    }
    return run | {"steady": steady_numpyro(mcmc, xj, yj, draws=(samples // 5, 5 * samples))}


def steady_psbnn(fit: psb.FitResult) -> float:
    """Gradients per CPU second of the sampling iterations (after warm-up and compilation)."""
    return float(fit.sample_stats["n_steps"].sum()) / fit.info["sampling_cpu_seconds"]


def steady_numpyro(mcmc: Any, *data: Any, draws: tuple[int, int]) -> float:
    """Gradients per CPU second of steady-state sampling: two more sampling runs from the first
    one's end, of ``draws`` draws per chain and one seed, so the longer repeats the shorter and
    adds draws. With sequential chains NumPyro compiles its sampling loop anew for every chain
    of every run (seconds each); the difference of the two runs leaves that out."""
    state, counts = mcmc.last_state, []
    for n in draws:
        mcmc.num_samples, mcmc.post_warmup_state = n, state
        start = cpu_seconds()
        mcmc.run(state.rng_key, *data, extra_fields=("num_steps",))
        seconds = cpu_seconds() - start
        counts.append((int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum()), seconds))
    (short, short_seconds), (long, long_seconds) = counts
    return (long - short) / (long_seconds - short_seconds)


def steady_and_fixed(run: dict) -> dict:
    """``run`` with its steady-state throughput (``steady``: gradients per CPU second of the
    adapted, compiled sampler) and its fixed cost: its CPU seconds less its gradients at that
    rate (set-up, tracing, compilation, warm-up's slower start)."""
    steady = run.pop("steady")
    return run | {
        "gradients_per_cpu_s_steady": steady,
        "fixed_seconds": run["cpu_seconds"] - run["leapfrogs"] / steady,
    }


def converging_rows(quick: bool, numpyro: bool) -> list[dict]:
    samplers = {"psbnn": (sample_psbnn, pyro_rhs)}
    if numpyro:
        samplers["numpyro"] = (sample_numpyro, numpyro_rhs)
    samples = 100 if quick else 500
    rows = []
    for name, data in CONVERGING.items():
        logistic = data == "breast_cancer"
        x, y = psb.datasets.load(data, split="train", seed=SEED)
        y = y.float() if logistic else y
        tau0 = global_scale(x, logistic)
        for method, (sample, build) in samplers.items():
            for seed in CONVERGING_SEEDS[:1] if quick else CONVERGING_SEEDS:
                run = steady_and_fixed(sample(build(tau0, logistic), x, y, samples, seed))
                row = {
                    "model": name, "method": method, "seed": seed, "chains": 4, "warmup": 500,
                    "samples": samples, "cpu_seconds": run["cpu_seconds"],
                    "leapfrogs": run["leapfrogs"], "divergences": run["divergences"],
                    "gradients_per_cpu_s": run["leapfrogs"] / run["cpu_seconds"],
                    "gradients_per_cpu_s_steady": run["gradients_per_cpu_s_steady"],
                    "fixed_seconds": run["fixed_seconds"], **diagnostics(run["draws"]),
                }  # fmt: skip
                if "compiled" in run:
                    row["compiled"] = run["compiled"]
                row["min_ess_per_cpu_s"] = row["min_ess_bulk"] / row["cpu_seconds"]
                rows.append(row)
                print(f"{name} {method} seed {seed}: {row['cpu_seconds']:.0f} CPU s", flush=True)
    return rows


def iris_rows(args: argparse.Namespace) -> list[dict]:
    """The iris horseshoe BNN (stock Pyro, psbnn, NumPyro) and the digits net for scale."""
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
    elif not quick and (stored := stored_rows(lambda r: r["method"] == "stock_pyro")):
        rows.append(stored[0] | {"stored": True})  # its 40 minutes are not rerun
    for seed in IRIS_SEEDS[:1] if quick else IRIS_SEEDS:
        psbnn = run_psbnn(sizes, x, y, samples, chains=chains, warmup=warmup, depth=10, seed=seed)
        rows.append({**base, "chains": chains, "warmup": warmup, "samples": samples,
                     **steady_and_fixed(psbnn)})  # fmt: skip
        if has_numpyro(args):
            numpyro = run_numpyro(sizes, x, y, samples, chains=chains, warmup=warmup, seed=seed)
            rows.append({**base, "chains": chains, "warmup": warmup, "samples": samples,
                         **steady_and_fixed(numpyro)})  # fmt: skip
    for row in rows:
        row["min_ess_per_s"] = row["min_ess_bulk"] / row["seconds"]
    if rows[0]["method"] == "stock_pyro":
        for row in rows:
            row["ess_per_s_vs_stock"] = row["min_ess_per_s"] / rows[0]["min_ess_per_s"]
    xd, yd = psb.datasets.load("digits", split="train", seed=SEED)
    digits = [64, 100, 10]
    d_chains, d_warm, d_samples = (4, 5, 5) if quick else (4, 100, 100)
    row = {"model": "digits_64_100_10_horseshoe", "max_tree_depth": 6, "chains": d_chains,
           "warmup": d_warm, "samples": d_samples,
           **steady_and_fixed(run_psbnn(digits, xd, yd, d_samples, chains=d_chains,
                                        warmup=d_warm, depth=6, seed=SEED))}  # fmt: skip
    row["min_ess_per_s"] = row["min_ess_bulk"] / row["seconds"]
    row["pyro_gradient_ms"] = 1e3 * pyro_gradient_seconds(digits, xd, yd, 3 if quick else 20)
    row["note"] = "short run for scale: not converged; compare the gradient throughput"
    rows.append(row)
    return rows


def has_numpyro(args: argparse.Namespace) -> bool:
    if args.skip_numpyro:
        return False
    if importlib.util.find_spec("numpyro") is None:
        print('NumPyro not installed (pip install -e ".[benchmarks]"): skipped')
        return False
    return True


def leaf_rows(args: argparse.Namespace) -> list[dict]:
    """CPU milliseconds per leaf of a NUTS subtree (4 chains) traced and compiled, and the
    seconds the compilation takes: where ``run.COMPILE_FROM_LEAVES`` comes from."""
    x, y = psb.datasets.load("breast_cancer", split="train", seed=SEED)
    xi, yi = psb.datasets.load("iris", split="train", seed=SEED)
    models = {
        "breast_cancer_logistic_rhs": (pyro_rhs(global_scale(x, True), True), x, y.float()),
        "iris_4_8_3_horseshoe": (bnn([4, 8, 3]), xi, yi),
    }
    calls, rounds = (20, 3) if args.quick else (300, 7)
    rows = []
    for name, (model, x, y) in models.items():
        flat = FlatPotential(model, (x, y), num_chains=4)
        z = 0.3 * torch.randn(4, flat.dim, generator=torch.Generator().manual_seed(SEED))
        pe, grad = flat.potential_and_grad(z)
        step, inverse_mass, u = torch.full_like(pe, 0.01), torch.ones_like(z), torch.rand(2, 4)
        start = Sampler._start(z, torch.randn_like(z), grad, pe, torch.ones_like(pe).bool())
        samplers = {}
        for compiled in (False, True):
            samplers[compiled] = Sampler(flat.potential_and_grad, num_chains=4, dim=flat.dim,
                                         seeds=range(4), like=z, compile=compiled)  # fmt: skip
        cpu = cpu_seconds()  # the compilation happens on the first call
        samplers[True]._advance(
            start, samplers[True]._checkpoints(z), step, inverse_mass, pe, u, 0, 5
        )
        compile_seconds = cpu_seconds() - cpu
        per_leaf: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):  # interleaved
            for compiled, sampler in samplers.items():
                stride, checkpoints = (
                    sampler.leaves_per_call if compiled else 1,
                    sampler._checkpoints(z),
                )
                cpu = time.process_time()  # fine-grained; no child process here
                for i in range(calls):
                    sampler._advance(
                        start, checkpoints, step, inverse_mass, pe, u, (i * stride) % 32, 5
                    )
                per_leaf[compiled].append((time.process_time() - cpu) / (calls * stride))
        traced, compiled = (1e3 * float(np.median(per_leaf[c])) for c in (False, True))
        rows.append({
            "model": name, "method": "psbnn", "part": "leaf", "dim": flat.dim, "chains": 4,
            "traced_ms_per_leaf": traced, "compiled_ms_per_leaf": compiled,
            "leaves_per_call": samplers[True].leaves_per_call, "compile_seconds": compile_seconds,
            "break_even_leaves": 1e3 * compile_seconds / (traced - compiled),
        })  # fmt: skip
    return rows


def part_of(row: dict) -> str:
    if row.get("part") == "leaf":
        return "leaf"
    return "converging" if row["model"] in CONVERGING else "iris"


def stored_rows(keep: Callable[[dict], bool]) -> list[dict]:
    """The rows of the stored ``nuts_speed.json`` that ``keep`` selects."""
    stored = RESULTS / "nuts_speed.json"
    rows = json.loads(stored.read_text())["rows"] if stored.exists() else []
    return [row for row in rows if keep(row)]


PARTS = {
    "leaf": leaf_rows,
    "iris": iris_rows,
    "converging": lambda a: converging_rows(a.quick, has_numpyro(a)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few iterations of everything")
    parser.add_argument("--skip-stock", action="store_true", help="leave out stock Pyro")
    parser.add_argument("--skip-numpyro", action="store_true", help="leave out NumPyro")
    parser.add_argument("--models", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch._inductor.config.compile_threads = 1  # one thread per side: XLA's is single-threaded
    rows = [row for part in args.models for row in PARTS[part](args)]
    if not args.quick:  # keep the stored rows of the parts not rerun
        rows += stored_rows(lambda r: part_of(r) not in args.models)
    for name, columns in (
        ("leaf", LEAF_COLUMNS),
        ("iris", COLUMNS),
        ("converging", CONVERGING_COLUMNS),
    ):
        if part := [r for r in rows if part_of(r) == name]:
            print_table(part, columns)
    path = write_results(
        "nuts_speed_quick" if args.quick else "nuts_speed", rows, seed=SEED,
        split="datasets.load(..., split='train', seed=0)", threads=1, quick=args.quick,
        models=args.models,
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
