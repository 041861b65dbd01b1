"""NUTS/HMC (``infer.mcmc``, ``infer.fast_nuts``, ``infer.potential``) against exact posteriors,
posteriordb reference posteriors and Pyro's own NUTS.

Tolerances follow REFERENCES.md section 8 and take the stricter of the two issues' bounds: means
within 3 Monte Carlo standard errors and 0.1 posterior sd, variances within 10 % of the exact ones,
rank-normalised R-hat < 1.01 and bulk/tail ESS > 400 (ArviZ), and |mean - reference| / reference
sd < 0.25 against posteriordb (Stan's rule).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.mcmc import adaptation_windows, fit_mcmc, sample

POSTERIORDB = Path(__file__).resolve().parent / "data" / "posteriordb"  # BSD-3, see LICENCE.md
DTYPE = torch.float64


def _summary(fit, names):
    """ArviZ summary (rank-normalised R-hat, bulk/tail ESS, MCSE) of the listed sites."""
    posterior = {k: fit.samples[k].numpy() for k in names}
    idata = psb.arviz.to_inference_data(posterior=posterior)
    return psb.arviz.summary(idata, kind="all", round_to="none")


def _conjugate(n=100, d=5, noise=1.0, prior_sd=1.0, seed=0):
    """Known-noise Gaussian regression: data and the exact posterior N(mean, precision^-1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=DTYPE)
    x[:, 1] += 0.8 * x[:, 0]  # correlated features: the posterior is not axis-aligned
    beta = torch.linspace(-1.0, 1.5, d, dtype=DTYPE)
    y = x @ beta + noise * torch.randn(n, generator=gen, dtype=DTYPE)
    precision = x.T @ x / noise**2 + torch.eye(d, dtype=DTYPE) / prior_sd**2
    mean = torch.linalg.solve(precision, x.T @ y / noise**2)
    return x, y, mean, torch.linalg.inv(precision)


def _linear_model(noise=1.0, prior_sd=1.0):
    """Door (b): a hand-written Pyro model with a toolkit prior."""
    prior = psb.priors.Normal(prior_sd).double()

    def model(x, y=None):
        w = prior.sample("w", (x.shape[1],))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, noise), obs=y)

    return model


def _check_gaussian_posterior(fit, mean, cov, *, min_ess=400):
    draws = fit.samples["w"].reshape(-1, mean.shape[0])
    sd = cov.diagonal().sqrt()
    summary = _summary(fit, ["w"])
    mcse = torch.tensor(summary["mcse_mean"].to_numpy())
    error = (draws.mean(0) - mean).abs()
    assert (error <= 3 * mcse).all(), (error, mcse)
    assert (error <= 0.1 * sd).all()
    ratio = draws.var(0) / cov.diagonal()
    assert ((ratio - 1).abs() < 0.1).all(), ratio
    assert (summary["r_hat"] < 1.01).all()
    assert (summary["ess_bulk"] > min_ess).all() and (summary["ess_tail"] > min_ess).all()
    assert fit.info["divergences"] == 0


def test_adaptation_windows_are_stans():
    # Stan's default for 1000 warm-up iterations: 75 buffer, windows 25, 50, 100, 200, 500, 50
    assert adaptation_windows(1000) == [
        (0, 74), (75, 99), (100, 149), (150, 249), (250, 449), (450, 949), (950, 999),
    ]  # fmt: skip
    # short warm-ups scale the buffers (15 % / 10 %) and keep covering every iteration
    for n in (20, 57, 150, 333):
        windows = adaptation_windows(n)
        assert windows[0][0] == 0 and windows[-1][1] == n - 1
        assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(windows))


def test_nuts_recovers_the_conjugate_regression_posterior():
    """Exact posterior of a correlated Gaussian regression, 4 chains x (500 + 1000) draws."""
    x, y, mean, cov = _conjugate()
    fit = fit_mcmc(_linear_model(), x, y, num_samples=1000, warmup=500, progress=False)
    _check_gaussian_posterior(fit, mean, cov)
    stats = fit.sample_stats
    assert set(stats) >= {"diverging", "tree_depth", "n_steps", "acceptance_rate", "energy", "lp"}
    # lp is the log density at the draw: for a Gaussian posterior -lp + const is half a
    # chi-square with d degrees of freedom, so its variance over draws is d / 2
    assert abs(float(stats["lp"].double().var()) / 2.5 - 1) < 0.15


def test_hmc_with_dense_mass_recovers_the_conjugate_regression_posterior():
    x, y, mean, cov = _conjugate(seed=1)
    # a quarter period of the whitened posterior: 2 pi (the default) would return to the start
    fit = fit_mcmc(
        _linear_model(), x, y, kernel="hmc", dense_mass=True, trajectory_length=1.5,
        num_samples=1000, warmup=500, seed=1, progress=False,
    )  # fmt: skip
    _check_gaussian_posterior(fit, mean, cov)
    # the adapted dense inverse mass matrix whitens the posterior: the covariance in the
    # preconditioned coordinates has condition number near 1 (the posterior's own correlation
    # of -0.62 between w0 and w1 would leave (1 + 0.62) / (1 - 0.62) = 4.3 to a diagonal one)
    for inverse_mass in fit.info["inverse_mass_matrix"]:
        lower = torch.linalg.cholesky(inverse_mass)
        white = torch.linalg.solve_triangular(lower, cov, upper=False)
        white = torch.linalg.solve_triangular(lower, white.T, upper=False)
        eig = torch.linalg.eigvalsh(white)
        assert eig.max() / eig.min() < 2.5, eig


def _eight_schools(x, y=None):
    """Non-centred eight schools; ``x[:, 0]`` holds the standard errors ``sigma``."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", 8):
        theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_trans)
        return pyro.sample("y", dist.Normal(theta, x[:, 0]), obs=y)


@pytest.mark.slow
def test_eight_schools_matches_posteriordb_reference():
    stem = "eight_schools-eight_schools_noncentered"
    with zipfile.ZipFile(POSTERIORDB / "data" / "eight_schools.json.zip") as archive:
        data = json.load(io.TextIOWrapper(archive.open("eight_schools.json")))
    means = json.loads((POSTERIORDB / "mean_value" / f"{stem}.json").read_text())
    squares = json.loads((POSTERIORDB / "mean_squared_value" / f"{stem}.json").read_text())
    x = torch.tensor(data["sigma"], dtype=DTYPE)[:, None]
    y = torch.tensor(data["y"], dtype=DTYPE)
    fit = fit_mcmc(
        _eight_schools, x, y, num_samples=1000, warmup=500, target_accept=0.9, progress=False
    )
    estimates = {f"theta[{j + 1}]": fit.samples["theta"][..., j] for j in range(8)}
    estimates |= {"mu": fit.samples["mu"], "tau": fit.samples["tau"]}
    for name, ref, sq in zip(
        means["names"], means["mean_value"], squares["mean_squared_value"], strict=True
    ):
        z = (float(estimates[name].mean()) - ref) / math.sqrt(sq - ref**2)
        assert abs(z) < 0.25, (name, z)
    # theta is a deterministic site, recovered by replaying the model on every draw
    expected = (
        fit.samples["mu"][..., None] + fit.samples["tau"][..., None] * fit.samples["theta_trans"]
    )
    assert torch.allclose(fit.samples["theta"], expected)


@pytest.mark.slow
def test_horseshoe_regression_masks_find_the_signals():
    """3 signals among 30 weights: the posterior SNR > 1 keep-masks are exactly the true support
    (the default budget masks keep every signal but, NUTS's null draws compensating each other,
    also 6-7 nulls for network seeds 0-3: see docs/panel.md)."""
    x, y, beta = psb.datasets.sparse_regression(n=100, p=30, n_nonzero=3, seed=1)
    tau0 = 3 / 27 / math.sqrt(100)  # Piironen & Vehtari's choice for 3 of 30 relevant
    torch.manual_seed(0)  # the chains start from the network's initial weights
    bnn = psb.SparseBNN(
        nn.Linear(30, 1, bias=False), psb.priors.Horseshoe(tau0), psb.likelihoods.Gaussian(1.0)
    )
    # trees are capped at 63 leapfrog steps to keep the test short; the masks need few draws
    fit = psb.fit(bnn, x, y, method="nuts", num_chains=2, num_samples=100, warmup=100,
                  max_tree_depth=6, progress=False)  # fmt: skip
    keep = fit.masks(1.0)["weight"].reshape(-1)
    assert keep.tolist() == (beta != 0).tolist()
    assert fit.masks()["weight"].reshape(-1)[:3].all()
    signal = fit.samples["weight"].reshape(-1, 30)[:, :3].mean(0)
    assert torch.allclose(signal, beta[:3], atol=0.4)


def _normal_model(x, y=None):
    """A small non-Gaussian posterior: unknown mean and scale of Student-t data."""
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    scale = pyro.sample("scale", dist.HalfCauchy(2.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.StudentT(4.0, loc, scale), obs=y)


@pytest.mark.slow
def test_fast_path_agrees_with_pyros_nuts():
    gen = torch.Generator().manual_seed(3)
    y = 1.0 + 2.0 * torch.randn(30, generator=gen)
    x = torch.zeros(30, 1)
    fast = fit_mcmc(_normal_model, x, y, num_samples=1000, warmup=300, progress=False)
    stock = fit_mcmc(
        _normal_model, x, y, num_chains=1, num_samples=1000, warmup=300, backend="pyro",
        progress=False,
    )  # fmt: skip
    a, b = _summary(fast, ["loc", "scale"]), _summary(stock, ["loc", "scale"])
    tolerance = 4 * np.hypot(a["mcse_mean"], b["mcse_mean"])
    assert (np.abs(a["mean"] - b["mean"]) < tolerance).all(), (a, b)
    assert (np.abs(a["sd"] / b["sd"] - 1) < 0.15).all()
    assert fast.info["divergences"] == 0 and stock.info["divergences"] == 0


def test_chains_are_seeded_each_by_itself_and_runs_repeat():
    """A chain's draws depend on its seed only, not on the other chains in the batch."""

    def gaussian(theta):
        return 0.5 * (theta**2 * torch.tensor([1.0, 4.0, 9.0])).sum(-1), theta * torch.tensor(
            [1.0, 4.0, 9.0]
        )

    runs = [
        sample(gaussian, torch.zeros(c, 3), num_warmup=50, num_samples=30, seeds=list(range(c)))
        for c in (2, 3, 3)
    ]
    assert torch.equal(runs[1].theta, runs[2].theta)
    assert torch.equal(runs[0].theta, runs[1].theta[:2])
    assert not torch.equal(runs[1].theta[0], runs[1].theta[1])


def test_deterministic_weights_stats_and_arviz_export():
    x, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(
        psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical(),
        bias_prior=psb.priors.Normal(),
    )  # fmt: skip
    cpu = time.process_time()
    fit = psb.fit(bnn, x[:30], y[:30], method="nuts", num_chains=2, num_samples=15, warmup=15,
                  max_tree_depth=6, progress=False)  # fmt: skip
    cpu = time.process_time() - cpu
    phases = fit.info["warmup_cpu_seconds"], fit.info["sampling_cpu_seconds"]
    assert min(phases) > 0 and sum(phases) <= cpu  # CPU time of each phase, within the fit's
    s = fit.samples
    weight = (
        s["0.weight_decentered"]
        * s["0.weight_local_scale"]
        * s["0.weight_global_scale"][..., None, None]
    )
    assert torch.allclose(s["0.weight"], weight)
    assert "0.weight" in fit.weight_sites
    idata = fit.to_arviz()
    stats = idata.sample_stats
    assert stats["diverging"].dtype == bool and stats["tree_depth"].shape == (2, 15)
    # leaves built: the accepted doublings (2^depth - 1) plus part of one rejected subtree
    depth, steps = stats["tree_depth"].values, stats["n_steps"].values
    assert ((steps >= 2**depth - 1) & (steps <= 2 ** (depth + 1) - 1)).all()


def test_interrupt_keeps_the_draws_made_so_far():
    calls = {"n": 0}

    def gaussian(theta):
        calls["n"] += 1
        if calls["n"] > 400:
            raise KeyboardInterrupt
        return 0.5 * (theta**2).sum(-1), theta

    with pytest.warns(UserWarning, match="interrupted"):
        out = sample(gaussian, torch.zeros(2, 2), num_warmup=20, num_samples=1000, seeds=[0, 1])
    assert out.interrupted and 0 < out.theta.shape[1] < 1000
    assert out.stats["diverging"].shape == out.theta.shape[:2]


def test_improper_and_discrete_priors_are_rejected():
    x, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.LogUniform(), psb.likelihoods.Categorical())
    with pytest.raises(ValueError, match="improper"):
        fit_mcmc(bnn, x, y, progress=False)

    def discrete(x, y=None):
        k = pyro.sample("k", dist.Bernoulli(0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(k, 1.0), obs=y)

    with pytest.raises(ValueError, match="discrete"):
        fit_mcmc(discrete, torch.zeros(3, 1), torch.zeros(3), progress=False)


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("kernel", "mala", ValueError),
        ("backend", "jax", ValueError),
        ("init", "random", ValueError),
        ("num_chains", 0, ValueError),
        ("num_samples", 2.5, TypeError),
        ("warmup", -1, ValueError),
        ("target_accept", 1.0, ValueError),
        ("max_tree_depth", 0, ValueError),
        ("dense_mass", "yes", TypeError),
        ("step_size", -0.1, ValueError),
    ],
)
def test_bad_options_fail_before_any_work(option, value, error):
    x, y, _, _ = _conjugate(n=10)
    with pytest.raises(error, match=option):
        fit_mcmc(_linear_model(), x, y, progress=False, **{option: value})


def test_bfmi_of_gaussian_energies():
    """E-BFMI = sum (E_t - E_t-1)^2 / sum (E_t - mean E)^2 per chain: about 2 for independent
    energies, near 0 for a slow random walk; NUTS on a Gaussian target moves the energy well."""
    gen = np.random.default_rng(0)
    independent = gen.normal(size=(2, 4000))
    walk = np.cumsum(0.01 * gen.normal(size=(2, 4000)), axis=1)
    idata = psb.arviz.to_inference_data(
        posterior={"x": independent}, sample_stats={"energy": independent}
    )
    assert np.allclose(psb.arviz.bfmi(idata), 2.0, atol=0.1)
    slow = psb.arviz.to_inference_data(posterior={"x": walk}, sample_stats={"energy": walk})
    assert (psb.arviz.bfmi(slow) < 0.01).all()
    x, y, _, _ = _conjugate(n=20)
    fit = fit_mcmc(_linear_model(), x, y, num_chains=2, num_samples=300, warmup=200,
                   progress=False)  # fmt: skip
    assert (psb.arviz.bfmi(fit.to_arviz()) > 0.5).all()
