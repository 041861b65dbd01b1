"""Penalty <-> prior: round trips, marginals of the mapped priors, Glorot variances, and the MAP
of a model with the mapped prior against the penalised optimum (closed form or scikit-learn)."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.stats as st
import torch
from sklearn.linear_model import Lasso, MultiTaskLasso

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.penalties import (
    GroupLaplace,
    Penalty,
    glorot_factor,
    glorot_penalties,
    penalty_priors,
    penalty_to_prior,
    prior_to_penalty,
    total_penalty,
)

PENALTIES = [
    Penalty("l2", 0.03),
    Penalty("l1", 0.2),
    Penalty("group_lasso", 0.05, groups="in"),
    Penalty("group_lasso", 7.0, groups="out"),
]


@pytest.mark.parametrize("penalty", PENALTIES, ids=lambda p: f"{p.kind}-{p.groups}")
@pytest.mark.parametrize("n_data", [1, 1347])
def test_round_trip(penalty, n_data):
    back = prior_to_penalty(penalty_to_prior(penalty, n_data=n_data), n_data=n_data)
    assert back.kind == penalty.kind and back.groups == penalty.groups
    assert back.lam == pytest.approx(penalty.lam, rel=1e-6)  # float32 buffers


def test_known_mappings():
    """(1/N) NLL + lam r  <=>  -log p = N lam r: Normal sd 1/sqrt(2 N lam), Laplace 1/(N lam)."""
    n = 50
    assert penalty_to_prior(Penalty("l2", 0.01), n_data=n).scale.item() == pytest.approx(1.0)
    assert penalty_to_prior(Penalty("l1", 0.01), n_data=n).scale.item() == pytest.approx(2.0)
    prior = penalty_to_prior(Penalty("group_lasso", 0.04, groups="out"), n_data=n)
    assert isinstance(prior, GroupLaplace) and prior.scale.item() == pytest.approx(0.5)
    assert prior_to_penalty(GroupLaplace(0.5, groups=None)).kind == "l1"


def test_normal_log_density_is_the_penalty():
    """log p(w1) - log p(w2) = -N lam (r(w1) - r(w2)) for the L2 prior, exactly."""
    penalty, n = Penalty("l2", 0.02), 30
    scale = penalty_to_prior(penalty, n_data=n).scale
    w1, w2 = torch.randn(5), torch.randn(5)
    diff = dist.Normal(0, scale).log_prob(w1).sum() - dist.Normal(0, scale).log_prob(w2).sum()
    assert diff.item() == pytest.approx(-n * (penalty(w1) - penalty(w2)).item(), rel=1e-5)


def _prior_draws(prior, shape, num, seed=0):
    pyro.set_rng_seed(seed)
    with torch.no_grad(), pyro.plate("draws", num, dim=-len(shape) - 1):
        return prior.sample("w", shape).double()


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("groups", ["in", "out"])
def test_group_laplace_marginal(groups, centered):
    """p(w_g) ∝ exp(-||w_g|| / b): ||w_g|| ~ Gamma(d, rate 1/b) (KS, level 0.001) and each weight
    has variance (d + 1) b^2 (4 standard errors)."""
    b, shape = 0.3, (3, 5)
    d = 3 if groups == "in" else 5
    w = _prior_draws(GroupLaplace(b, groups=groups, centered=centered), shape, 20_000)
    norms = w.square().sum(dim=-2 if groups == "in" else -1).sqrt().reshape(-1).numpy()
    ks = st.kstest(norms, st.gamma(d, scale=b).cdf)
    assert ks.pvalue > 1e-3
    var = w.square().mean().item()  # the mean is 0 by symmetry
    se = w.square().reshape(-1, *shape).mean(dim=(1, 2)).std().item() / math.sqrt(20_000)
    assert abs(var - (d + 1) * b**2) < 4 * se + 1e-12


@pytest.mark.parametrize(
    ("kind", "groups", "expected"),
    [
        ("l2", None, 12 / 2),
        ("l1", None, math.sqrt(2 * 12)),
        ("group_lasso", "out", math.sqrt(12 * 13)),  # rows: P inputs per neuron
        ("group_lasso", "in", math.sqrt(12 * 8)),  # columns: n = 7 neurons
    ],
)
def test_glorot_factor_gives_variance_one_over_fan_in(kind, groups, expected):
    """The reference sheet's factors; the Bayesian prior (lam = 1/N) then has variance 1/P."""
    shape, n_data = (7, 12), 400
    assert glorot_factor(kind, shape, groups) == pytest.approx(expected)
    penalty = Penalty(kind, expected / n_data, groups)
    w = _prior_draws(penalty_to_prior(penalty, n_data=n_data), shape, 4000)
    per_draw = w.square().mean(dim=(-2, -1))
    se = per_draw.std().item() / math.sqrt(len(per_draw))
    assert abs(per_draw.mean().item() - 1 / 12) < 4 * se


def test_glorot_penalties_per_layer_and_total():
    net = psb.mlp([64, 64, 10])
    pens = glorot_penalties(net, "l1", lam=1 / 1347)
    assert pens["0"].lam == pytest.approx(math.sqrt(128) / 1347)
    assert pens["2"].lam == pytest.approx(math.sqrt(128) / 1347)  # both layers have P = 64
    manual = sum(p.lam * net.get_submodule(k).weight.abs().sum() for k, p in pens.items())
    assert total_penalty(net, pens).item() == pytest.approx(manual.item(), rel=1e-6)
    priors = penalty_priors(pens, n_data=1347)
    assert priors["0"].scale.item() == pytest.approx(1 / math.sqrt(128), rel=1e-6)


def test_penalty_values():
    w = torch.tensor([[3.0, -4.0, 0.0], [0.0, 0.0, 2.0]])
    assert Penalty("l2", 2.0)(w).item() == pytest.approx(2 * 29)
    assert Penalty("l1", 2.0)(w).item() == pytest.approx(2 * 9)
    assert Penalty("group_lasso", 1.0, groups="out")(w).item() == pytest.approx(5 + 2)
    assert Penalty("group_lasso", 1.0, groups="in")(w).item() == pytest.approx(3 + 4 + 2)


def _regression(n=100, p=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g)
    X[:, 1] += 0.5 * X[:, 0]  # correlated design: the lasso path is not a soft threshold
    beta = torch.tensor([1.5, 0.0, -1.0, 0.0, 0.5, 0.0])[:p]
    return X, X @ beta + 0.3 + 0.5 * torch.randn(n, generator=g)


def _map_fit(model, X, y, epochs, lr):
    return psb.fit(
        model, X, y, method="svi", guide="map", epochs=epochs, lr=lr,
        lr_schedule="linear_decay", progress=False, num_posterior_samples=1,
    )  # fmt: skip


def test_map_with_normal_prior_is_ridge():
    """Minimise (1/N) sum (y - Xw - b)^2 / 2 + lam ||w||^2: closed form on centred data."""
    X, y = _regression()
    lam, n = 0.05, len(y)
    bnn = psb.SparseBNN(
        torch.nn.Linear(6, 1), penalty_to_prior(Penalty("l2", lam), n_data=n),
        psb.likelihoods.Gaussian(noise=1.0),
    )  # fmt: skip
    w = _map_fit(bnn, X, y, epochs=300, lr=0.1).samples["weight"][0, 0, 0].double()
    Xc, yc = (X - X.mean(0)).double(), (y - y.mean()).double()
    exact = torch.linalg.solve(Xc.T @ Xc + 2 * n * lam * torch.eye(6, dtype=Xc.dtype), Xc.T @ yc)
    assert (w - exact).abs().max().item() < 1e-4


def test_map_with_laplace_prior_is_lasso():
    """Non-centred Laplace MAP over (w_tilde, s^2) = min_w (1/2N)||y - Xw - b||^2 + lam ||w||_1,
    scikit-learn's Lasso objective with alpha = lam. Tolerance 0.01 on coefficients of size ~1."""
    X, y = _regression()
    lam = 0.1
    bnn = psb.SparseBNN(
        torch.nn.Linear(6, 1), penalty_to_prior(Penalty("l1", lam), n_data=len(y)),
        psb.likelihoods.Gaussian(noise=1.0),
    )  # fmt: skip
    w = _map_fit(bnn, X, y, epochs=300, lr=0.2).samples["weight"][0, 0, 0].numpy()
    exact = Lasso(alpha=lam, tol=1e-10, max_iter=100_000).fit(X.numpy(), y.numpy()).coef_
    assert np.abs(w - exact).max() < 0.01
    assert np.abs(w[exact == 0]).max() < 0.01


@pytest.mark.parametrize("groups", ["in", "out"])
def test_map_with_group_laplace_is_multitask_lasso(groups):
    """A hand-written multi-output model with the group prior on the features' weight groups:
    its MAP is scikit-learn's MultiTaskLasso, (1/2N)||Y - XW||_F^2 + lam sum_j ||W_j||_2."""
    g = torch.Generator().manual_seed(1)
    n, p, m, lam = 120, 6, 3, 0.15
    X = torch.randn(n, p, generator=g)
    B = torch.zeros(p, m)
    B[0], B[2], B[3] = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.8, 0.4, 0.0]), 0.15
    Y = X @ B + 0.5 * torch.randn(n, m, generator=g)
    X, Y = X - X.mean(0), Y - Y.mean(0)
    prior = penalty_to_prior(Penalty("group_lasso", lam, groups=groups), n_data=n)
    shape = (m, p) if groups == "in" else (p, m)

    def model(x, y=None):
        w = prior.sample("w", shape)
        loc = x @ (w.T if groups == "in" else w)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(loc, 1.0).to_event(1), obs=y)

    w = _map_fit(model, X, Y, epochs=400, lr=0.1).samples["w"][0, 0]
    W = (w.T if groups == "in" else w).numpy()  # (p, m)
    exact = MultiTaskLasso(alpha=lam, fit_intercept=False, tol=1e-10, max_iter=100_000)
    exact = exact.fit(X.numpy(), Y.numpy()).coef_.T
    assert np.abs(W - exact).max() < 0.01
    dead = np.linalg.norm(exact, axis=1) == 0
    assert dead.any() and np.linalg.norm(W[dead], axis=1).max() < 0.01


def test_validation():
    with pytest.raises(ValueError, match="kind"):
        Penalty("l3", 1.0)
    with pytest.raises(ValueError, match="lam"):
        Penalty("l1", -1.0)
    with pytest.raises(ValueError, match="group_lasso needs groups"):
        Penalty("group_lasso", 1.0)
    with pytest.raises(ValueError, match="groups only applies"):
        Penalty("l1", 1.0, groups="in")
    with pytest.raises(ValueError, match="n_data"):
        penalty_to_prior(Penalty("l1", 1.0), n_data=0)
    with pytest.raises(TypeError, match="penalty"):
        penalty_to_prior("l1")
    with pytest.raises(TypeError, match="prior must be"):
        prior_to_penalty(psb.priors.Horseshoe())
    with pytest.raises(ValueError, match="GroupLaplace"):
        prior_to_penalty(psb.priors.Laplace(groups="in"))
    with pytest.raises(ValueError, match="shape"):
        glorot_factor("l1", (5,))
    with pytest.raises(ValueError, match="layers"):
        total_penalty(psb.mlp([2, 1]), {"5": Penalty("l1", 1.0)})
    with pytest.raises(ValueError, match="groups"):
        GroupLaplace(groups="rows")


def test_l1_baseline_takes_per_layer_and_glorot_factors():
    """``fit(method="l1", l1="glorot")`` penalises layer l by sqrt(2 P_l) / N (P_l the fan-in);
    a per-layer dict penalises only the layers it names: a large factor on the first layer
    shrinks its weights (mean |w| below a third of the unpenalised fit's) and not the output
    layer's."""
    x, y = psb.datasets.load("iris")
    n = x.shape[0]
    bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    glorot = psb.fit(bnn, x, y, method="l1", l1="glorot", epochs=2, progress=False)
    assert glorot.info["l1"] == pytest.approx({"0": math.sqrt(8) / n, "2": math.sqrt(16) / n})

    def mean_abs(l1):
        fit = psb.fit(bnn, x, y, method="l1", l1=l1, threshold=0.0, epochs=150, lr=0.02,
                      progress=False)  # fmt: skip
        net = fit.info["network"]
        return fit, net[0].weight.abs().mean(), net[2].weight.abs().mean()

    one_layer, first, last = mean_abs({"0": 0.05})
    _, first_free, last_free = mean_abs(0.0)
    assert one_layer.info["l1"] == {"0": 0.05, "2": 0.0}
    assert first < first_free / 3 and last > last_free / 2
    with pytest.raises(ValueError, match="l1"):
        psb.fit(bnn, x, y, method="l1", l1={"5": 0.1}, progress=False)
    with pytest.raises(ValueError, match="l1"):
        psb.fit(bnn, x, y, method="l1", l1="bayes", progress=False)
