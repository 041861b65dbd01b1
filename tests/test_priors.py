"""Shrinkage priors: marginals against closed forms or quadrature (KS tests), site structure,
group sharing and validation."""

import numpy as np
import pyro
import pytest
import scipy.stats as st
import torch
from pyro import poutine
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn import priors
from pyro_sparse_bnn.priors import WEIGHT_TAG

N = 20_000
# Kolmogorov-Smirnov critical value at level 0.001 for N draws: the tests fail by chance 1 in 1000.
KS_CRIT = st.kstwo.ppf(0.999, N)
U = (np.arange(4000) + 0.5) / 4000  # midpoint rule on (0, 1) for the mixing quantile


def draws(prior, seed=0):
    """N independent weights through the full hierarchy (one plate entry per weight)."""
    pyro.set_rng_seed(seed)
    with torch.no_grad(), pyro.plate("draws", N):
        return prior.sample("w", (1,)).reshape(-1).double().numpy()


def mixture_cdf(w, scale_at_quantile):
    """CDF of a Gaussian scale mixture: mean over the mixing quantile u of Phi(w / s(u))."""
    s = scale_at_quantile(U)
    return st.norm.cdf(np.asarray(w)[:, None] / s[None, :]).mean(axis=1)


def ks_on_grid(x, cdf):
    """KS statistic over the sample's own quantiles (200 points), with cdf evaluated exactly."""
    grid = np.quantile(x, np.linspace(0.005, 0.995, 200))
    ecdf = np.searchsorted(np.sort(x), grid, side="right") / len(x)
    return np.abs(ecdf - cdf(grid)).max()


@pytest.mark.parametrize(
    ("prior", "marginal"),
    [
        (priors.Normal(0.7), st.norm(scale=0.7)),
        (priors.Laplace(0.5), st.laplace(scale=0.5)),
        (priors.Laplace(0.5, centered=False), st.laplace(scale=0.5)),
        (priors.StudentT(df=3.0, scale=0.2), st.t(df=3.0, scale=0.2)),
        (priors.ARD(a0=2.0, b0=0.5), st.t(df=4.0, scale=np.sqrt(0.5 / 2.0))),
    ],
    ids=["normal", "laplace", "laplace-noncentred", "student-t", "ard"],
)
def test_closed_form_marginals(prior, marginal):
    assert st.kstest(draws(prior), marginal.cdf).statistic < KS_CRIT


def test_horseshoe_marginal_by_quadrature():
    """lambda = tan(pi u / 2) is the HalfCauchy(1) quantile; tau likewise for HalfCauchy(tau0)."""
    tau0 = 0.3
    v = (np.arange(400) + 0.5) / 400

    def cdf(w):
        lam = np.tan(np.pi * U[::10] / 2)
        tau = tau0 * np.tan(np.pi * v / 2)
        s = (lam[:, None] * tau[None, :]).ravel()
        return st.norm.cdf(np.asarray(w)[:, None] / s[None, :]).mean(axis=1)

    for centered in (True, False):
        x = draws(priors.Horseshoe(global_scale=tau0, centered=centered), seed=int(centered))
        assert ks_on_grid(x, cdf) < KS_CRIT


def test_spike_and_slab_marginal_by_quadrature():
    """The gate is sigmoid((logit(pi) + L) / T) with L the logistic quantile logit(u)."""
    prior = priors.SpikeAndSlab(inclusion_prob=0.3, spike_scale=0.05, slab_scale=2.0)

    def scale(u):
        gate = 1 / (1 + np.exp(-(np.log(0.3 / 0.7) + np.log(u / (1 - u))) / 0.1))
        return 0.05 + gate * (2.0 - 0.05)

    assert ks_on_grid(draws(prior), lambda w: mixture_cdf(w, scale)) < KS_CRIT


def test_regularized_horseshoe_against_independent_monte_carlo():
    """Two-sample KS against the formula simulated independently in numpy."""
    rng = np.random.default_rng(1)
    tau0, nu, s = 0.5, 4.0, 2.0
    tau = tau0 * np.abs(rng.standard_cauchy(N))
    lam = np.abs(rng.standard_cauchy(N))
    c2 = st.invgamma(nu / 2, scale=nu * s**2 / 2).rvs(N, random_state=rng)
    lam_tilde = np.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
    reference = rng.standard_normal(N) * tau * lam_tilde
    x = draws(priors.RegularizedHorseshoe(global_scale=tau0, slab_df=nu, slab_scale=s))
    assert st.ks_2samp(x, reference).pvalue > 0.001
    # The slab bounds the conditional sd: tau * lambda_tilde <= c for every draw.
    assert np.all(tau * lam_tilde <= np.sqrt(c2) * (1 + 1e-12))


def trace_of(prior, shape=(3, 5)):
    return poutine.trace(lambda: prior.sample("w", shape)).get_trace()


@pytest.mark.parametrize(
    ("prior", "sites"),
    [
        (priors.Normal(), ["w"]),
        (priors.Laplace(), ["w_variance", "w_decentered", "w"]),
        (priors.StudentT(), ["w_variance", "w_decentered", "w"]),
        (priors.ARD(), ["w_precision", "w_decentered", "w"]),
        (priors.Horseshoe(), ["w_global_scale", "w_local_scale", "w_decentered", "w"]),
        (
            priors.RegularizedHorseshoe(),
            ["w_slab_variance", "w_global_scale", "w_local_scale", "w_decentered", "w"],
        ),
        (priors.SpikeAndSlab(), ["w_gate", "w_decentered", "w"]),
        (priors.Horseshoe(centered=True), ["w_global_scale", "w_local_scale", "w"]),
    ],
)
def test_sites_are_named_and_ordered_scales_first(prior, sites):
    tr = trace_of(prior)
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample"] == sites
    weight = tr.nodes["w"]
    assert weight["infer"][WEIGHT_TAG] and weight["value"].shape == (3, 5)
    assert weight["fn"].event_shape == (3, 5)  # one site, the whole tensor as its event
    assert weight["infer"].get("_deterministic", False) == ("w_decentered" in sites)


@pytest.mark.parametrize(
    ("groups", "scale_shape"), [(None, (3, 5)), ("in", (1, 5)), ("out", (3, 1))]
)
def test_groups_share_one_scale_per_neuron(groups, scale_shape):
    tr = trace_of(priors.Horseshoe(groups=groups, centered=True))
    assert tr.nodes["w_local_scale"]["value"].shape == scale_shape
    std = tr.nodes["w"]["fn"].base_dist.scale  # the conditional sd of every weight
    tau = tr.nodes["w_global_scale"]["value"]
    expected = (tr.nodes["w_local_scale"]["value"] * tau).expand(3, 5)
    assert torch.allclose(std, expected)


@pytest.mark.parametrize("centered", [True, False])
def test_block_groups_share_one_scale_per_block_of_units(centered):
    """groups=("in", 2) on a (3, 6) weight: three scales, each for two adjacent columns (an
    attention head's columns of an output projection, say)."""
    tr = trace_of(priors.Horseshoe(groups=("in", 2), centered=centered), shape=(3, 6))
    local = tr.nodes["w_local_scale"]["value"]
    assert local.shape == (1, 3)
    scale = (local * tr.nodes["w_global_scale"]["value"]).repeat_interleave(2, dim=1).expand(3, 6)
    if centered:
        assert torch.allclose(tr.nodes["w"]["fn"].base_dist.scale, scale)
    else:
        assert torch.allclose(tr.nodes["w"]["value"], tr.nodes["w_decentered"]["value"] * scale)


def test_block_group_weights_and_their_moments_under_the_sparse_vd_guide():
    """A block whose group variable is switched off takes all its weights with it, and the
    guide's weight moments repeat each block's scale moments over its units."""
    from pyro_sparse_bnn.guides import sparse_vd, weight_moments

    bnn = psb.SparseBNN(nn.Linear(6, 2), priors.GroupLogUniform(groups=("in", 3)),
                        psb.likelihoods.Categorical())  # fmt: skip
    guide = sparse_vd(bnn)
    guide(torch.randn(1, 6), torch.tensor([0]))
    assert guide.loc("weight_local_scale").shape == (1, 2)
    with torch.no_grad():
        guide.locs.weight_local_scale_unconstrained.copy_(torch.tensor([[2.0, 0.0]]))
    mean, var = weight_moments(bnn, guide, num_samples=200)["weight"]
    theta = guide.loc("weight_decentered")
    assert torch.allclose(mean[:, :3], 2.0 * theta[:, :3], rtol=0.05)  # E[z] = 2 for block 1
    assert torch.allclose(mean[:, 3:], torch.zeros(2, 3), atol=0.01 * float(theta.abs().max()))
    log_alpha = (var / mean.square()).log()  # block 2: noise; block 1: its weights' own
    assert log_alpha[:, 3:].min() > log_alpha[:, :3].max() + 5


def test_conv_weight_groups_per_input_channel():
    tr = trace_of(priors.Laplace(groups="in"), shape=(4, 2, 3, 3))
    assert tr.nodes["w_variance"]["value"].shape == (1, 2, 1, 1)


def test_noncentred_weight_is_scale_times_standard_normal():
    tr = trace_of(priors.Horseshoe(centered=False))
    scale = tr.nodes["w_local_scale"]["value"] * tr.nodes["w_global_scale"]["value"]
    assert torch.allclose(tr.nodes["w"]["value"], tr.nodes["w_decentered"]["value"] * scale)
    assert tr.nodes["w"]["infer"]["_deterministic"]


def test_log_uniform_prior_is_improper_with_log_density_minus_log_abs_w():
    prior = priors.LogUniform()
    w = torch.tensor([0.5, -2.0])
    tr = poutine.trace(poutine.condition(lambda: prior.sample("w", (2,)), {"w": w})).get_trace()
    assert torch.allclose(tr.nodes["w"]["fn"].log_prob(w), -w.abs().log().sum())
    with pytest.raises(NotImplementedError, match="improper"):
        trace_of(prior)


def test_buffers_follow_dtype():
    prior = priors.Horseshoe(0.5).double()
    assert trace_of(prior).nodes["w"]["value"].dtype == torch.float64


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: priors.Normal(0.0), "scale"),
        (lambda: priors.Laplace(-1.0), "scale"),
        (lambda: priors.StudentT(df=0.0), "df"),
        (lambda: priors.StudentT(scale=float("inf")), "scale"),
        (lambda: priors.ARD(a0=-1.0), "a0"),
        (lambda: priors.ARD(b0=0.0), "b0"),
        (lambda: priors.Horseshoe(global_scale=0.0), "global_scale"),
        (lambda: priors.RegularizedHorseshoe(slab_df=-2.0), "slab_df"),
        (lambda: priors.SpikeAndSlab(inclusion_prob=1.0), "inclusion_prob"),
        (lambda: priors.SpikeAndSlab(inclusion_prob=-0.1), "inclusion_prob"),
        (lambda: priors.SpikeAndSlab(spike_scale=2.0, slab_scale=1.0), "spike_scale"),
        (lambda: priors.SpikeAndSlab(temperature=0.0), "temperature"),
        (lambda: priors.Horseshoe(groups="rows"), "groups"),
        (lambda: priors.Horseshoe(groups=("in", 0)), "groups"),
        (lambda: priors.Horseshoe(groups=("in", 4)).sample("w", (3, 6)), "divide"),
        (lambda: priors.Laplace().sample("w", (3, 0)), "shape"),
    ],
)
def test_bad_hyperparameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: priors.Normal("1"),
        lambda: priors.Laplace(centered=1),
        lambda: priors.Normal(True),
    ],
)
def test_wrong_types_raise_type_error(make):
    with pytest.raises(TypeError):
        make()


@pytest.mark.parametrize("logit", [-2.0, 0.0, 1.5])
def test_learned_centring_leaves_the_marginal_unchanged(logit):
    """``w = s^(1-c) z`` with ``z ~ N(0, s^c)`` is ``N(0, s)`` given ``s`` for every ``c``: the
    Laplace marginal, whatever the centring."""
    prior = priors.Laplace(0.5, centered="learned")
    with torch.no_grad():
        prior.centring_of("w", (1,))
        prior.centring["w"].fill_(logit)
    assert st.kstest(draws(prior), st.laplace(scale=0.5).cdf).statistic < KS_CRIT


def _log_joint(prior, values):
    conditioned = poutine.condition(lambda: prior.sample("w", (3,)), values)
    return poutine.trace(conditioned).get_trace().log_prob_sum()


@pytest.mark.parametrize(("logit", "centered"), [(40.0, True), (-40.0, False)])
def test_learned_centring_at_its_limits_is_the_centred_or_noncentred_density(logit, centered):
    """At ``c = 1`` the learned parameterisation's log joint is the centred one's at the same
    weight; at ``c = 0`` the non-centred one's at the same standard-normal draw."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        learned = priors.Horseshoe(0.3, centered="learned")
        with torch.no_grad():
            learned.centring_of("w", (3,)).detach()
            learned.centring["w"].fill_(logit)
        scales = {"w_global_scale": torch.tensor(0.2), "w_local_scale": torch.tensor([0.5, 2, 3])}
        value = torch.tensor([0.3, -1.2, 0.05])
        other = priors.Horseshoe(0.3, centered=centered)
        site = "w" if centered else "w_decentered"
        expected = _log_joint(other, scales | {site: value})
        got = _log_joint(learned, scales | {"w_decentered": value})
    finally:
        torch.set_default_dtype(previous)
    assert torch.allclose(got, expected, rtol=0, atol=1e-9)


def test_learned_centring_is_refused_where_there_is_no_latent_scale():
    with pytest.raises(ValueError, match="this model holds none"):
        priors.set_centring(torch.nn.ModuleList([priors.Normal(), priors.LogUniform()]), "learned")
    with pytest.raises(ValueError, match="centered must be True, False or 'learned', got 'half'"):
        priors.Horseshoe(centered="half")
