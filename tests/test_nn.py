"""SparseBNN: conversion from plain modules, site layout, vectorised forward, per-layer priors."""

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

import pyro_sparse_bnn as psb


def conv_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_conv_and_linear_layers_become_weight_sites():
    bnn = psb.SparseBNN(
        conv_net(), psb.priors.Horseshoe(groups="in"), psb.likelihoods.Categorical()
    )
    assert bnn.weight_sites == ["0.weight", "3.weight"]
    tr = poutine.trace(bnn).get_trace(torch.randn(5, 1, 8, 8))
    assert tr.nodes["0.weight"]["value"].shape == (4, 1, 3, 3)
    assert tr.nodes["0.weight_local_scale"]["value"].shape == (1, 1, 1, 1)
    assert tr.nodes["y"]["fn"].batch_shape == (5,)


def test_forward_uses_the_sampled_weights_exactly():
    net = psb.mlp([3, 4, 2])
    bnn = psb.SparseBNN(net, psb.priors.Laplace(), psb.likelihoods.Categorical())
    tr = poutine.trace(bnn).get_trace(torch.randn(6, 3))
    x = torch.randn(6, 3)
    params = {k: tr.nodes[k]["value"] for k in bnn.weight_sites}
    hidden = torch.relu(nn.functional.linear(x, params["0.weight"], net[0].bias))
    manual = nn.functional.linear(hidden, params["2.weight"], net[2].bias)
    assert torch.allclose(bnn.run_net(params, x), manual)


def test_vectorised_run_net_equals_a_loop_over_draws():
    bnn = psb.SparseBNN(conv_net(), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    pyro.set_rng_seed(0)
    x = torch.randn(5, 1, 8, 8)
    with pyro.plate("draws", 7, dim=-2):
        params = bnn.sample_params()
    assert params["0.weight"].shape == (7, 1, 4, 1, 3, 3)
    batched = bnn.run_net(params, x)
    assert batched.shape == (7, 5, 3)
    for s in range(7):
        one = {k: v[s, 0] for k, v in params.items()}
        # Horseshoe draws have Cauchy tails: outputs reach hundreds and small ones come from
        # cancelling large terms, so float32 round-off is relative to the largest output.
        scale = batched[s].abs().max().item()
        assert torch.allclose(batched[s], bnn.run_net(one, x), rtol=1e-5, atol=1e-6 * scale)


def test_original_network_is_never_changed():
    net = psb.mlp([4, 3])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    bnn = psb.SparseBNN(net, psb.priors.Normal(), psb.likelihoods.Categorical())
    assert isinstance(net[0].weight, nn.Parameter)  # still a plain trainable network
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert not isinstance(bnn.net[0].weight, nn.Parameter)  # the copy's weight comes from the prior


def test_per_layer_priors_and_bayesian_biases():
    priors = {"0": psb.priors.Horseshoe(), "2": psb.priors.Normal(0.5)}
    bnn = psb.SparseBNN(
        psb.mlp([4, 5, 3]), priors, psb.likelihoods.Categorical(), bias_prior=psb.priors.Normal()
    )
    tr = poutine.trace(bnn).get_trace(torch.randn(2, 4))
    sites = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
    assert "0.weight_local_scale" in sites and "2.weight_local_scale" not in sites
    assert {"0.bias", "2.bias"} <= set(sites)
    assert list(bnn.parameters()) == []  # every parameter is now a random variable


def test_initial_weights_reproduce_the_network_init():
    net = psb.mlp([4, 3])
    bnn = psb.SparseBNN(net, psb.priors.Normal(), psb.likelihoods.Categorical())
    assert torch.equal(bnn.initial_weights()["0.weight"], net[0].weight.detach())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: psb.SparseBNN("net", psb.priors.Normal(), psb.likelihoods.Gaussian()),
            TypeError,
            "net",
        ),
        (
            lambda: psb.SparseBNN(nn.ReLU(), psb.priors.Normal(), psb.likelihoods.Gaussian()),
            ValueError,
            "Linear",
        ),
        (
            lambda: psb.SparseBNN(psb.mlp([2, 1]), psb.priors.Normal(), "gaussian"),
            TypeError,
            "likelihood",
        ),
        (
            lambda: psb.SparseBNN(
                psb.mlp([2, 1]), {"5": psb.priors.Normal()}, psb.likelihoods.Gaussian()
            ),
            ValueError,
            "layers",
        ),
        (
            lambda: psb.SparseBNN(psb.mlp([2, 1]), 1.0, psb.likelihoods.Gaussian()),
            TypeError,
            "prior",
        ),
        (lambda: psb.mlp([3]), ValueError, "sizes"),
        (lambda: psb.mlp([3, 0]), ValueError, "sizes"),
    ],
)
def test_bad_construction(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_priors_follow_the_layers_whatever_the_mapping_order():
    """A mapping listing the layers out of order still pairs each layer with its own prior."""
    priors = {"2": psb.priors.GroupLogUniform(groups="out"), "0": psb.priors.Horseshoe()}
    bnn = psb.SparseBNN(psb.mlp([4, 5, 3]), priors, psb.likelihoods.Categorical())
    assert list(bnn.priors.values()) == [priors["0"], priors["2"]]
    assert bnn.layer_names == ["0", "2"]
