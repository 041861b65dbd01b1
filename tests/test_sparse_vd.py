"""SparseVD guide and sparse priors: exact initial values and analytic KLs, the random-label test
(an empty model), group normal-Jeffreys pruning of irrelevant inputs, weight moments."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.distributions import ard_kl, sparse_vd_kl
from pyro_sparse_bnn.guides import SparseVDGuide, sparse_vd, weight_moments
from pyro_sparse_bnn.lrt import LocalReparameterizationELBO
from pyro_sparse_bnn.priors import GroupLogUniform, ProfiledARD
from pyro_sparse_bnn.sparsity import log_alpha_masks


def digits_bnn(prior, sizes=(64, 32, 10)):
    return psb.SparseBNN(psb.mlp(list(sizes)), prior, psb.likelihoods.Categorical())


def test_guide_starts_at_the_network_and_log_sigma2():
    bnn = digits_bnn(psb.priors.LogUniform())
    guide = psb.guides.make_guide("sparse_vd", bnn)
    assert isinstance(guide, SparseVDGuide)
    x, y = torch.randn(3, 64), torch.tensor([0, 1, 2])
    guide(x, y)
    for site, weight in bnn.initial_weights().items():
        assert torch.equal(guide.loc(site), weight)
        assert guide.loc(site).data_ptr() != weight.data_ptr()  # a copy, not the model's buffer
        assert torch.allclose(guide.scale(site), torch.tensor(math.exp(-5.0)))
        assert guide.log_alpha(site).max() <= 8.0  # clipped


@pytest.mark.parametrize(
    "prior, kl", [(psb.priors.LogUniform(), sparse_vd_kl), (ProfiledARD(), ard_kl)]
)
def test_mean_field_elbo_uses_the_registered_kl(prior, kl):
    """With the likelihood hidden, TraceMeanField_ELBO's loss is exactly the sum of the analytic
    per-weight KLs of the guide's (theta, sigma): the SparseVD approximation or ARD's closed
    form."""
    bnn = digits_bnn(prior)
    guide = sparse_vd(bnn, init_log_sigma2=-4.0)
    x, y = torch.randn(3, 64), torch.tensor([0, 1, 2])
    guide(x, y)
    with torch.no_grad():
        for site in bnn.weight_sites:
            guide.loc(site).mul_(torch.rand_like(guide.loc(site)) * 2)  # spread log_alpha
    expected = sum(kl(guide.loc(s), guide.scale(s)).sum() for s in bnn.weight_sites)
    loss = TraceMeanField_ELBO().loss(poutine.block(bnn, hide=["y"]), guide, x, y)
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_fit_with_the_registered_guide():
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.LogUniform(), psb.likelihoods.Categorical())
    result = psb.fit(bnn, X, y, guide="sparse_vd", epochs=60, lr=0.05, progress=False)
    assert isinstance(result.guide, SparseVDGuide)
    assert result.evaluate(X, y)["accuracy"] > 0.9


def test_random_labels_give_an_empty_model():
    """Molchanov et al.: on randomly shuffled labels SparseVD removes (almost) every weight, the
    network cannot memorise and train accuracy stays at chance (digits, 64-100-10)."""
    X, y = psb.datasets.load("digits")
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    bnn = digits_bnn(psb.priors.LogUniform(), (64, 100, 10))
    # the paper's recipe, without KL warm-up
    result = psb.fit(bnn, X, y, guide="sparse_vd", epochs=100, lr=0.05, kl_warmup=0,
                     progress=False, num_posterior_samples=20)  # fmt: skip
    guide = result.guide
    masks = log_alpha_masks({s: (guide.loc(s), guide.scale(s)) for s in bnn.weight_sites})
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept / total <= 0.01
    assert result.evaluate(X, y)["accuracy"] < 0.2


def test_group_log_uniform_prunes_irrelevant_inputs():
    """Linear regression on 10 inputs, 3 relevant: with one log-uniform multiplier per input the
    relevant weights are confident (effective log_alpha < -5) and the irrelevant ones shrink to 0
    with effective log_alpha > -1; the means recover the coefficients."""
    pyro.set_rng_seed(0)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 10, generator=g)
    beta = torch.tensor([2.0, -1.5, 1.0])
    y = X[:, :3] @ beta + 0.5 * torch.randn(200, generator=g)
    net = torch.nn.Sequential(torch.nn.Linear(10, 1))
    bnn = psb.SparseBNN(net, GroupLogUniform(), psb.likelihoods.Gaussian(noise=0.5))
    guide = sparse_vd(bnn)
    guide(X, y)
    optimizer = torch.optim.Adam(guide.parameters(), lr=0.05)
    elbo = LocalReparameterizationELBO()
    for _ in range(500):
        optimizer.zero_grad()
        elbo.differentiable_loss(bnn, guide, X, y).backward()
        optimizer.step()
    mean, var = weight_moments(bnn, guide)["0.weight"]
    log_alpha = (var / mean.square()).log()[0]
    assert log_alpha[:3].max() < -5 and log_alpha[3:].min() > -1
    assert (mean[0, :3] - beta).abs().max() < 0.15 and mean[0, 3:].abs().max() < 0.1


def test_kl_keeps_its_slope_below_the_log_alpha_clip():
    """Below log_alpha = -8 the KL follows its asymptote -0.5 log_alpha + k1 (Molchanov et al.'s
    approximation, whose sigmoid term vanishes there), so a group scale that starts at
    log_alpha = -10 still feels the prior: d KL / d log_sigma2 = -0.5 (1 - sigmoid(-la))."""
    log_sigma2 = torch.tensor([-10.0, -14.0], requires_grad=True)
    kl = sparse_vd_kl(torch.ones(2), (0.5 * log_sigma2).exp())
    kl.sum().backward()
    la = log_sigma2.detach()
    slope = -0.5 * torch.sigmoid(-la)
    assert torch.allclose(log_sigma2.grad, slope, rtol=1e-3)
    asymptote = 0.63576 * (1 - torch.sigmoid(1.87320 + 1.48695 * la)) - 0.5 * la
    assert torch.allclose(kl.detach(), asymptote, atol=1e-4)


def test_result_relevance_is_exact_under_the_sparsevd_guide():
    """FitResult.masks / relevance / to_arviz use the guide's exact moments, not the stored draws
    (whose sampling noise floors a zero-mean weight's relevance at about 1 / sqrt(draws))."""
    X, y = psb.datasets.load("iris")
    bnn = digits_bnn(psb.priors.LogUniform(), (4, 8, 3))
    fit = psb.fit(bnn, X, y, guide="sparse_vd", epochs=60, lr=0.05, num_posterior_samples=5,
                  progress=False)  # fmt: skip
    for site, (mean, var) in weight_moments(fit.model, fit.guide).items():
        exact = mean.abs() / var.sqrt()
        assert torch.allclose(fit.relevance()[site], exact)
        assert torch.equal(fit.masks(0.5)[site], exact > 0.5)
        scores = fit.to_arviz().relevance[f"{site}_relevance"].values
        assert torch.allclose(torch.as_tensor(scores), exact)


def test_biases_under_a_bias_prior_get_exact_relevance_and_masks():
    """With ``bias_prior`` the bias sites are weight sites too: relevance ``|theta| / sigma``
    of their own guide Normal, masks for every site, and masked predictions that zero them."""
    X, y = psb.datasets.load("iris")
    torch.manual_seed(0)
    prior = psb.priors.LogUniform()
    bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), prior, psb.likelihoods.Categorical(), bias_prior=prior)
    fit = psb.fit(bnn, X, y, guide="sparse_vd", epochs=30, lr=0.05, num_posterior_samples=5,
                  progress=False)  # fmt: skip
    assert sorted(fit.masks()) == sorted(fit.weight_sites) == ["0.bias", "0.weight", "2.bias",
                                                              "2.weight"]  # fmt: skip
    for site in ("0.bias", "2.bias"):
        exact = fit.guide.loc(site).abs() / fit.guide.scale(site)
        assert torch.allclose(fit.relevance()[site], exact.detach())
    # with every site pruned, the masked network outputs zeros: uniform class probabilities
    probs = fit.predict(X[:5], masked=True, threshold=float("inf"))["probs"]
    assert torch.allclose(probs, torch.full_like(probs, 1 / 3))


@pytest.mark.slow
def test_weight_moments_match_draws():
    """Non-centred w = z * s: the product moments equal Monte Carlo moments of 1000 guide draws
    (means within 5 standard errors, variances within 25 %: the product is heavy-tailed)."""
    pyro.set_rng_seed(1)
    bnn = digits_bnn(GroupLogUniform(), (4, 6, 3))
    guide = sparse_vd(bnn, init_log_sigma2=-2.0)
    guide(torch.randn(2, 4), torch.tensor([0, 1]))
    mean, var = weight_moments(bnn, guide, num_samples=1000)["0.weight"]
    draws = psb.guides.draw(bnn, guide, torch.randn(1, 4), 1000)["0.weight"][0]
    se = (draws.var(0) / 1000).sqrt()
    assert ((draws.mean(0) - mean).abs() / se).max() < 5
    assert ((var / draws.var(0)) - 1).abs().max() < 0.25


def test_input_validation():
    with pytest.raises(ValueError, match="groups"):
        GroupLogUniform(groups=None)
    with pytest.raises(ValueError, match="init_log_sigma2"):
        sparse_vd(digits_bnn(psb.priors.LogUniform()), init_log_sigma2=float("inf"))
    with pytest.raises(TypeError, match="init_log_sigma2"):
        sparse_vd(digits_bnn(psb.priors.LogUniform()), init_log_sigma2="low")
    with pytest.raises(TypeError, match="run once"):
        weight_moments(digits_bnn(ProfiledARD()), sparse_vd(digits_bnn(ProfiledARD())))
