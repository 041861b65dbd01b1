"""Numbers against theory for the SG-MCMC kernels and the SSGL prior (pyro_sparse_bnn.infer.sgmcmc).

Gaussian targets give exact answers for the discretised chains themselves: the stationary
covariance of a linear recursion ``z' = M z + noise`` solves ``S = M S M^T + Q``, so the tests
compare with the chain's own stationary law (tight tolerance) and with the posterior (a tolerance
set by the discretisation bias, which is computed, not guessed).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pyro_sparse_bnn.infer.sgmcmc import (
    EM_WEIGHTS,
    SGHMC,
    SGLD,
    SSGL,
    SSGL_SA_WEIGHTS,
    SSGL_STEP_SIZE,
    PolynomialDecay,
    RMSPreconditioner,
    SparseRateSchedule,
    inclusion_mask,
    magnitude_mask,
    ssgl_delta,
    ssgl_grad_log_prior,
    ssgl_inclusion_probability,
    ssgl_penalties,
    ssgl_sigma,
)

DTYPE = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: extra intra-op threads only add contention (10x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_sgmcmc(integrator, init, grad_fn, num_samples, *, warmup=0, thin=1, generator=None,
               hook=None):  # fmt: skip
    """Drive ``integrator`` from ``init`` (chains first): ``warmup + num_samples * thin`` steps with
    gradients ``grad_fn(w, generator)``, ``hook(k, w)`` after each; every ``thin``-th kept."""
    state = integrator.init(init)
    kept = []
    for k in range(1, warmup + num_samples * thin + 1):
        state = integrator.step(state, grad_fn(state.params[0], generator), generator)
        if hook is not None:
            hook(k, state.params[0])
        if k > warmup and (k - warmup) % thin == 0:
            kept.append(state.params[0])
    return torch.stack(kept, dim=1)


def minibatch_gradient(log_likelihood, data, batch_size=None, grad_log_prior=None):
    """``(N / n) grad sum_batch log p(y_i | w) + grad log p(w)``, the batch drawn without
    replacement at each call and shared by all chains."""
    num_data = data[0].shape[0]
    size = num_data if batch_size is None else batch_size

    def grad(w, generator):
        batch = data
        if size < num_data:
            index = torch.randperm(num_data, generator=generator)[:size]
            batch = tuple(t[index] for t in data)
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(log_likelihood(w, batch).sum(), w)
        g = g * (num_data / size)
        return g if grad_log_prior is None else g + grad_log_prior(w.detach())

    return grad


def _regression(n, d, seed, noise_sd=1.0, prior_sd=10.0, rho=0.0):
    """Gaussian linear regression with known noise: data, posterior precision A and mean."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(d)
    cov = rho ** (idx[:, None] - idx[None, :]).abs().to(DTYPE)
    x = torch.randn(n, d, generator=gen, dtype=DTYPE) @ torch.linalg.cholesky(cov).T
    beta = torch.linspace(-2.0, 3.0, d, dtype=DTYPE)
    y = x @ beta + noise_sd * torch.randn(n, generator=gen, dtype=DTYPE)
    precision = x.T @ x / noise_sd**2 + torch.eye(d, dtype=DTYPE) / prior_sd**2
    mean = torch.linalg.solve(precision, x.T @ y / noise_sd**2)
    return x, y, precision, mean


def _pooled_cov(draws):
    """Covariance over all (chain, draw) pairs of draws shaped (chains, draws, d)."""
    flat = draws.reshape(-1, draws.shape[-1])
    return torch.cov(flat.T)


def _stationary_cov(transition, noise_cov):
    """Solve S = M S M^T + Q (vec form, (I - M kron M) vec S = vec Q)."""
    m = transition.shape[0]
    kron = torch.kron(transition, transition)
    vec = torch.linalg.solve(torch.eye(m * m, dtype=DTYPE) - kron, noise_cov.reshape(-1))
    return vec.reshape(m, m)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_full_batch_sgld_matches_unadjusted_langevin_stationary_law(temperature):
    _, _, a, mean = _regression(n=100, d=3, seed=0)
    b = a @ mean
    eps = 1.0 / torch.linalg.eigvalsh(a).max().item()  # eps * lambda in (0.5, 1]: fast mixing
    chains = 200
    draws = run_sgmcmc(
        SGLD(eps, temperature=temperature),
        torch.zeros(chains, 3, dtype=DTYPE),
        lambda w, gen: b - w @ a,
        num_samples=2500,
        warmup=500,
        generator=torch.Generator().manual_seed(1),
    )
    assert draws.shape == (chains, 2500, 3) and draws.dtype == DTYPE
    exact = temperature * torch.linalg.inv(a - eps * a @ a / 2)  # T scales the noise variance
    ratio = torch.diagonal(_pooled_cov(draws)) / torch.diagonal(exact)
    assert ((ratio > 0.98) & (ratio < 1.02)).all(), ratio
    # The ULA bias here is large (variance x2 along the stiffest direction) ...
    assert (torch.diagonal(exact) / torch.diagonal(temperature * torch.linalg.inv(a)) > 1.5).all()
    # ... but a Gaussian target keeps the exact mean: within 4 Monte Carlo standard errors.
    chain_means = draws.mean(1)
    mcse = chain_means.std(0) / math.sqrt(chains)
    assert ((chain_means.mean(0) - mean).abs() < 4 * mcse).all()


@pytest.mark.parametrize("preconditioned", [False, True], ids=["sgld", "psgld-frozen"])
def test_small_step_sgld_approximates_conjugate_posterior(preconditioned):
    x, y, a, mean = _regression(n=50, d=5, seed=2, noise_sd=0.5, prior_sd=2.0, rho=0.5)
    prior_var = 2.0**2

    def log_likelihood(w, batch):
        xb, yb = batch
        return -0.5 * ((yb[:, None] - xb @ w.T) ** 2).sum(0) / 0.5**2

    estimate = minibatch_gradient(log_likelihood, (x, y), grad_log_prior=lambda w: -w / prior_var)
    lam_max = torch.linalg.eigvalsh(a).max().item()
    if preconditioned:
        # P ~ 1/|g| ~ 1/sqrt(lambda): the step is scaled by sqrt(lambda_max). P adapts during the
        # burn-in and is then frozen; left adapting, pSGLD's dropped drift term inflated these
        # variances by 10 % to 2x (more at smaller steps).
        burn_in = 3000
        integrator = SGLD(
            0.05 / math.sqrt(lam_max), preconditioner=RMSPreconditioner(adapt_until=burn_in)
        )
    else:
        # eps * lambda_max = 0.05 bounds the variance bias of SGLD by ~2.5 %.
        burn_in = 1000
        integrator = SGLD(0.05 / lam_max)
    draws = run_sgmcmc(
        integrator,
        torch.zeros(100, 5, dtype=DTYPE),
        estimate,
        num_samples=1000,
        warmup=burn_in,
        thin=2,
        generator=torch.Generator().manual_seed(3),
    )
    post_var = torch.diagonal(torch.linalg.inv(a))
    assert ((draws.mean((0, 1)) - mean).abs() <= 0.05 * mean.abs()).all()
    var_ratio = torch.diagonal(_pooled_cov(draws)) / post_var
    assert ((var_ratio > 0.75) & (var_ratio < 1.25)).all(), var_ratio


def _minibatch_problem():
    x, y, a, mean = _regression(n=1000, d=3, seed=4)

    def log_likelihood(w, batch):
        xb, yb = batch
        return -0.5 * ((yb[:, None] - xb @ w.T) ** 2).sum(0)

    def grad_log_prior(w):
        return -w / 10.0**2

    return x, y, a, mean, minibatch_gradient(log_likelihood, (x, y), 100, grad_log_prior)


def test_minibatch_variance_inflation_shrinks_with_step_size():
    x, y, a, mean, estimate = _minibatch_problem()
    per_row = x * (y - x @ mean)[:, None]
    # Covariance of the minibatch noise at the posterior mean (sampling without replacement).
    noise = 1000**2 * (1 - 100 / 1000) * torch.cov(per_row.T) / 100
    eye = torch.eye(3, dtype=DTYPE)
    inflation = {}
    for eps, steps in [(1e-4, 1500), (3e-5, 3000)]:
        draws = run_sgmcmc(
            SGLD(eps),
            mean.expand(200, 3).clone(),
            estimate,
            num_samples=steps,
            warmup=300,
            generator=torch.Generator().manual_seed(6),
        )
        observed = torch.diagonal(_pooled_cov(draws) @ a).mean().item()
        # w' - mu = (I - eps A)(w - mu) + eps * noise + sqrt(2 eps) xi, to first order in the noise.
        theory = _stationary_cov(eye - eps * a, eps**2 * noise + 2 * eps * eye)
        inflation[eps] = observed
        assert observed == pytest.approx(torch.diagonal(theory @ a).mean().item(), rel=0.08)
    assert inflation[1e-4] > 1.4 and inflation[3e-5] > 1.05
    assert inflation[1e-4] - 1 > 2 * (inflation[3e-5] - 1)


def test_full_batch_sghmc_stationary_variance():
    _, _, a, mean = _regression(n=100, d=3, seed=7)
    b = a @ mean
    lam_max = torch.linalg.eigvalsh(a).max().item()
    eta, friction = 0.05 / lam_max, 0.1
    draws = run_sgmcmc(
        SGHMC(eta, friction=friction),
        torch.zeros(200, 3, dtype=DTYPE),
        lambda w, gen: b - w @ a,
        num_samples=3000,
        warmup=1000,
        generator=torch.Generator().manual_seed(8),
    )
    # Exact law of the discretised chain: z = (w, v), v' = (1 - alpha) v - eta A w + noise,
    # w' = w + v', noise variance 2 alpha eta on both rows. Its w-block has the closed form
    # (A - eta A^2 / (2 (2 - alpha)))^-1 (derived here; alpha = 1 gives the SGLD formula).
    eye = torch.eye(3, dtype=DTYPE)
    transition = torch.cat(
        [
            torch.cat([eye - eta * a, (1 - friction) * eye], 1),
            torch.cat([-eta * a, (1 - friction) * eye], 1),
        ]
    )
    q = 2 * friction * eta * torch.cat([torch.cat([eye, eye], 1)] * 2)
    chain_cov = _stationary_cov(transition, q)[:3, :3]
    closed_form = torch.linalg.inv(a - eta * a @ a / (2 * (2 - friction)))
    assert torch.allclose(chain_cov, closed_form, rtol=1e-8, atol=1e-12)
    chain_var = torch.diagonal(chain_cov)
    post_var = torch.diagonal(torch.linalg.inv(a))
    empirical = torch.diagonal(_pooled_cov(draws))
    # Tolerances: the discretisation bias eta * lambda / (2 (2 - alpha)) is at most 1.3 % here;
    # Monte Carlo error (ESS ~ 3e4 per coordinate) is ~1 %. So 3 % against the chain's exact
    # law, and 4 % (bias + Monte Carlo) against the posterior.
    assert ((chain_var / post_var - 1).abs() < 0.014).all()
    assert torch.allclose(empirical, chain_var, rtol=0.03)
    assert torch.allclose(empirical, post_var, rtol=0.04)
    assert torch.allclose(draws.mean((0, 1)), mean, atol=0.05 * post_var.sqrt().min().item())


def test_sghmc_with_unit_friction_is_sgld():
    a = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=DTYPE)
    runs = [
        run_sgmcmc(
            integrator,
            torch.ones(4, 2, dtype=DTYPE),
            lambda w, gen: -w @ a,
            num_samples=20,
            generator=torch.Generator().manual_seed(9),
        )
        for integrator in (SGLD(0.1), SGHMC(0.1, friction=1.0))
    ]
    assert torch.equal(runs[0], runs[1])


def test_sghmc_friction_must_lie_in_the_unit_interval():
    with pytest.raises(ValueError, match="friction"):
        SGHMC(0.1, friction=1.5)


def test_schedules():
    step = SSGL_STEP_SIZE
    assert [step(k) for k in (1, 8, 1000)] == pytest.approx([1e-3, 5e-4, 1e-4])
    assert PolynomialDecay(2.0, offset=3.0, power=1.0)(1) == pytest.approx(0.5)
    omega = SSGL_SA_WEIGHTS
    assert omega(1) == 0.1 and omega(500_000) == 0.1  # the cap binds until k ~ 5.2e5
    assert omega(10**6) == pytest.approx(1000 / (100 + 10**6) ** 0.7) and omega(10**6) < 0.1
    assert EM_WEIGHTS(7) == 1.0


# ---------------------------------------------------------------------------------------------
# SSGL: every expected number below is computed independently with scipy/numpy.

W = np.array([0.05, -0.3, 1.2, 0.0, 2.5])
V0, V1, NU, LAM, A_BETA = 0.1, 10.0, 1.0, 1.0, 1.0


def _expected_e_step(w, delta, sigma):
    a = stats.norm(0, sigma * math.sqrt(V1)).pdf(w) * delta
    b = stats.laplace(0, sigma * V0).pdf(w) * (1 - delta)
    rho = a / (a + b)
    return rho, (1 - rho) / V0, rho / V1


def _positive_root(qa, qb, qc):
    roots = np.roots([qa, -qb, -qc])
    return roots[roots > 0].item()


def test_ssgl_e_step_and_m_step_against_hand_computation():
    w = torch.tensor(W, dtype=DTYPE)
    rho, k0, k1 = _expected_e_step(W, delta=0.3, sigma=0.8)
    got_rho = ssgl_inclusion_probability(w, 0.3, 0.8, V0, V1)
    np.testing.assert_allclose(got_rho.numpy(), rho, rtol=1e-10)
    got_k0, got_k1 = ssgl_penalties(got_rho, V0, V1)
    np.testing.assert_allclose(got_k0.numpy(), k0, rtol=1e-10)
    np.testing.assert_allclose(got_k1.numpy(), k1, rtol=1e-10)
    p, b = len(W), float(len(W))
    delta = (rho.sum() + A_BETA - 1) / (A_BETA + b + p - 2)
    assert ssgl_delta(got_rho, A_BETA, b).item() == pytest.approx(delta, rel=1e-12)
    r_b, ridge = np.sum(k0 * np.abs(W)), np.sum(k1 * W**2)
    regression = _positive_root(20 + p + NU, r_b, 12.3 + ridge + NU * LAM)
    classification = _positive_root(p + NU + 2, r_b, ridge + NU * LAM)
    got = ssgl_sigma(w, got_k0, got_k1, NU, LAM, rss=12.3, num_data=20)
    assert got.item() == pytest.approx(regression, rel=1e-10)
    assert ssgl_sigma(w, got_k0, got_k1, NU, LAM).item() == pytest.approx(classification, rel=1e-10)
    with pytest.raises(ValueError, match="rss"):
        ssgl_sigma(w, got_k0, got_k1, NU, LAM, rss=1.0)
    # The prior gradient is the derivative of -kappa1 w^2 / (2 sigma^2) - kappa0 |w| / sigma.
    sigma = 0.8
    expected_grad = -k1 * W / sigma**2 - k0 * np.sign(W) / sigma
    got_grad = ssgl_grad_log_prior(w, got_k0, got_k1, sigma)
    np.testing.assert_allclose(got_grad.numpy(), expected_grad, rtol=1e-10)


def test_ssgl_inclusion_probability_is_stable_in_the_tails():
    w = torch.tensor([0.0, 1e-3, 40.0, -400.0], dtype=torch.float32)
    rho = ssgl_inclusion_probability(w, 1e-4, 0.5, V0, V1)
    assert torch.isfinite(rho).all() and rho.dtype == torch.float32
    assert rho[0] < 1e-5 and rho[2] == 1.0 and rho[3] < 1e-6  # -400 is far out of both tails


@pytest.mark.parametrize("omega", [0.1, 1.0])
def test_ssgl_sa_update_matches_hand_computation(omega):
    w0 = torch.tensor(np.stack([W, -W[::-1]]), dtype=DTYPE)  # two chains
    w1 = w0 * 1.5 - 0.1
    prior = SSGL(w0, delta=0.3, sigma=0.8)
    rho0 = np.stack([_expected_e_step(row, 0.3, 0.8)[0] for row in w0.numpy()])
    np.testing.assert_allclose(prior.rho.numpy(), rho0, rtol=1e-10)
    prior.update(w1, omega, rss=torch.tensor([12.3, 4.0], dtype=DTYPE), num_data=20)
    p = len(W)
    for chain, rss in enumerate([12.3, 4.0]):
        row = w1[chain].numpy()
        rho, k0, k1 = _expected_e_step(row, 0.3, 0.8)  # E-step uses the *old* delta, sigma
        delta = (rho.sum() + A_BETA - 1) / (A_BETA + p + p - 2)
        sigma = _positive_root(
            20 + p + NU, np.sum(k0 * np.abs(row)), rss + np.sum(k1 * row**2) + NU * LAM
        )
        rho_new = (1 - omega) * rho0[chain] + omega * rho
        np.testing.assert_allclose(prior.rho[chain].numpy(), rho_new, rtol=1e-10)
        np.testing.assert_allclose(prior.kappa0[chain].numpy(), (1 - rho_new) / V0, atol=1e-12)
        np.testing.assert_allclose(prior.kappa1[chain].numpy(), rho_new / V1, atol=1e-12)
        assert prior.delta[chain].item() == pytest.approx((1 - omega) * 0.3 + omega * delta)
        assert prior.sigma[chain].item() == pytest.approx((1 - omega) * 0.8 + omega * sigma)
    if omega == 1.0:  # EM: the state is exactly the plain (unaveraged) update
        rho, k0, k1 = (torch.tensor(v) for v in _expected_e_step(w1.numpy(), 0.3, 0.8))
        assert torch.allclose(prior.rho, rho)
        assert torch.allclose(
            prior.sigma,
            ssgl_sigma(
                w1, k0, k1, NU, LAM, rss=torch.tensor([12.3, 4.0], dtype=DTYPE), num_data=20
            ),
        )


def test_sparse_rate_schedule_and_masks():
    schedule = SparseRateSchedule(0.9, damping=0.99, period=50)
    for k in (0, 50, 500, 5000):
        assert schedule(k) == pytest.approx(0.9 * (1 - 0.99 ** (k / 50)))
    assert schedule(50) == pytest.approx(0.009) and schedule(10**6) == pytest.approx(0.9)
    w = torch.tensor([[0.3, -2.0, 0.01, 0.5, -0.05], [1.0, 2.0, 3.0, -4.0, 0.0]])
    expected = torch.tensor([[True, True, False, True, False], [False, True, True, True, False]])
    assert torch.equal(magnitude_mask(w, 0.4), expected)
    assert torch.equal(magnitude_mask(w, 0.5), expected)  # round(2.5) = 2 weights pruned
    assert magnitude_mask(w, 0.0).all() and not magnitude_mask(w, 1.0).any()
    rho = torch.tensor([0.2, 0.5, 0.51, 0.99])
    assert torch.equal(inclusion_mask(rho), torch.tensor([False, False, True, True]))
    assert torch.equal(inclusion_mask(rho, 0.9), torch.tensor([False, False, False, True]))


def test_sgld_sa_large_p_small_n_regression():
    """n = 100, p = 200, AR(1) 0.6 design, beta = (3, 2, 1, 0, ...), noise variance 3.

    beta_1 and beta_2 are 12 and 8 standard errors away from 0 (conditional design variance
    (1 - 0.6^2) / (1 + 0.6^2) = 0.47, se = sqrt(3 / (100 * 0.47)) = 0.25) while beta_3 is 4:
    the first two must come out on top and in the slab, the nulls in the spike. beta_3 is
    recovered for this seed (and ranked third in 10 of 10 seeds tried) but is not asserted.
    """
    n, p, chains = 100, 200, 10
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(p)
    cov = 0.6 ** (idx[:, None] - idx[None, :]).abs().to(DTYPE)
    x = torch.randn(n, p, generator=gen, dtype=DTYPE) @ torch.linalg.cholesky(cov).T
    beta = torch.zeros(p, dtype=DTYPE)
    beta[:3] = torch.tensor([3.0, 2.0, 1.0], dtype=DTYPE)
    y = x @ beta + math.sqrt(3.0) * torch.randn(n, generator=gen, dtype=DTYPE)

    w0 = torch.zeros(chains, p, dtype=DTYPE)
    prior = SSGL(w0)

    def log_likelihood(w, batch):
        xb, yb = batch
        return -0.5 * ((yb[:, None] - xb @ w.T) ** 2).sum(0) / prior.sigma**2

    def rss(w):
        return ((y[:, None] - x @ w.T) ** 2).sum(0)

    draws = run_sgmcmc(
        SGLD(SSGL_STEP_SIZE),
        w0,
        minibatch_gradient(log_likelihood, (x, y), grad_log_prior=prior.grad_log_prior),
        num_samples=1500,
        warmup=500,
        generator=gen,
        hook=lambda k, w: prior.update(w, SSGL_SA_WEIGHTS(k), rss=rss(w), num_data=n),
    )
    post_mean = draws.mean((0, 1))
    ranked = post_mean.abs().argsort(descending=True)
    assert set(ranked[:2].tolist()) == {0, 1}
    assert ((post_mean[:2] - beta[:2]).abs() < 0.75).all()
    # The final rho is an SA average over the last ~1/omega = 10 draws, so it is noisy per chain:
    # ask for the signals in the slab in most chains and the nulls in the spike almost always.
    included = inclusion_mask(prior.rho).to(DTYPE)
    assert (included[:, :2].mean(0) >= 0.8).all()
    assert included[:, 3:].mean() < 0.01
    assert (post_mean[3:].abs() < 0.5).all()


def test_ssgl_groups_have_their_own_inclusion_rate_and_share_sigma():
    """Two blocks (e.g. two layers): the E-step uses each block's delta, the M-step gives each
    block (sum rho_g + a - 1) / (a + p_g + p_g - 2) (b defaults to the block size) and one
    sigma from all weights; with a single block this is the ungrouped update."""
    w0 = torch.tensor(np.stack([W, -W[::-1]]), dtype=DTYPE)
    w1 = w0 * 1.5 - 0.1
    prior = SSGL(w0, delta=0.3, sigma=0.8, groups=[2, 3])
    assert prior.delta.shape == (2, 2)
    prior.update(w1, 0.25)
    for chain in range(2):
        row = w1[chain].numpy()
        rho, k0, k1 = _expected_e_step(row, 0.3, 0.8)  # both blocks start at delta 0.3
        blocks = [slice(0, 2), slice(2, 5)]
        delta = [(rho[b].sum() + A_BETA - 1) / (A_BETA + 2 * len(row[b]) - 2) for b in blocks]
        sigma = _positive_root(
            len(row) + NU + 2, np.sum(k0 * np.abs(row)), np.sum(k1 * row**2) + NU * LAM
        )
        np.testing.assert_allclose(prior.delta[chain].numpy(), 0.75 * 0.3 + 0.25 * np.array(delta))
        assert prior.sigma[chain].item() == pytest.approx(0.75 * 0.8 + 0.25 * sigma)
    # The next E-step uses the per-block rates.
    expected = [
        ssgl_inclusion_probability(w1[:, b], prior.delta[:, g], prior.sigma, V0, V1)
        for g, b in enumerate([slice(0, 2), slice(2, 5)])
    ]
    rho_before = prior.rho.clone()
    prior.update(w1, 1.0)
    assert torch.allclose(prior.rho, torch.cat(expected, dim=1))
    assert not torch.allclose(prior.rho, rho_before)
    single = SSGL(w0, delta=0.3, sigma=0.8, groups=[5])
    plain = SSGL(w0, delta=0.3, sigma=0.8)
    single.update(w1, 0.5)
    plain.update(w1, 0.5)
    assert torch.allclose(single.delta[:, 0], plain.delta) and torch.equal(
        single.sigma, plain.sigma
    )
    with pytest.raises(ValueError, match="groups"):
        SSGL(w0, groups=[2, 2])


def test_ssgl_update_ignores_pruned_weights():
    """With ``active``, pruned weights have rho = 0 and leave the counts: the update equals the
    one computed on the surviving weights alone (b stays the full block size)."""
    w = torch.tensor(W, dtype=DTYPE)[None]
    active = torch.tensor([[True, False, True, False, True]])
    pruned = SSGL(w, delta=0.3, sigma=0.8)
    pruned.update(
        w * active, 1.0, rss=torch.tensor([12.3], dtype=DTYPE), num_data=20, active=active
    )
    kept = W[[0, 2, 4]]
    rho, k0, k1 = _expected_e_step(kept, 0.3, 0.8)
    delta = (rho.sum() + A_BETA - 1) / (A_BETA + len(W) + len(kept) - 2)
    sigma = _positive_root(
        20 + len(kept) + NU, np.sum(k0 * np.abs(kept)), 12.3 + np.sum(k1 * kept**2) + NU * LAM
    )
    np.testing.assert_allclose(pruned.rho[0, [0, 2, 4]].numpy(), rho, rtol=1e-10)
    assert (pruned.rho[0, [1, 3]] == 0).all()
    assert pruned.delta.item() == pytest.approx(delta, rel=1e-10)
    assert pruned.sigma.item() == pytest.approx(sigma, rel=1e-10)
