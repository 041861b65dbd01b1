"""Simulation-based calibration (Talts et al. 2018) of NUTS on the toolkit's shrinkage priors.

    python benchmarks/sbc.py [--quick] [--replications 100] [--seed 0]

Model: Bayesian linear regression ``y = X w + eps``, ``eps ~ N(0, 1)`` (known noise), ``n = 10``
rows, ``d = 2`` weights, ``X ~ N(0, 1)`` drawn once (seeded) and held fixed. The weights come from
the toolkit's prior inside a hand-written Pyro model, ``w = prior.sample("w", (2,))``, so the
check covers the prior's hierarchical sites (non-centred: ``w = w_decentered * s``) as well as the
sampler. Priors: ``Laplace(1)`` (``w_variance``), ``StudentT(df=1, scale=1)`` (``w_variance``) and
``Horseshoe(1)`` (``w_local_scale``, ``w_global_scale``), each at its defaults.

Each replication draws every latent site and ``y`` from the prior predictive, runs
``fit_mcmc`` (fast backend, NUTS, 4 chains x (100 warm-up + 50 draws), maximum tree depth 6,
random ``uniform`` starts), keeps every 2nd draw of each chain (``L = 99`` of the 100) and records,
for each scalar parameter (the two weights and every scale component), the rank of the true value
among the ``L`` draws: ``#{draws < truth}`` in ``0..L``. If the sampler and the prior code are
right, the ranks are uniform on ``0..L``; the ``L + 1 = 100`` rank values are pooled into 10 bins
and tested with ``scipy.stats.chisquare`` (expected ``N / 10`` per bin). ``ess_ratio`` is the
median over replications of ``ess_bulk / L`` (ArviZ bulk ESS of the unthinned draws over the kept
count): well below 1, the kept draws are autocorrelated, which piles ranks up at the ends (a U
shape) even for a correct sampler. The depth cap keeps NUTS exact and bounds the cost of the
horseshoe's small steps; thinning makes up for the slower mixing. ``--quick``: 20 replications,
4 x (100 + 25) draws, no thinning.

Writes benchmarks/results/sbc.json: one row per prior and parameter (``prior``, ``parameter``,
``p_value``, ``chi2``, ``replications``, ``bins``, ``counts``, ``draws``, ``thin``, ``ess_ratio``,
``divergent_replications``, ``divergences``, ``seconds``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from _common import print_table, write_results
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from scipy import stats

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.mcmc import fit_mcmc

ROWS, WEIGHTS, NOISE, BINS = 10, 2, 1.0, 10
PRIORS: dict[str, Callable[[], psb.priors.Prior]] = {
    "laplace": psb.priors.Laplace,
    "student_t": psb.priors.StudentT,
    "horseshoe": psb.priors.Horseshoe,
}
COLUMNS = [
    "prior", "parameter", "replications", "p_value", "chi2", "ess_ratio",
    "divergent_replications", "seconds",
]  # fmt: skip


class Regression:
    """``y ~ N(X w, NOISE)`` with ``w = prior.sample("w", (d,))`` (float64)."""

    def __init__(self, prior: psb.priors.Prior) -> None:
        self.prior = prior.double()

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        w = self.prior.sample("w", (x.shape[1],))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, NOISE), obs=y)


def scalars(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each reported site split into scalars: ``{"w[0]": (...,), ...}`` over leading dims."""
    out = {}
    for name, value in values.items():
        if name == "w_decentered":
            continue  # a bijection of w given the scales: it adds no check
        flat = value.reshape(*value.shape[: value.dim() - _event_dim(name)], -1)
        if flat.shape[-1] == 1 and _event_dim(name) == 0:
            out[name] = flat[..., 0]
        else:
            out |= {f"{name}[{i}]": flat[..., i] for i in range(flat.shape[-1])}
    return out


def _event_dim(name: str) -> int:
    return 0 if name == "w_global_scale" else 1


def ess_bulk(draws: dict[str, torch.Tensor]) -> dict[str, float]:
    """ArviZ's rank-normalised bulk ESS of each scalar's ``(chain, draw)`` draws."""
    names = list(draws)
    posterior = {f"v{i}": draws[name].numpy() for i, name in enumerate(names)}
    idata = psb.arviz.to_inference_data(posterior=posterior)
    table = psb.arviz.summary(idata, kind="diagnostics", round_to="none")
    return {name: float(table.loc[f"v{i}", "ess_bulk"]) for i, name in enumerate(names)}


def replicate(
    prior_name: str, x: torch.Tensor, r: int, seed: int, settings: dict
) -> tuple[dict[str, int], dict[str, float], int]:
    """One SBC replication: ranks and ESS ratios per scalar parameter, and the divergences."""
    model = Regression(PRIORS[prior_name]())
    pyro.set_rng_seed(seed * 100_003 + r)
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(x)
    truth = {
        name: node["value"]
        for name, node in trace.nodes.items()
        if node["type"] == "sample" and name != "y" and not site_is_subsample(node)
    }
    y = trace.nodes["y"]["value"]
    fit = fit_mcmc(
        model, x, y, num_chains=settings["chains"], warmup=settings["warmup"],
        num_samples=settings["samples"], max_tree_depth=settings["max_tree_depth"],
        init="uniform", seed=seed * 100_003 + r, progress=False,
    )  # fmt: skip
    draws = scalars({k: fit.samples[k] for k in truth})
    true = scalars(truth)
    ranks = {}
    for name, chains in draws.items():
        kept = chains[:, :: settings["thin"]].reshape(-1)[: settings["draws"]]
        ranks[name] = int((kept < true[name]).sum())
    ess = {k: v / settings["draws"] for k, v in ess_bulk(draws).items()}
    return ranks, ess, int(fit.info["divergences"])


def run_prior(
    prior_name: str, x: torch.Tensor, replications: int, seed: int, settings: dict
) -> list[dict]:
    """All replications of one prior; one row per scalar parameter."""
    start = time.perf_counter()
    ranks: dict[str, list[int]] = {}
    ratios: dict[str, list[float]] = {}
    divergences = []
    for r in range(replications):
        rank, ess, div = replicate(prior_name, x, r, seed, settings)
        for name in rank:
            ranks.setdefault(name, []).append(rank[name])
            ratios.setdefault(name, []).append(ess[name])
        divergences.append(div)
        if (r + 1) % 10 == 0:
            elapsed = time.perf_counter() - start
            print(f"{prior_name}: {r + 1}/{replications} in {elapsed:.0f} s", file=sys.stderr)
    seconds = time.perf_counter() - start
    edges = np.linspace(0, settings["draws"] + 1, BINS + 1)
    rows = []
    for name, values in ranks.items():
        counts, _ = np.histogram(values, bins=edges)
        test = stats.chisquare(counts)
        rows.append(
            {
                "prior": prior_name,
                "parameter": name,
                "replications": replications,
                "p_value": float(test.pvalue),
                "chi2": float(test.statistic),
                "bins": BINS,
                "counts": counts.tolist(),
                "draws": settings["draws"],
                "thin": settings["thin"],
                "ess_ratio": float(np.median(ratios[name])),
                "divergent_replications": int(sum(d > 0 for d in divergences)),
                "divergences": int(sum(divergences)),
                "seconds": seconds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 replications, shorter chains")
    parser.add_argument("--replications", type=int, default=None, help="per prior (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--priors", nargs="*", default=list(PRIORS), choices=list(PRIORS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    replications = args.replications or (20 if args.quick else 100)
    settings = {
        "chains": 4, "warmup": 100, "samples": 50, "thin": 2, "draws": 99, "max_tree_depth": 6,
    }  # fmt: skip
    if args.quick:
        settings |= {"warmup": 100, "samples": 25, "thin": 1}
    x = torch.randn(ROWS, WEIGHTS, generator=torch.Generator().manual_seed(args.seed))
    x = x.double()
    rows = []
    for prior_name in args.priors:
        rows += run_prior(prior_name, x, replications, args.seed, settings)
        print_table([r for r in rows if r["prior"] == prior_name], COLUMNS)
    print()
    print_table(rows, COLUMNS)
    path = write_results(
        "sbc",
        rows,
        seed=args.seed,
        data_split=f"simulated: X ~ N(0, 1) {ROWS} x {WEIGHTS} (fixed), y ~ prior predictive",
        noise=NOISE,
        sampler="fit_mcmc fast backend, NUTS, init='uniform', target_accept 0.8",
        **settings,
        bins=BINS,
        quick=args.quick,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
