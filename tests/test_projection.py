"""Projection predictive submodels of linear SparseBNNs: least squares and cross-entropy optima
checked against closed forms and first-order conditions; the budget masks of a NUTS posterior on
correlated features keep the true support instead of compensating weights."""

import numpy as np
import pytest
import torch
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer import result as result_module
from pyro_sparse_bnn.projection import linear_layer, project


def design(n=40, p=5, seed=0, rho=0.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, p, generator=g, dtype=torch.float64)
    return (1 - rho) ** 0.5 * z + rho**0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)


def linear_bnn(likelihood, p, k):
    torch.manual_seed(0)
    return psb.SparseBNN(nn.Linear(p, k), psb.priors.Normal(), likelihood).double()


def random_draws(S, k, p, seed=1, noise=False):
    g = torch.Generator().manual_seed(seed)
    draws = {"weight": torch.randn(S, k, p, generator=g, dtype=torch.float64)}
    if noise:
        draws["noise"] = torch.rand(S, generator=g, dtype=torch.float64) + 0.5
    return draws


def test_only_single_linear_layer_sparse_bnns_project():
    gaussian = psb.likelihoods.Gaussian()
    assert linear_layer(psb.SparseBNN(nn.Linear(3, 1), psb.priors.Normal(), gaussian))[0] == ""
    assert linear_layer(psb.SparseBNN(psb.mlp([3, 1]), psb.priors.Normal(), gaussian))[0] == "0"
    assert linear_layer(psb.SparseBNN(psb.mlp([3, 4, 1]), psb.priors.Normal(), gaussian)) is None
    with pytest.raises(TypeError, match=r"one nn\.Linear layer"):
        project(psb.SparseBNN(psb.mlp([3, 4, 1]), psb.priors.Normal(), gaussian), {}, None, {})


def test_gaussian_projection_is_least_squares_and_widens_the_noise():
    """Per draw: the kept weights are the least-squares fit of the draw's predictor (less its
    bias) on the kept columns; noise^2 grows by the mean squared residual; keeping everything
    returns the draw itself."""
    x = design()
    bnn = linear_bnn(psb.likelihoods.Gaussian(), 5, 1)
    draws = random_draws(6, 1, 5, noise=True)
    keep = torch.tensor([[True, False, True, False, False]])
    sub = project(bnn, draws, x, {"weight": keep})
    X, b = x.numpy(), bnn.net.bias.detach().numpy()
    for s in range(6):
        f = X @ draws["weight"][s, 0].numpy()
        coef, *_ = np.linalg.lstsq(X[:, [0, 2]], f, rcond=None)
        np.testing.assert_allclose(sub["weight"][s, 0, [0, 2]].numpy(), coef, rtol=1e-10)
        assert (sub["weight"][s, 0, [1, 3, 4]] == 0).all()
        misfit = np.mean((f - X[:, [0, 2]] @ coef) ** 2)
        expected = np.sqrt(draws["noise"][s].item() ** 2 + misfit)
        assert sub["noise"][s].item() == pytest.approx(expected, rel=1e-10)
        assert (X @ sub["weight"][s, 0].numpy() + b).shape == (40,)
    same = project(bnn, draws, x, {"weight": torch.ones(1, 5, dtype=torch.bool)})
    torch.testing.assert_close(same["weight"], draws["weight"], rtol=0, atol=1e-10)
    torch.testing.assert_close(same["noise"], draws["noise"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("likelihood, k", [(psb.likelihoods.Bernoulli(), 1),
                                           (psb.likelihoods.Categorical(), 3)])  # fmt: skip
def test_classifier_projection_meets_its_first_order_conditions(likelihood, k):
    """The cross-entropy projection's gradient in the kept weights vanishes at the answer:
    ``X_K^T (q - p) = 0`` per draw and class (q: the submodel's probabilities, p: the draw's);
    keeping every weight recovers the draw."""
    x = design(n=60, p=6, seed=2)
    bnn = linear_bnn(likelihood, 6, k)
    draws = random_draws(4, k, 6, seed=3)
    keep = torch.zeros(k, 6, dtype=torch.bool)
    keep[:, :3] = True
    sub = project(bnn, draws, x, {"weight": keep})
    bias = bnn.net.bias.detach()
    full = torch.einsum("np,scp->snc", x, draws["weight"]) + bias
    logits = torch.einsum("np,scp->snc", x, sub["weight"]) + bias
    if k == 1:
        p, q = torch.sigmoid(full), torch.sigmoid(logits)
    else:
        p, q = torch.softmax(full, -1), torch.softmax(logits, -1)
    gradient = torch.einsum("np,snc->scp", x, q - p)[:, :, :3]
    assert gradient.abs().max() < 1e-5
    assert (sub["weight"][:, :, 3:] == 0).all()
    same = project(bnn, draws, x, {"weight": torch.ones(k, 6, dtype=torch.bool)})
    torch.testing.assert_close(same["weight"], draws["weight"], rtol=0, atol=1e-4)


def test_a_pruned_bias_becomes_zero_and_the_weights_take_up_its_offset():
    x = design()
    bnn = psb.SparseBNN(nn.Linear(5, 1), psb.priors.Normal(), psb.likelihoods.Gaussian(),
                        bias_prior=psb.priors.Normal()).double()  # fmt: skip
    draws = random_draws(3, 1, 5, noise=True) | {"bias": torch.ones(3, 1, dtype=torch.float64)}
    keep = {"weight": torch.ones(1, 5, dtype=torch.bool), "bias": torch.tensor([False])}
    sub = project(bnn, draws, x, keep)
    assert (sub["bias"] == 0).all()
    for s in range(3):  # least squares of x w + 1 (the dropped bias) on x
        target = (x @ draws["weight"][s, 0] + 1.0).numpy()
        coef, *_ = np.linalg.lstsq(x.numpy(), target, rcond=None)
        np.testing.assert_allclose(sub["weight"][s, 0].numpy(), coef, rtol=1e-9)


def test_budget_masks_of_correlated_features_keep_the_true_support(monkeypatch):
    """Equicorrelated features (rho 0.9), 2 true of 8, draws from the exact conjugate posterior
    (Normal prior, known noise): the null weights' draws compensate the true ones', so zeroing
    them moves the predictions and a zeroing budget keeps several of them; the projected budget
    keeps exactly the true two, and its pruned model predicts held-out rows as well as the full
    posterior."""
    noise = 1.0
    x = design(n=100, p=8, seed=4, rho=0.9)
    beta = torch.tensor([1.5, 0, 0, 0, -1.0, 0, 0, 0], dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    y = x @ beta + noise * torch.randn(100, generator=g, dtype=torch.float64)
    x_test = design(n=2000, p=8, seed=6, rho=0.9)
    y_test = x_test @ beta + noise * torch.randn(2000, generator=g, dtype=torch.float64)
    precision = x.T @ x / noise**2 + torch.eye(8, dtype=torch.float64)
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y / noise**2
    torch.manual_seed(7)
    w = torch.distributions.MultivariateNormal(mean, cov).sample((400,))
    bnn = psb.SparseBNN(nn.Linear(8, 1, bias=False), psb.priors.Normal(),
                        psb.likelihoods.Gaussian(noise)).double()  # fmt: skip
    samples = {"weight": w.reshape(1, 400, 1, 8)}
    fit = psb.FitResult(bnn, samples, method="exact", x=x, y=y)
    kept = fit.masks()["weight"].flatten()
    assert kept.tolist() == (beta != 0).tolist()
    full, pruned = fit.evaluate(x_test, y_test), fit.evaluate(x_test, y_test, masked=True)
    assert pruned["nll"] <= full["nll"] + 0.02
    monkeypatch.setattr(result_module, "linear_layer", lambda model: None)  # zero instead
    zeroing = psb.FitResult(bnn, samples, method="exact", x=x, y=y).masks()["weight"]
    assert zeroing.sum() > 2
