"""The mean-field ELBO against the truth: a closed-form KL, the plain Monte Carlo estimate
``log p(x, z) - log q(z)`` at the same draw for every proper prior, and Monte Carlo agreement
where KLs are analytic. Pyro's ``TraceMeanField_ELBO`` is shown to be biased, not trusted."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.elbo import MeanFieldELBO
from pyro_sparse_bnn.guides import sparse_vd
from pyro_sparse_bnn.lrt import LocalReparameterizationELBO

PROPER_PRIORS = {
    "normal": psb.priors.Normal(0.5),
    "laplace": psb.priors.Laplace(0.1),
    "student_t": psb.priors.StudentT(3.0, 0.1),
    "ard": psb.priors.ARD(),
    "ard_centred_rows": psb.priors.ARD(groups="in", centered=True),
    "horseshoe": psb.priors.Horseshoe(0.1),
    "horseshoe_rows": psb.priors.Horseshoe(0.1, groups="in"),
    "regularized_horseshoe": psb.priors.RegularizedHorseshoe(0.1),
    "spike_and_slab": psb.priors.SpikeAndSlab(0.3, 0.05),
}


def log_normal_model():
    pyro.sample("s", dist.LogNormal(0.0, 1.0))


def kl_normal(m, s):
    """KL(N(m, s^2) || N(0, 1)): the negative ELBO of ``log_normal_model`` under AutoNormal."""
    return 0.5 * (m**2 + s**2 - 1) - math.log(s)


def autonormal_at(m, s):
    guide = AutoNormal(log_normal_model, init_scale=s)
    guide()
    with torch.no_grad():
        guide.locs.s.fill_(m)
    return guide


def test_negative_elbo_of_a_positive_scale_is_its_closed_form_kl():
    """A LogNormal(0, 1) latent under AutoNormal: over 4000 particles the estimate lies within
    4 standard errors of the closed form, and its gradient in the location is ``m`` within 5 %
    (its standard error is 1.4 %). TraceMeanField_ELBO misses the Jacobian ``E[log s] = m``: its
    estimate is too high by ``m`` (0.7, far outside the noise)."""
    pyro.set_rng_seed(0)
    m, s = 0.7, 0.6
    guide = autonormal_at(m, s)
    draws = torch.stack([MeanFieldELBO().differentiable_loss(log_normal_model, guide)
                         for _ in range(4000)])  # fmt: skip
    loss = draws.mean()
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(loss.item() - kl_normal(m, s)) < 4 * se
    (grad,) = torch.autograd.grad(loss, guide.locs.s)
    assert grad.item() == pytest.approx(m, rel=0.05)
    biased = sum(TraceMeanField_ELBO().loss(log_normal_model, guide) for _ in range(1000)) / 1000
    assert biased - kl_normal(m, s) == pytest.approx(m, abs=0.05)


def true_negative_elbo(model, guide, *args):
    """``log q(z) - log p(x, z)`` at one guide draw, from the two traces alone (the Delta sites
    of AutoNormal carry their log-Jacobian in ``log_prob``)."""
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return guide_trace.log_prob_sum() - model_trace.log_prob_sum()


def small_bnn(prior):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return psb.SparseBNN(psb.mlp([4, 5, 3]), prior, psb.likelihoods.Categorical()), x, y


@pytest.mark.parametrize("name", sorted(PROPER_PRIORS))
def test_trace_elbo_is_the_monte_carlo_elbo_at_each_draw(name):
    """Every proper prior with the mean-field guide under ``fit``'s ``elbo="trace"``: at the same
    random state the estimate equals ``log q - log p`` to float precision."""
    bnn, x, y = small_bnn(PROPER_PRIORS[name])
    guide = psb.guides.mean_field(bnn, init_scale=0.3)
    guide(x, y)
    for seed in range(5):
        pyro.set_rng_seed(seed)
        ours = Trace_ELBO().loss(bnn, guide, x, y)
        pyro.set_rng_seed(seed)
        truth = true_negative_elbo(bnn, guide, x, y).item()
        assert ours == pytest.approx(truth, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("name", sorted(PROPER_PRIORS))
def test_mean_field_elbo_is_unbiased_for_every_prior(name):
    """Every proper prior with the mean-field guide under the default ELBO (analytic KLs for the
    unconstrained weights, Delta KLs for the scales): the mean of 300 estimates lies within 4
    standard errors of the mean of 300 plain Monte Carlo estimates ``log q - log p``."""
    pyro.set_rng_seed(0)
    bnn, x, y = small_bnn(PROPER_PRIORS[name])
    guide = psb.guides.mean_field(bnn, init_scale=0.3)
    guide(x, y)
    assert_agrees_with_monte_carlo(MeanFieldELBO(), bnn, guide, x, y, draws=300)


def assert_agrees_with_monte_carlo(elbo, bnn, guide, x, y, draws):
    """The mean of ``draws`` estimates of ``elbo`` lies within 4 standard errors of the mean of as
    many plain Monte Carlo estimates ``log q - log p``."""
    a = torch.tensor([elbo.loss(bnn, guide, x, y) for _ in range(draws)])
    b = torch.tensor([true_negative_elbo(bnn, guide, x, y).item() for _ in range(draws)])
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4 * se, (a.mean(), b.mean(), se)


def test_unconstrained_autonormal_site_gets_its_exact_kl():
    """``w ~ Normal(1, 2)`` (4 values, no data) under AutoNormal: the Delta site's transform is the
    identity, so the ELBO uses the Normal-Normal KL in closed form: every estimate equals
    ``sum KL(N(m, s^2) || N(1, 4))`` exactly (no Monte Carlo noise), while ``Trace_ELBO``'s
    single-draw estimates scatter around it."""

    def model():
        pyro.sample("w", dist.Normal(1.0, 2.0).expand([4]).to_event(1))

    guide = AutoNormal(model, init_scale=0.5)
    guide()
    with torch.no_grad():
        guide.locs.w.copy_(torch.tensor([0.0, 1.0, 2.0, -3.0]))
    m, s = guide.locs.w.detach().double(), 0.5
    closed = (math.log(2.0 / s) + (s**2 + (m - 1.0) ** 2) / 8.0 - 0.5).sum().item()
    pyro.set_rng_seed(0)
    ours = [MeanFieldELBO().loss(model, guide) for _ in range(5)]
    assert ours == pytest.approx([closed] * 5, rel=1e-6)
    monte_carlo = torch.tensor([Trace_ELBO().loss(model, guide) for _ in range(2000)])
    assert monte_carlo.std() > 0.5
    assert abs(monte_carlo.mean() - closed) < 4 * monte_carlo.std() / math.sqrt(2000)


@pytest.mark.parametrize(
    "elbo, guide_name, prior",
    [
        (MeanFieldELBO, "sparse_vd", psb.priors.Horseshoe(0.1, groups="in")),
        (MeanFieldELBO, "sparse_vd", psb.priors.ARD()),
        (LocalReparameterizationELBO, "sparse_vd", psb.priors.Horseshoe(0.1, groups="in")),
        (LocalReparameterizationELBO, "mean_field", psb.priors.Horseshoe(0.1, groups="in")),
    ],
)
def test_analytic_kls_and_lrt_leave_the_elbo_unbiased(elbo, guide_name, prior):
    """A non-centred horseshoe or ARD prior under the SparseVD guide (analytic KL for the
    unit-scale weights, Monte Carlo terms for the transformed scales or precisions) or the
    mean-field guide (with LRT: analytic KL for the weights, the exact Delta KL for the scales):
    the mean of 400 estimates lies within 4 standard errors of the mean of 400 plain Monte
    Carlo estimates. (So ``priors.ARD`` with ``guide="sparse_vd"`` is a proper pairing.)"""
    pyro.set_rng_seed(0)
    bnn, x, y = small_bnn(prior)
    if guide_name == "sparse_vd":
        guide = sparse_vd(bnn, init_log_sigma2=-3.0)
    else:
        guide = psb.guides.mean_field(bnn, init_scale=0.2)
    guide(x, y)
    assert_agrees_with_monte_carlo(elbo(), bnn, guide, x, y, draws=400)


def test_fit_history_is_the_negative_elbo():
    """After the KL warm-up the history is the negative ELBO per row of a classifier, which
    cannot be negative (a categorical NLL and a KL are both >= 0); the final value agrees with
    an independent 200-draw estimate within 5 standard errors."""
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(
        psb.mlp([4, 8, 3]), psb.priors.Horseshoe(0.1), psb.likelihoods.Categorical()
    )
    fit = psb.fit(bnn, X, y, epochs=300, lr=0.02, kl_warmup=50, progress=False)
    history = torch.tensor(fit.info["history"][50:])
    assert (history > 0).all()
    draws = torch.tensor([true_negative_elbo(fit.model, fit.guide, X, y).item() / len(X)
                          for _ in range(200)])  # fmt: skip
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - history[-10:].mean().item()) < 5 * se + 0.05


def test_num_particles_is_validated():
    with pytest.raises(TypeError, match="num_particles"):
        MeanFieldELBO(num_particles=1.5)
    with pytest.raises(ValueError, match="num_particles"):
        MeanFieldELBO(num_particles=0)


def test_profiled_ard_prior_needs_a_normal_guide_site():
    """ProfiledARD's KL exists only in closed form against a Normal guide site: a point-mass
    guide (MAP: a Delta with no Normal behind it) is refused with a message that names the fix;
    the SparseVD and mean-field guides (AutoNormal's weights are Normal draws) fit."""
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.ProfiledARD(), psb.likelihoods.Categorical())
    with pytest.raises(ValueError, match="sparse_vd"):
        psb.fit(bnn, X, y, guide="map", epochs=2, progress=False)
    for guide in ("sparse_vd", "mean_field"):
        fit = psb.fit(bnn, X, y, guide=guide, epochs=2, progress=False)
        assert len(fit.info["history"]) == 2


def test_kl_warmup_longer_than_the_fit_warns():
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    with pytest.warns(UserWarning, match="kl_warmup=10 is longer than the 3 epochs"):
        psb.fit(bnn, X, y, epochs=3, kl_warmup=10, progress=False)
