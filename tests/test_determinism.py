"""Every inference method is a function of its ``seed``: two fits with one seed give bit-identical
draws of every site (and identical sampler statistics), also when the global RNG differs before
the call, and another seed gives other draws of every weight site."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.fit import METHODS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

X_ALL, Y_ALL = psb.datasets.load("iris", split="train")
X, Y = X_ALL[:30], Y_ALL[:30]

_SHORT = {"epochs": 4, "batch_size": 10}
_SGMCMC = {"num_samples": 8, "warmup": 8, "num_chains": 2, "batch_size": 10}
_MCMC = {"num_samples": 8, "warmup": 8, "num_chains": 2}
OPTIONS: dict[str, dict[str, Any]] = {
    "svi": _SHORT | {"num_posterior_samples": 8},
    "vadam": _SHORT | {"num_posterior_samples": 8},
    "ivon": _SHORT | {"num_posterior_samples": 8},
    "l1": _SHORT,
    "l0": _SHORT | {"num_posterior_samples": 8},
    "nuts": _MCMC | {"max_tree_depth": 4},
    "hmc": _MCMC | {"num_steps": 4},
}
SEED, OTHER_SEED, GLOBAL, OTHER_GLOBAL = 3, 4, 100, 200


def fit(method: str, seed: int, global_seed: int) -> psb.FitResult:
    """A horseshoe 4-3 classifier on 30 iris rows, fitted after setting the global RNG."""
    torch.manual_seed(0)  # the same network initialisation every time
    bnn = psb.SparseBNN(
        psb.mlp([4, 3]), psb.priors.Horseshoe(global_scale=1.0), psb.likelihoods.Categorical()
    )
    torch.manual_seed(global_seed)
    options = OPTIONS.get(method, _SGMCMC)
    return psb.fit(bnn, X, Y, method=method, seed=seed, progress=False, **options)


@cache
def reference(method: str) -> psb.FitResult:
    return fit(method, SEED, GLOBAL)


def assert_identical(a: psb.FitResult, b: psb.FitResult) -> None:
    assert a.samples.keys() == b.samples.keys() and a.sample_stats.keys() == b.sample_stats.keys()
    for site, value in a.samples.items():
        assert torch.equal(value, b.samples[site]), site
    for stat, value in a.sample_stats.items():
        assert torch.equal(value, b.sample_stats[stat]), stat


@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_seed_gives_identical_draws(method: str) -> None:
    assert_identical(reference(method), fit(method, SEED, GLOBAL))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_draws_do_not_depend_on_the_global_rng(method: str) -> None:
    assert_identical(reference(method), fit(method, SEED, OTHER_GLOBAL))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_other_seed_gives_other_draws(method: str) -> None:
    first, other = reference(method), fit(method, OTHER_SEED, GLOBAL)
    assert first.samples.keys() == other.samples.keys() and first.weight_sites
    for site in first.weight_sites:
        assert not torch.equal(first.samples[site], other.samples[site]), site
