"""Tests for pyro_sparse_bnn.infer.vadam: Vadam, VOGN and VadamARD against closed-form answers."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from pyro_sparse_bnn.infer.vadam import VOGN, Vadam, VadamARD

F64 = torch.float64


def hadamard(n: int) -> Tensor:
    """Sylvester Hadamard matrix (entries +-1, orthogonal columns), n a power of two."""
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


class LinearRegression:
    """y = X w + noise with known noise sd and a N(0, 1/lam) prior on w, n = 64, d = 3.

    X's columns (pairwise correlation up to 0.6) span three Hadamard columns and the noise is
    sd times a fourth one, so it is orthogonal to X and every residual at the OLS fit is exactly
    +-sd. That makes the squared-gradient (empirical Fisher) curvature that Vadam and VOGN use
    match the true curvature X^T X / sd^2 up to the weight noise, which a random design would not
    (there the per-feature empirical Fisher is off by ~sqrt(8/n) = 35 %).
    """

    n, sd, lam = 64, 0.5, 10.0

    def __init__(self) -> None:
        h = hadamard(self.n)
        mix = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, 0.5], [0.0, 0.0, 0.5]], dtype=F64)
        self.X = h[:, 1:4] @ mix
        self.y = self.X @ torch.tensor([1.0, -1.0, 0.8], dtype=F64) + self.sd * h[:, 4]
        self.A = self.X.T @ self.X / self.sd**2 + self.lam * torch.eye(3, dtype=F64)
        self.mean = torch.linalg.solve(self.A, self.X.T @ self.y / self.sd**2)
        self.mf_var = 1 / self.A.diagonal()  # mean-field optimum; exact marginals differ

    def nll(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Per-example NLL (y - x w)^2 / (2 sd^2), without its constant."""
        return (y - x @ w) ** 2 / (2 * self.sd**2)

    def empirical_fisher_var(self) -> Tensor:
        """Fixed point of Vadam/VOGN here: s_j = mean_i E_theta[g_ij^2] at the posterior mean.

        E over theta ~ q adds sum_k x_ik^2 v_k to each squared residual, so N s exceeds the
        curvature by a few per cent (about d/n plus the prior's shrinkage of the residuals).
        """
        r2 = (self.y - self.X @ self.mean) ** 2
        var = self.mf_var
        for _ in range(100):
            s = ((r2 + self.X**2 @ var)[:, None] * self.X**2).mean(0) / self.sd**4
            var = 1 / (self.n * s + self.lam)
        return var

    def fit(self, opt_cls: type[Vadam], batch_size: int, epochs: int, **kwargs) -> Vadam:
        """Shuffled minibatches, lr decaying geometrically from 0.05 (or kwargs) to 5e-4."""
        gen = torch.Generator().manual_seed(0)
        w = torch.nn.Parameter(torch.zeros(3, dtype=F64))
        kwargs.setdefault("lr", 0.05)
        opt = opt_cls([w], num_data=self.n, prior_precision=self.lam, generator=gen, **kwargs)
        steps = epochs * (self.n // batch_size)
        decay = torch.optim.lr_scheduler.ExponentialLR(opt, (5e-4 / kwargs["lr"]) ** (1 / steps))
        for _ in range(epochs):
            order = torch.randperm(self.n, generator=gen)
            for idx in order.split(batch_size):
                x, y = self.X[idx], self.y[idx]
                if opt.per_example_grads:
                    opt.step(lambda p, xi, yi: self.nll(p[0], xi, yi), (x, y))
                else:
                    opt.step(lambda x=x, y=y: _backward(self.nll(w, x, y).mean()))
                decay.step()
        return opt


def _backward(loss: Tensor) -> Tensor:
    loss.backward()
    return loss


@pytest.fixture(scope="module")
def regression() -> LinearRegression:
    return LinearRegression()


def test_design_separates_mean_field_from_exact_marginals(regression: LinearRegression) -> None:
    exact_var = torch.linalg.inv(regression.A).diagonal()
    assert (regression.mf_var / exact_var).max() < 0.6


def test_vadam_batch_one_recovers_mean_field_optimum(regression: LinearRegression) -> None:
    opt = regression.fit(Vadam, batch_size=1, epochs=60)
    (w,) = opt.param_groups[0]["params"]
    var = opt.posterior_scale()[0] ** 2
    assert ((w.detach() - regression.mean).abs() / regression.mean.abs()).max() < 0.05
    assert ((var / regression.mf_var) - 1).abs().max() < 0.15
    assert ((var / regression.empirical_fisher_var()) - 1).abs().max() < 0.05
    assert var.dtype == F64 and opt.state[w]["exp_avg_sq"].dtype == F64


def test_minibatch_vadam_underestimates_precision_vogn_does_not(
    regression: LinearRegression,
) -> None:
    fast = {"epochs": 250, "lr": 0.1, "betas": (0.9, 0.99)}
    vadam_opt = regression.fit(Vadam, batch_size=16, **fast)
    vogn_opt = regression.fit(VOGN, batch_size=16, **fast)
    vadam_precision = vadam_opt.posterior_scale()[0] ** -2
    assert (vadam_precision / regression.A.diagonal()).max() < 0.5  # measured about 0.2
    (w,) = vogn_opt.param_groups[0]["params"]
    var = vogn_opt.posterior_scale()[0] ** 2
    assert ((w.detach() - regression.mean).abs() / regression.mean.abs()).max() < 0.05
    assert ((var / regression.mf_var) - 1).abs().max() < 0.15


def _replay(kind: str, steps: int = 3) -> tuple[Tensor, Tensor, list[Tensor], Tensor | None]:
    """The update written out from REFERENCES.md section 5, fed the same noise as the optimiser."""
    n_data, lam, prec_init, lr, b1, b2, eps, k = 10, 2.0, 5.0, 0.1, 0.8, 0.9, 1e-8, 2
    psi_min = 1e-8
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3]], dtype=F64)
    y = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    gen = torch.Generator().manual_seed(3)
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    m = torch.zeros(2, dtype=F64)
    prior = torch.full((2,), lam, dtype=F64)
    thesis = kind == "ard-thesis"
    s = torch.full((2,), (prec_init if thesis else prec_init - lam) / n_data, dtype=F64)
    losses = []
    for t in range(1, steps + 1):
        precision = (n_data * s).clamp(min=psi_min) if thesis else n_data * s + prior
        g_k, g2_k, loss_k = [], [], []
        for _ in range(k):
            theta = mu + torch.randn(2, generator=gen, dtype=F64) / precision.sqrt()
            per_example = (x @ theta - y)[:, None] * x  # gradients of 0.5 (x theta - y)^2
            loss_k.append((0.5 * (x @ theta - y) ** 2).mean())
            g_k.append(per_example.mean(0))
            g2_k.append((per_example**2).mean(0) if kind == "vogn" else per_example.mean(0) ** 2)
        losses.append(torch.stack(loss_k).mean())
        m = b1 * m + (1 - b1) * (torch.stack(g_k).mean(0) + prior / n_data * mu)
        s = b2 * s + (1 - b2) * torch.stack(g2_k).mean(0)
        shift = 0.0 if thesis else prior / n_data
        mu = mu - lr * (m / (1 - b1**t)) / ((s / (1 - b2**t)).sqrt() + shift + eps)
        if kind.startswith("ard"):
            post = (n_data * s).clamp(min=psi_min) if thesis else n_data * s + prior
            prior = (0.5 / ((mu**2 + 1 / post) / 2)).clamp(psi_min, 1e8)
    return mu, s, losses, prior if kind.startswith("ard") else None


@pytest.mark.parametrize("kind", ["vadam", "vogn", "ard-gamma", "ard-thesis"])
def test_steps_match_written_out_update(kind: str) -> None:
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3]], dtype=F64)
    y = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=F64))
    common = {
        "num_data": 10,
        "lr": 0.1,
        "betas": (0.8, 0.9),
        "prior_precision": 2.0,
        "num_particles": 2,
        "prec_init": 5.0,
        "generator": torch.Generator().manual_seed(3),
    }
    if kind == "vadam":
        opt: Vadam = Vadam([w], **common)
    elif kind == "vogn":
        opt = VOGN([w], **common)
    else:
        opt = VadamARD([w], variant=kind.split("-")[1], **common)
    losses = []
    for _ in range(3):
        if opt.per_example_grads:
            loss = opt.step(lambda p, xi, yi: 0.5 * (xi @ p[0] - yi) ** 2, (x, y))
        else:
            loss = opt.step(lambda: _backward((0.5 * (x @ w - y) ** 2).mean()))
        losses.append(loss)
    mu, s, ref_losses, prior = _replay(kind)
    torch.testing.assert_close(w.detach(), mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(opt.state[w]["exp_avg_sq"], s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.stack(losses), torch.stack(ref_losses))
    if prior is not None:
        assert isinstance(opt, VadamARD)
        torch.testing.assert_close(opt.precision()[0], prior, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["gamma", "thesis"])
def test_ard_prunes_irrelevant_features(variant: str) -> None:
    # n = 200, sd = 0.5: each feature's data precision h = N s is about 800. Theory (a0 = b0 = 0):
    # an irrelevant feature with OLS z-score |z| < 1 has psi -> infinity, one with |z| > 1 settles
    # at psi = h / (z^2 - 1) >= 100 for |z| <= 3, with |mu| / sigma = sqrt(z^2 - 1) < 3; a
    # relevant one settles near 1 / w^2. (Largest irrelevant |z| for this seed: 1.5.)
    gen = torch.Generator().manual_seed(0)
    n, sd = 200, 0.5
    X = torch.randn(n, 23, generator=gen, dtype=F64)
    w_true = torch.zeros(23, dtype=F64)
    w_true[:3] = torch.tensor([2.0, -1.5, 1.0], dtype=F64)
    y = X @ w_true + sd * torch.randn(n, generator=gen, dtype=F64)
    w = torch.nn.Parameter(torch.zeros(23, dtype=F64))
    opt = VadamARD([w], num_data=n, lr=0.1, variant=variant, per_example_grads=True, generator=gen)
    start = opt.precision()[0]
    for _ in range(800):
        opt.step(lambda p, xi, yi: (yi - xi @ p[0]) ** 2 / (2 * sd**2), (X, y))
    psi = opt.precision()[0]
    assert (psi[3:] / start[3:]).min() >= 100
    assert psi[:3].max() < 10 and (psi[:3] < 1e8).all()
    torch.testing.assert_close(psi[:3], 1 / w_true[:3] ** 2, rtol=0.2, atol=0.0)
    keep = opt.relevance()[0] > 3
    assert keep.nonzero().flatten().tolist() == [0, 1, 2]


def test_sampled_params_draws_from_posterior_and_restores() -> None:
    w = torch.nn.Parameter(torch.linspace(-1, 1, 20_000, dtype=F64))
    before = w.detach().clone()
    opt = Vadam([w], num_data=100, prec_init=4.0, generator=torch.Generator().manual_seed(1))
    with opt.sampled_params():
        z = (w.detach() - before) / 0.5
    assert torch.equal(w.detach(), before)
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.02  # 4 and 2.8 se


def test_params_restored_when_closure_raises() -> None:
    w = torch.nn.Parameter(torch.ones(3))

    def closure() -> Tensor:
        raise RuntimeError("boom")

    opt = Vadam([w], num_data=10)
    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    assert torch.equal(w.detach(), torch.ones(3))


def test_same_generator_seed_same_trajectory() -> None:
    def run() -> Tensor:
        w = torch.nn.Parameter(torch.zeros(2))
        opt = Vadam([w], num_data=5, lr=0.1, generator=torch.Generator().manual_seed(7))
        for _ in range(5):
            opt.step(lambda: _backward(((w - 1) ** 2).sum()))
        return w.detach()

    assert torch.equal(run(), run())


def test_state_dict_round_trip() -> None:
    w = torch.nn.Parameter(torch.zeros(4, dtype=F64))
    opt = VadamARD([w], num_data=10, lr=0.1)
    for _ in range(3):
        opt.step(lambda: _backward(((w - 1) ** 2).sum()))
    state = copy.deepcopy(opt.state_dict())  # load_state_dict shares same-dtype tensors
    # the noise and scratch buffers are work space, not state
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "prior_precision"}
    other = VadamARD([w], num_data=10, lr=0.1)
    other.load_state_dict(state)
    torch.testing.assert_close(other.posterior_scale()[0], opt.posterior_scale()[0])
    torch.testing.assert_close(other.precision()[0], opt.precision()[0])
    start = w.detach().clone()
    steps = []
    for optimizer in (opt, other):  # the restored optimiser takes the very same next step
        with torch.no_grad():
            w.copy_(start)
        torch.manual_seed(3)
        optimizer.step(lambda: _backward(((w - 1) ** 2).sum()))
        steps.append(w.detach().clone())
    torch.testing.assert_close(steps[0], steps[1], rtol=0, atol=0)


def test_per_group_prior_precision() -> None:
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = VadamARD([{"params": [a]}, {"params": [b], "prior_precision": 16.0}], num_data=10)
    assert [scale.tolist() for scale in opt.posterior_scale()] == [[1.0, 1.0], [0.25] * 3]
    assert [psi.tolist() for psi in opt.precision()] == [[1.0, 1.0], [16.0] * 3]
    opt.step(lambda: _backward((a.sum() + b.sum()) * 0))  # zero NLL: only the prior acts
    torch.testing.assert_close(a.detach(), torch.full((2,), 1 - 1e-3), rtol=0, atol=1e-9)
    torch.testing.assert_close(b.detach(), torch.full((3,), 1 - 1e-3), rtol=0, atol=1e-9)


def _w() -> list[Tensor]:
    return [torch.nn.Parameter(torch.zeros(2))]


BAD_ARGUMENTS: list[tuple[Callable[..., Vadam], dict, str]] = [
    (Vadam, {"lr": 0.0}, "lr"),
    (Vadam, {"lr": -1e-3}, "lr"),
    (Vadam, {"num_data": 0}, "num_data"),
    (Vadam, {"num_data": -5}, "num_data"),
    (Vadam, {"num_data": float("inf")}, "num_data"),
    (Vadam, {"num_particles": 0}, "num_particles"),
    (Vadam, {"prior_precision": 0.0}, "prior_precision"),
    (Vadam, {"prior_precision": -1.0}, "prior_precision"),
    (Vadam, {"prior_precision": float("inf")}, "prior_precision"),
    (Vadam, {"betas": (1.0, 0.999)}, "betas"),
    (Vadam, {"betas": (0.9, -0.1)}, "betas"),
    (Vadam, {"betas": (0.9,)}, "betas"),
    (Vadam, {"prec_init": 0.5}, "prec_init"),
    (Vadam, {"eps": -1.0}, "eps"),
    (VOGN, {"lr": 0.0}, "lr"),
    (VadamARD, {"a0": -0.1}, "a0"),
    (VadamARD, {"b0": -1.0}, "b0"),
    (VadamARD, {"psi_min": 0.0}, "psi_min"),
    (VadamARD, {"psi_min": 10.0, "psi_max": 1.0}, "psi_max"),
    (VadamARD, {"variant": "adam"}, "variant"),
    (VadamARD, {"num_data": 0}, "num_data"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name"), BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument(
    cls: Callable[..., Vadam], kwargs: dict, name: str
) -> None:
    kwargs = {"num_data": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        cls(_w(), **kwargs)


@pytest.mark.parametrize("kwargs", [{"num_data": True}, {"num_particles": 1.5}])
def test_arguments_of_the_wrong_type_are_type_errors(kwargs: dict) -> None:
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        Vadam(_w(), **{"num_data": 10, **kwargs})


def test_bad_group_option_names_the_argument() -> None:
    with pytest.raises(ValueError, match="lr"):
        Vadam([{"params": _w(), "lr": -1.0}], num_data=10)
    with pytest.raises(ValueError, match="psi_max"):
        VadamARD([{"params": _w(), "psi_max": 1e-9}], num_data=10)


def test_bad_closure_and_batch() -> None:
    (w,) = params = _w()
    with pytest.raises(ValueError, match="scalar"):
        Vadam(params, num_data=10).step(lambda: _backward(w.sum()) * torch.ones(2))
    with pytest.raises(ValueError, match="batch"):
        Vadam(params, num_data=10).step(lambda: _backward(w.sum()), (torch.ones(2),))
    with pytest.raises(ValueError, match="batch"):
        VOGN(params, num_data=10).step(lambda p, x: (p[0] * x).sum())
    with pytest.raises(ValueError, match="batch"):
        VOGN(params, num_data=10).step(
            lambda p, x, y: (p[0] * x).sum() + y, (torch.ones(3, 2), torch.ones(2))
        )
    with pytest.raises(TypeError, match="closure"):
        Vadam(params, num_data=10).step(None)  # type: ignore[arg-type]
