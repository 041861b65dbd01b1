"""Tests for pyro_sparse_bnn.infer.ivon: IVON against ivon-opt and a conjugate posterior, IVON-ARD
against its closed-form update, and the optimiser habits (state_dict, exceptions, accumulation)."""

from __future__ import annotations

import ivon
import pytest
import torch
from test_vadam import LinearRegression
from torch import Tensor, nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.ivon import IVON, IVONARD
from pyro_sparse_bnn.infer.ivon.step_size import top_curvature

F64 = torch.float64


def train_step(opt: IVON, loss_fn, samples: int = 1) -> None:
    """One IVON step: ``samples`` sampled blocks, each backpropagating ``loss_fn()``."""
    for _ in range(samples):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            loss_fn().backward()
    opt.step()


def regression_loss(w: Tensor, problem: LinearRegression):
    return lambda: problem.nll(w, problem.X, problem.y).mean()


def test_steps_equal_ivon_opt_on_the_same_seed() -> None:
    """Wrapped, not forked: ten steps of ours and of ``ivon.IVON`` give identical weights."""
    problem = LinearRegression()
    finals = []
    for cls in (IVON, ivon.IVON):
        w = nn.Parameter(torch.zeros(3, dtype=F64))
        opt = cls([w], lr=0.1, ess=problem.n, weight_decay=problem.lam / problem.n)
        torch.manual_seed(0)
        for _ in range(10):
            train_step(opt, regression_loss(w, problem))
        finals.append((w.detach().clone(), opt.param_groups[0]["hess"].clone()))
    assert torch.equal(finals[0][0], finals[1][0]) and torch.equal(finals[0][1], finals[1][1])


def test_conjugate_regression_reaches_the_mean_field_posterior() -> None:
    """With a Hessian that can move (beta2 = 0.99) and a decaying step, IVON's mean reaches the
    exact posterior mean within 0.1 posterior sd and its sd the mean-field optimum
    ``1 / sqrt(A_jj)`` within 10 % (Price's Hessian estimator is unbiased for a quadratic)."""
    problem = LinearRegression()
    sd = problem.A.inverse().diagonal().sqrt()
    for seed in (0, 1):
        w = nn.Parameter(torch.zeros(3, dtype=F64))
        opt = IVON([w], lr=0.2, ess=problem.n, beta2=0.99, weight_decay=problem.lam / problem.n)
        schedule = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.01, total_iters=2000)
        torch.manual_seed(seed)
        for _ in range(2000):
            train_step(opt, regression_loss(w, problem), samples=4)
            schedule.step()
        error = (w.detach() - problem.mean).abs() / sd
        ratio = opt.posterior_scale()[0] / problem.mf_var.sqrt()
        assert (error < 0.1).all(), (seed, error)
        assert ((ratio - 1).abs() < 0.1).all(), (seed, ratio)


def test_ard_update_matches_its_closed_form() -> None:
    """After a step, psi_j = (a0 + 1/2) / (b0 + (m_j^2 + sigma_j^2) / 2) with sigma_j^2 from the
    new Hessian and the previous weight decay, clamped; the weight decay becomes psi_j / ess."""
    problem = LinearRegression()
    w = nn.Parameter(torch.tensor([1.0, -0.001, 0.5], dtype=F64))
    opt = IVONARD([w], lr=0.1, ess=problem.n, a0=1.0, b0=0.5, psi_max=2.0)
    before = opt.param_groups[0]["weight_decay"].clone()
    assert torch.allclose(before, torch.full((3,), 1.0 / problem.n, dtype=F64))
    torch.manual_seed(0)
    train_step(opt, regression_loss(w, problem))
    group = opt.param_groups[0]
    variance = 1 / (problem.n * (group["hess"] + before))
    psi = (1.0 + 0.5) / (0.5 + 0.5 * (w.detach() ** 2 + variance))
    expected = psi.clamp(1e-8, 2.0)
    assert torch.allclose(opt.precision()[0], expected)
    assert torch.allclose(group["weight_decay"], expected / problem.n)
    assert expected[1] == 2.0  # the clamp is active for the near-zero weight


def test_ard_with_a_fast_hessian_stays_finite() -> None:
    """IVON keeps h + delta > 0 but lets h go negative; when ARD then lowers delta, h + delta
    turned negative and the weight noise NaN (beta2 = 0.9 on a small tanh net). The floor on h
    keeps every weight finite."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] * x[:, 1] > 0).long()
    net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2))
    opt = IVONARD(net.parameters(), lr=0.1, ess=256, beta2=0.9)
    for _ in range(400):
        train_step(opt, lambda: nn.functional.cross_entropy(net(x), y))
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert all((g["hess"] >= 0).all() for g in opt.param_groups)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ard_finds_the_relevant_inputs(seed: int) -> None:
    """Regression on 8 inputs of which 3 matter (n = 200, noise sd 0.3): the weights with
    relevance |m| / sigma > 3 are exactly those 3."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 8, generator=gen)
    w_true = torch.tensor([1.5, 0.0, -1.0, 0.0, 0.0, 0.7, 0.0, 0.0])
    y = x @ w_true + 0.3 * torch.randn(200, generator=gen)
    w = nn.Parameter(torch.zeros(8))
    opt = IVONARD([w], lr=0.1, ess=200, beta2=0.99)
    torch.manual_seed(seed)
    for _ in range(1500):
        train_step(opt, lambda: ((x @ w - y) ** 2).mean() / (2 * 0.3**2))
    assert ((opt.relevance()[0] > 3) == (w_true != 0)).all()


def test_state_dict_round_trip_continues_identically() -> None:
    """A reloaded optimiser (step count included: the momentum's bias correction needs it)
    continues exactly as the original."""
    problem = LinearRegression()

    def run(resume: bool) -> Tensor:
        w = nn.Parameter(torch.zeros(3, dtype=F64))
        opt = IVON([w], lr=0.1, ess=problem.n)
        torch.manual_seed(0)
        for _ in range(3):
            train_step(opt, regression_loss(w, problem))
        if resume:
            state, values, rng = opt.state_dict(), w.detach().clone(), torch.get_rng_state()
            w = nn.Parameter(values)
            opt = IVON([w], lr=0.5, ess=1.0)  # other options: the state dict brings them back
            opt.load_state_dict(state)
            torch.set_rng_state(rng)
            assert opt.current_step == 3
        for _ in range(3):
            train_step(opt, regression_loss(w, problem))
        return w.detach()

    assert torch.equal(run(False), run(True))


def test_means_return_when_an_exception_escapes_a_sampled_block() -> None:
    w = nn.Parameter(torch.ones(4))
    opt = IVON([w], lr=0.1, ess=10)
    with pytest.raises(RuntimeError, match="boom"), opt.sampled_params(train=True):
        assert not torch.equal(w.detach(), torch.ones(4))
        raise RuntimeError("boom")
    assert torch.equal(w.detach(), torch.ones(4))
    assert opt.state["count"] == 0  # no gradient was recorded


def test_gradient_accumulation_equals_the_full_batch() -> None:
    """Two half-batches backpropagated inside one sampled block, each scaled by 1/2, give the
    full-batch step on the same weight draw."""
    problem = LinearRegression()
    finals = []
    for parts in (1, 2):
        w = nn.Parameter(torch.zeros(3, dtype=F64))
        opt = IVON([w], lr=0.1, ess=problem.n)
        torch.manual_seed(0)
        with opt.sampled_params(train=True):
            opt.zero_grad()
            for idx in torch.arange(problem.n).chunk(parts):
                (problem.nll(w, problem.X[idx], problem.y[idx]).mean() / parts).backward()
        opt.step()
        finals.append(w.detach().clone())
    assert torch.allclose(finals[0], finals[1], atol=1e-12)


def test_bfloat16_autocast_trains() -> None:
    """Mixed precision: the forward pass in bfloat16 under autocast, IVON's state in float32;
    the network still learns a linear map (loss below a tenth of its start)."""
    torch.manual_seed(0)
    x = torch.randn(256, 5)
    y = x @ torch.randn(5, 1)
    net = nn.Linear(5, 1)
    opt = IVON(net.parameters(), lr=0.1, ess=256 * 100)
    with torch.no_grad():
        start = nn.functional.mse_loss(net(x), y).item()
    for _ in range(300):
        with opt.sampled_params(train=True):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
        opt.step()
    assert net.weight.dtype == torch.float32 and opt.param_groups[0]["hess"].dtype == torch.float32
    with torch.no_grad():
        assert nn.functional.mse_loss(net(x), y).item() < 0.1 * start


def test_float16_steps_that_overflow_are_dropped() -> None:
    """float16 autocast with a GradScaler whose first scales overflow: the scaler skips those
    steps and our IVON drops their samples, so the weights stay finite and the fit converges;
    ``ivon-opt`` alone averages the non-finite gradients into its state and ends in NaN."""
    torch.manual_seed(0)
    x = torch.randn(256, 5)
    y = x @ torch.randn(5, 1)
    finals = {}
    for cls in (IVON, ivon.IVON):
        net = nn.Linear(5, 1)
        net.load_state_dict({"weight": torch.zeros(1, 5), "bias": torch.zeros(1)})
        opt = cls(net.parameters(), lr=0.1, ess=256 * 100)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
        torch.manual_seed(1)
        for _ in range(300):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = nn.functional.mse_loss(net(x), y)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
        finals[cls] = net.weight.detach().clone()
        assert scaler.get_scale() < 2.0**40  # the first steps did overflow
    assert torch.isfinite(finals[IVON]).all() and not torch.isfinite(finals[ivon.IVON]).all()
    with torch.no_grad():
        assert nn.functional.mse_loss(x @ finals[IVON].T, y) < 0.05 * y.var()


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"lr": -0.1}, "lr"),
        ({"ess": 0}, "ess"),
        ({"hess_init": 0.0}, "hess_init"),
        ({"beta2": 1.5}, "beta2"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"mc_samples": 0}, "mc_samples"),
        ({"hess_approx": "exact"}, "hess_approx"),
    ],
)
def test_bad_arguments_name_the_argument(options: dict, name: str) -> None:
    kwargs = {"lr": 0.1, "ess": 10} | options
    with pytest.raises(ValueError, match=name):
        IVON([nn.Parameter(torch.zeros(2))], **kwargs)


def test_integer_params_are_refused() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        IVON([torch.zeros(2, dtype=torch.long)], lr=0.1, ess=10)


def test_ivonard_refuses_a_fixed_weight_decay() -> None:
    with pytest.raises(TypeError, match="weight_decay"):
        IVONARD([nn.Parameter(torch.zeros(2))], lr=0.1, ess=10, weight_decay=1e-3)
    with pytest.raises(ValueError, match="psi_max"):
        IVONARD([nn.Parameter(torch.zeros(2))], lr=0.1, ess=10, psi_min=1.0, psi_max=0.5)


def test_fit_ivon_result_holds_the_optimiser_posterior() -> None:
    """``fit(method="ivon")``: the stored draws have exactly the optimiser's mean and sd per
    weight, and IVON-ARD's result prunes by the same relevance rules as every method."""
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    fit = psb.fit(bnn, X, y, method="ivon", epochs=200, progress=False)
    draws = fit.samples["0.weight"][0]
    assert torch.allclose(draws.mean(0), fit.info["mu"]["0.weight"], atol=1e-5)
    assert torch.allclose(draws.std(0), fit.info["sigma"]["0.weight"], rtol=1e-4)
    assert fit.evaluate(X, y)["accuracy"] > 0.9
    with pytest.warns(UserWarning, match="IVON-ARD replaces"):
        ard = psb.fit(
            psb.SparseBNN(
                psb.mlp([4, 8, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical()
            ),
            X,
            y,
            method="ivon",
            ard=True,
            epochs=200,
            progress=False,
        )
    assert set(ard.posterior.relevance_rules) >= {"snr", "ard"}
    kept = sum(int(m.sum()) for m in ard.masks().values())
    assert 0 < kept < 32 + 24


def test_ivon_ard_default_masks_keep_the_predictive_budget() -> None:
    """IVON's draws are variational: where PSIS flags its LOO estimate (a Pareto k above 0.7
    here), the default masks must also hold the budget in sample, as for SVI and VADAM.
    Judged by LOO alone, this fit's masks dropped the true x0 (coefficient 1 of five between 1
    and 2, z about 10) and the pruned test NLL rose 0.148 → 0.384."""
    g = torch.Generator().manual_seed(3)
    beta = torch.zeros(20)
    beta[[0, 4, 8, 12, 16]] = torch.tensor([1.0, -1.25, 1.5, -1.75, 2.0])
    X = torch.randn(1100, 20, generator=g)
    y = X @ beta + torch.randn(1100, generator=g)
    y = (y - y[:100].mean()) / y[:100].std()
    torch.manual_seed(0)
    bnn = psb.SparseBNN(nn.Linear(20, 1), psb.priors.ARD(), psb.likelihoods.Gaussian())
    fit = psb.fit(bnn, X[:100], y[:100], method="ivon", ard=True, epochs=3000, seed=0,
                  num_posterior_samples=500, progress=False)  # fmt: skip
    assert not fit._loo_reliable()
    assert fit.masks()["weight"][0, beta != 0].all()
    full = fit.evaluate(X[100:], y[100:])["nll"]
    assert fit.evaluate(X[100:], y[100:], masked=True)["nll"] <= full + 0.02


def equicorrelated_regression(seed: int, n: int = 60, p: int = 100, rows: int = 560):
    """``rows`` rows of ``p`` inputs with correlation 0.9 and five true coefficients; noise 0.5."""
    g = torch.Generator().manual_seed(seed)
    X = 0.9**0.5 * torch.randn(rows, 1, generator=g) + 0.1**0.5 * torch.randn(rows, p, generator=g)
    beta = torch.zeros(p)
    beta[:5] = torch.tensor([1.0, -1.0, 0.5, 0.5, -0.5])
    return X, X @ beta + 0.5 * torch.randn(rows, generator=g)


def test_top_curvature_is_the_largest_hessian_eigenvalue() -> None:
    """The Hessian of a least-squares loss ``|Xw - y|^2 / (2 n s^2)`` is ``X^T X / (n s^2)``."""
    X, y = equicorrelated_regression(0)
    X, y = X[:60].double(), y[:60].double()
    w = torch.zeros(100, dtype=F64, requires_grad=True)
    got = top_curvature(lambda: (X @ w - y).pow(2).mean() / (2 * 0.25), [w])
    exact = torch.linalg.eigvalsh(X.T @ X / (60 * 0.25)).max().item()
    assert got == pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_default_step_is_stable_on_correlated_inputs(seed: int) -> None:
    """On 60 rows of 100 equicorrelated inputs the mean NLL's top curvature is about 300, and
    IVON at ``lr=0.1`` diverges (test MSE in the millions). The default step, capped at one over
    that curvature, reaches the exact posterior mean (noise known, N(0, 1) prior) within 1
    posterior sd per weight, and its test MSE within 10 % of the exact mean's."""
    X, y = equicorrelated_regression(seed)
    (x, t), (x_test, t_test) = (X[:60], y[:60]), (X[60:], y[60:])
    A = x.T @ x / 0.25 + torch.eye(100)
    exact = torch.linalg.solve(A, x.T @ t / 0.25)
    exact_mse = (x_test @ exact - t_test).pow(2).mean()
    mses = []
    for lr in (None, 0.1):
        torch.manual_seed(0)
        bnn = psb.SparseBNN(
            nn.Linear(100, 1, bias=False), psb.priors.Normal(1.0), psb.likelihoods.Gaussian(0.5)
        )
        fit = psb.fit(bnn, x, t, method="ivon", epochs=1000, lr=lr, seed=0, progress=False)
        mean = fit.info["mu"]["weight"].reshape(-1)
        mses.append((x_test @ mean - t_test).pow(2).mean())
        if lr is None:
            assert fit.info["lr"] < 0.01
            assert ((mean - exact).abs() / A.inverse().diagonal().sqrt()).max() < 1.0
    assert mses[0] <= 1.1 * exact_mse
    assert mses[1] > 100 * exact_mse  # what the fixed default of 0.1 did


class _OnceDifferentiableHalf(torch.autograd.Function):
    """``x / 2`` whose backward has no derivative of its own (no double backward)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x / 2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad / 2


def test_default_step_without_a_second_derivative_is_the_plain_default() -> None:
    """Where torch cannot differentiate the NLL twice, the curvature is unknown and the default
    step stays 0.1 (the fit runs as before the cap)."""
    import pyro
    import pyro.distributions as dist

    def model(x: Tensor, y: Tensor | None = None) -> None:
        prior = dist.Normal(0.0, 1.0).expand([3]).to_event(1)
        w = pyro.sample("w", prior, infer={"psb_weight": True})
        mean = _OnceDifferentiableHalf.apply(x @ w)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(mean, 1.0), obs=y)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g)
    y = x @ torch.tensor([0.5, 0.0, -0.5]) + 0.1 * torch.randn(50, generator=g)
    fit = psb.fit(model, x, y, method="ivon", epochs=20, progress=False)
    assert fit.info["lr"] == 0.1
    assert fit.info["mu"]["w"].isfinite().all()


def test_curvature_helpers_check_input_and_leave_the_global_rng() -> None:
    """Bad arguments are named; the power iteration draws from its own generator."""
    w = torch.zeros(2, requires_grad=True)
    state = torch.get_rng_state()
    assert top_curvature(lambda: (w * w).sum(), [w]) == pytest.approx(2.0)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="iterations"):
        top_curvature(lambda: (w * w).sum(), [w], iterations=0)
    with pytest.raises(TypeError, match="params"):
        top_curvature(lambda: (w * w).sum(), [torch.zeros(2)])
    with pytest.raises(ValueError, match="ceiling"):
        psb.infer.ivon.stable_lr(lambda: (w * w).sum(), [w], ceiling=-1.0)
