"""The compiled NUTS step (``infer.mcmc.compiled``, ``Sampler.use_compiled``) against the eager
one, and ``fit_mcmc``'s decision to compile (``graph=None``): taken from counts, so a seed repeats
its draws, kept across an exact resume, and given up with a warning where compiling fails."""

from __future__ import annotations

import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.mcmc import Sampler, fit_mcmc, run, sample
from pyro_sparse_bnn.infer.mcmc.compiled import compile_function
from pyro_sparse_bnn.infer.potential import FlatPotential


def _gaussian(theta):
    """U(theta) = |theta|^2 / 2 per chain, with its gradient."""
    return 0.5 * (theta**2).sum(-1), theta


def _iris_bnn():
    return psb.SparseBNN(
        psb.mlp([4, 5, 3]), psb.priors.Horseshoe(0.1), psb.likelihoods.Categorical(),
        bias_prior=psb.priors.Normal(),
    )  # fmt: skip


def test_compile_function_unmerges_aliased_arguments_and_recompiles_per_dtype():
    x = torch.arange(3.0)
    add = compile_function(lambda a, b: [a + 2 * b])
    assert torch.equal(add(x, x)[0], 3 * x)  # traced with a and b one tensor
    assert torch.equal(add(x, torch.ones(3))[0], x + 2)
    doubles = add(x.double(), torch.ones(3, dtype=torch.float64))[0]
    assert doubles.dtype == torch.float64 and torch.equal(doubles, x.double() + 2)


@pytest.mark.slow
def test_compiled_nuts_transitions_build_the_eager_trees():
    """Same random numbers, same trees: every doubling, U-turn, divergence and multinomial draw of
    two-leaf compiled calls (a one-leaf subtree voids the second) matches the eager leaves."""
    x, y = psb.datasets.load("iris")
    bnn = _iris_bnn().double()
    flat = FlatPotential(bnn, (x.double(), y), num_chains=3)
    gen = torch.Generator().manual_seed(0)
    z = 0.5 * torch.randn(3, flat.dim, generator=gen, dtype=torch.float64)
    pe, grad = flat.potential_and_grad(z)
    step = torch.tensor([0.02, 0.1, 0.5], dtype=torch.float64)  # deep, medium, diverging trees
    inverse_mass = torch.rand(3, flat.dim, generator=gen, dtype=torch.float64) + 0.5
    runs = []
    for compile in (False, True):
        sampler = Sampler(flat.potential_and_grad, num_chains=3, dim=flat.dim, seeds=[0, 1, 2],
                          like=z, compile=compile)  # fmt: skip
        state, stats = (z, grad, pe), []
        for _ in range(8):
            *state, info = sampler.nuts(*state, step, inverse_mass)
            stats.append(info)
        runs.append((state, stats))
    (eager, eager_stats), (compiled, compiled_stats) = runs
    for a, b in zip(eager_stats, compiled_stats, strict=True):
        for key in ("tree_depth", "n_steps", "diverging"):
            assert torch.equal(a[key], b[key]), key
    depths = torch.stack([s["tree_depth"] for s in eager_stats])
    assert depths.min() == 0 and depths.max() >= 4  # trees ended in one-leaf and many-call subtrees
    for a, b in zip(eager, compiled, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_compiled_leapfrog_matches_the_eager_one_and_fit_mcmc_compiles():
    x, y = psb.datasets.load("iris")
    bnn = _iris_bnn()
    flat = FlatPotential(bnn, (x, y), num_chains=2)
    gen = torch.Generator().manual_seed(0)
    z, r = (0.3 * torch.randn(2, flat.dim, generator=gen) for _ in range(2))
    pe, grad = flat.potential_and_grad(z)
    step, inverse_mass = torch.tensor([0.01, 0.05]), torch.rand(2, flat.dim, generator=gen)
    outputs = []
    for compile in (False, True):
        sampler = Sampler(flat.potential_and_grad, num_chains=2, dim=flat.dim, seeds=[0, 1],
                          like=z, compile=compile)  # fmt: skip
        state = (z, r, grad, pe)
        for _ in range(20):
            state = sampler.leapfrog(*state, step, inverse_mass)
        outputs.append(state)
    for eager, compiled in zip(*outputs, strict=True):
        assert torch.allclose(eager, compiled, rtol=1e-4, atol=1e-4)
    fit = fit_mcmc(bnn, x, y, num_chains=2, num_samples=10, warmup=10, graph="compiled",
                   progress=False)  # fmt: skip
    assert fit.info["compiled"] and torch.isfinite(fit.sample_stats["lp"]).all()


def test_short_runs_stay_uncompiled_long_ones_compile_and_repeat(monkeypatch):
    """The decision counts leapfrog steps, not seconds: a run repeats its draws to the bit."""
    options = dict(num_warmup=30, num_samples=200, seeds=[0, 1], compile=None)
    short = sample(_gaussian, torch.zeros(2, 3), **options)
    assert not short.info["compiled"]
    monkeypatch.setattr(run, "COMPILE_FROM_LEAVES", 100)
    long = sample(_gaussian, torch.zeros(2, 3), **options)
    again = sample(_gaussian, torch.zeros(2, 3), **options)
    assert long.info["compiled"] and torch.equal(long.theta, again.theta)
    theta = long.theta.reshape(-1, 3)
    assert theta.mean(0).abs().max() < 0.2 and (theta.std(0) - 1).abs().max() < 0.15


def test_resume_across_the_switch_repeats_the_uninterrupted_draws(monkeypatch):
    monkeypatch.setattr(run, "COMPILE_FROM_LEAVES", 100)
    options = dict(num_warmup=30, num_samples=30, seeds=[0, 1], compile=None)
    saved = []
    whole = sample(_gaussian, torch.zeros(2, 3), checkpoint=saved.append, checkpoint_every=5,
                   **options)  # fmt: skip
    assert whole.info["compiled"]
    for state in (saved[0], saved[3]):  # before and after the switch at iteration 10
        assert state["compiled"] == (state["t"] >= run.COMPILE_AFTER)
        again = sample(_gaussian, torch.zeros(2, 3), resume=state, **options)
        assert torch.equal(again.theta, whole.theta)


def test_a_failing_compiler_warns_and_the_run_goes_on(monkeypatch):
    def broken(*args):
        raise RuntimeError("no C++ compiler\nmore")

    def no_compiler(fn):
        return broken

    monkeypatch.setattr(run, "COMPILE_FROM_LEAVES", 100)
    monkeypatch.setattr("pyro_sparse_bnn.infer.mcmc.sampler.compile_function", no_compiler)
    with pytest.warns(UserWarning, match="step failed .RuntimeError: no C"):
        out = sample(_gaussian, torch.zeros(2, 3), num_warmup=30, num_samples=50, seeds=[0, 1],
                     compile=None)  # fmt: skip
    assert not out.info["compiled"] and out.theta.shape == (2, 50, 3)
