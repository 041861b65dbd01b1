"""Normalisation layers with Bayesian scales and shifts (``SparseBNN(..., norm_prior=...)``):
their sites follow the prior, the deployed network uses their posterior means, and penalised
fits learn them."""

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

import pyro_sparse_bnn as psb


def bn_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def bnn(norm_prior=None) -> psb.SparseBNN:
    norm_prior = psb.priors.Normal(0.5) if norm_prior is None else norm_prior
    return psb.SparseBNN(bn_mlp(), psb.priors.Normal(), psb.likelihoods.Categorical(),
                         norm_prior=norm_prior)  # fmt: skip


def test_scales_and_shifts_are_drawn_from_the_norm_prior():
    """4000 vectorised prior draws of the BatchNorm scale and shift: mean 0 and sd 0.5 (the
    ``Normal(0.5)`` prior) within 5 standard errors."""
    model = bnn()
    assert model.norm_names == ["1"]
    with pyro.plate("draws", 4000, dim=-2):
        tr = poutine.trace(model).get_trace(torch.randn(3, 4))
    n = 4000 * 8
    for site in ("1.weight", "1.bias"):
        draws = tr.nodes[site]["value"]
        assert draws.shape == (4000, 1, 8)
        assert draws.mean().abs() < 5 * 0.5 / n**0.5
        assert (draws.std() - 0.5).abs() < 5 * 0.5 / (2 * n) ** 0.5
    # the user's network keeps its parameters; the model's copy holds them as buffers
    assert "1.weight" in dict(model.net.named_buffers())


def test_a_fitted_norm_posterior_is_what_the_deployed_network_uses():
    x, y = psb.datasets.load("iris")
    result = psb.fit(bnn(psb.priors.Horseshoe(0.5)), x, y, method="svi", epochs=300, lr=0.05,
                     seed=0, progress=False)  # fmt: skip
    assert result.evaluate(x, y)["accuracy"] > 0.9
    assert {"1.weight", "1.bias"} <= set(result.samples)
    net = result.masked_network(threshold=0.0)
    mean = result.samples["1.weight"].reshape(-1, 8).mean(0)
    assert torch.allclose(net[1].weight, mean, atol=1e-6)
    assert not net.training  # running statistics recomputed at the posterior mean


def test_shrunk_scales_and_shifts_remove_their_channels():
    """Bayesian network slimming: a horseshoe on the BatchNorm scales and shifts; the channels
    whose scale and shift are both pruned go, and the smaller network computes the masked one."""
    x, y = psb.datasets.load("iris")
    result = psb.fit(bnn(psb.priors.Horseshoe(0.1)), x, y, method="svi", epochs=300, lr=0.05,
                     seed=0, progress=False)  # fmt: skip
    masks = result.masks(1.0)
    dead = ~(masks["1.weight"] | masks["1.bias"])
    assert 0 < int(dead.sum()) < 8
    small = result.prune(1.0)
    assert small[1].num_features <= 8 - int(dead.sum())
    with torch.no_grad():
        assert (small(x) - result.masked_network(1.0)(x)).abs().max() < 1e-5


def test_penalised_fits_learn_the_norm_parameters():
    x, y = psb.datasets.load("iris")
    model = bnn()
    result = psb.fit(model, x, y, method="l1", l1=1e-3, epochs=30, seed=0, progress=False)
    net = result.masked_network(threshold=0.0)
    assert not torch.equal(net[1].bias, torch.zeros(8))  # moved from its initial value


def test_norm_prior_is_checked():
    with pytest.raises(TypeError, match="norm_prior must be a Prior"):
        bnn("horseshoe")
    with pytest.raises(ValueError, match="no normalisation layer"):
        psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical(),
                      norm_prior=psb.priors.Normal())  # fmt: skip
