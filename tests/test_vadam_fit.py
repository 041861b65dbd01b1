"""Tests for fit(method="vadam"): VADAM, VOGN and VADAM-ARD driven by a Pyro model."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import Tensor

import pyro_sparse_bnn as psb
import pyro_sparse_bnn.infer.perturbation.training as perturbation_training
from pyro_sparse_bnn.infer.vadam import ARDOptions, Vadam, VadamARD

F64 = torch.float64


def hadamard(n: int) -> Tensor:
    """Sylvester Hadamard matrix (entries +-1, orthogonal columns), n a power of two."""
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


class Conjugate:
    """y = X w + 0.5 eps, w ~ N(0, 1/10), n = 64, d = 3, as a hand-written Pyro model.

    As in tests/test_vadam.py, the noise is a Hadamard column orthogonal to X, so every OLS
    residual is exactly +-sd and the empirical Fisher that VADAM uses equals the curvature
    X^T X / sd^2 up to the weight noise (measured fixed point: variance 0.90-0.95 x the
    mean-field optimum). The mean-field optimum of ``E_q[NLL] + beta KL`` (the posterior with
    the likelihood raised to ``1 / beta``) is mean A^-1 X^T y / (beta sd^2), variance
    1 / diag(A), with A = X^T X / (beta sd^2) + lam I.
    """

    n, sd, lam = 64, 0.5, 10.0

    def __init__(self) -> None:
        h = hadamard(self.n)
        mix = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, 0.5], [0.0, 0.0, 0.5]], dtype=F64)
        self.X = h[:, 1:4] @ mix
        self.y = self.X @ torch.tensor([1.0, -1.0, 0.8], dtype=F64) + self.sd * h[:, 4]
        self.prior = psb.priors.Normal(self.lam**-0.5).double()

    def optimum(self, beta: float = 1.0) -> tuple[Tensor, Tensor]:
        """Mean and variance of the mean-field optimum with KL weight ``beta``."""
        noise = beta * self.sd**2
        A = self.X.T @ self.X / noise + self.lam * torch.eye(3, dtype=F64)
        return torch.linalg.solve(A, self.X.T @ self.y / noise), 1 / A.diagonal()

    def model(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        w = self.prior.sample("w", (3,))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, self.sd), obs=y)


@pytest.fixture(scope="module")
def conjugate() -> Conjugate:
    return Conjugate()


@pytest.mark.parametrize(
    "options",
    [
        {"epochs": 1000, "lr": 0.03, "betas": (0.9, 0.99)},  # VOGN, full batch
        {"epochs": 60, "batch_size": 1, "lr": 0.005},  # Vadam, batch size 1
    ],
    ids=["vogn-full-batch", "vadam-batch-1"],
)
def test_recovers_mean_field_optimum_of_conjugate_regression(
    conjugate: Conjugate, options: dict
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's own Normal prior is used: no warning
        result = psb.fit(conjugate.model, conjugate.X, conjugate.y, method="vadam", **options)
    assert result.info["per_example_grads"] is (options.get("batch_size") != 1)
    assert result.info["prior_precision"]["w"] == pytest.approx(conjugate.lam)
    mean, mf_var = conjugate.optimum()
    mu, sigma = result.info["mu"]["w"], result.info["sigma"]["w"]
    assert ((mu - mean).abs() / mean.abs()).max() < 0.05
    assert ((sigma**2 / mf_var) - 1).abs().max() < 0.15
    draws = result.samples["w"]
    assert draws.shape == (1, 200, 3) and draws.dtype == F64
    torch.testing.assert_close(draws.mean((0, 1)), mu)
    torch.testing.assert_close(draws.std((0, 1)), sigma)


def test_kl_weight_tempers_the_likelihood(conjugate: Conjugate) -> None:
    """With ``kl_weight = 4`` VOGN's mean is the tempered optimum and its variance the fixed point
    of its empirical Fisher, ``1 / (N / beta * mean_i E_q[g_i^2] + lam)``, solved below by
    iteration (``E_q[g_i^2] = x_i^2 (r_i^2 + x_i^2 . var) / sd^4``, ``r_i`` the residual at the
    mean). That is 0.69-0.85 x the mean-field optimum here: the shrunk mean leaves larger
    residuals, which the empirical Fisher counts as curvature."""
    beta, c = 4.0, conjugate
    result = psb.fit(c.model, c.X, c.y, method="vadam", epochs=1000, lr=0.03,
                     betas=(0.9, 0.99), kl_weight=beta)  # fmt: skip
    mean, var = c.optimum(beta)
    sq = c.X**2
    residual2 = (c.X @ mean - c.y) ** 2
    for _ in range(100):
        var = 1 / (c.n / beta * (sq * (residual2 + sq @ var)[:, None]).mean(0) / c.sd**4 + c.lam)
    mu, sigma = result.info["mu"]["w"], result.info["sigma"]["w"]
    assert result.info["kl_weight"] == beta
    assert ((mu - mean).abs() / mean.abs()).max() < 0.05
    assert ((sigma**2 / var) - 1).abs().max() < 0.05
    assert (sigma**2 / c.optimum()[1]).min() > 2  # far from the untempered posterior


def test_prec_init_sets_the_starting_posterior(conjugate: Conjugate) -> None:
    """One full-batch step from ``prec_init = P``: ``s = b2 s0 + (1 - b2) g^2`` with
    ``N s0 = P - lam``, so the posterior sd is ``1 / sqrt(P)`` to within 0.1 % for a large P
    (the default starts at the prior, sd ``1 / sqrt(lam)``)."""
    c = conjugate
    result = psb.fit(c.model, c.X, c.y, method="vadam", epochs=1, prec_init=1e4)
    sigma = result.info["sigma"]["w"]
    assert ((sigma * 100 - 1).abs() < 1e-3).all(), sigma
    with pytest.raises(ValueError, match="prec_init"):
        psb.fit(c.model, c.X, c.y, method="vadam", prior_precision=2.0, prec_init=1.0)


class SparseRegression:
    """n = 200, sd = 0.5, 3 relevant features (2, -1.5, 1) and 20 irrelevant, ARD prior."""

    n, p, sd = 200, 23, 0.5

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.X = torch.randn(self.n, self.p, generator=gen, dtype=F64)
        self.w = torch.zeros(self.p, dtype=F64)
        self.w[:3] = torch.tensor([2.0, -1.5, 1.0], dtype=F64)
        self.y = self.X @ self.w + self.sd * torch.randn(self.n, generator=gen, dtype=F64)
        self.prior = psb.priors.ARD().double()

    def model(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        w = self.prior.sample("w", (self.p,))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, self.sd), obs=y)


@pytest.fixture(scope="module")
def ard_fit() -> tuple[SparseRegression, psb.FitResult]:
    data = SparseRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a non-centred ARD prior is recognised as ARD
        result = psb.fit(
            data.model, data.X, data.y, method="vadam", ard=True, epochs=800, lr=0.1, seed=0
        )
    return data, result


def test_ard_prunes_the_irrelevant_features(ard_fit: tuple[SparseRegression, psb.FitResult]):
    # Theory (VadamARD docstring, a0 = b0 = 0): irrelevant psi -> infinity (capped at 1e8) or
    # h / (z^2 - 1) >= 100 for an OLS z-score |z| <= 3; relevant psi -> about 1 / w^2.
    data, result = ard_fit
    psi = result.info["prior_precision"]["w"]
    assert (psi[3:] / 1.0).min() >= 100  # started at prior_precision = 1
    assert (psi[:3] < 10).all()
    torch.testing.assert_close(psi[:3], 1 / data.w[:3] ** 2, rtol=0.2, atol=0.0)
    assert result.masks()["w"].nonzero().flatten().tolist() == [0, 1, 2]
    assert result.compression(3.0)["n_kept"] == 3


def test_shared_snr_masks_are_the_mu_over_sigma_rule(
    ard_fit: tuple[SparseRegression, psb.FitResult],
) -> None:
    _, result = ard_fit
    mu, sigma = result.info["mu"]["w"], result.info["sigma"]["w"]
    torch.testing.assert_close(result.info["relevance"]["w"], mu.abs() / sigma)
    for k in (0.01, 0.1, 1.0, 3.0, 100.0):
        assert torch.equal(result.masks(k)["w"], mu.abs() > k * sigma)


def test_ard_masks_keep_the_weights_whose_prior_variance_survives(
    ard_fit: tuple[SparseRegression, psb.FitResult],
) -> None:
    """``by="ard"``: relevance is the learned prior variance ``1 / psi`` (about ``w^2`` for the
    relevant features, see above); the irrelevant precisions have passed 1e4 (ARD_THRESHOLD)."""
    _, result = ard_fit
    psi = result.info["prior_precision"]["w"]
    assert torch.equal(result.relevance("ard")["w"], 1 / psi)
    assert (psi[3:] > 1 / psb.sparsity.ARD_THRESHOLD).all()
    assert result.masks(by="ard")["w"].nonzero().flatten().tolist() == [0, 1, 2]
    assert result.compression(by="ard")["n_kept"] == 3


def test_ard_sparse_bnn_iris_end_to_end() -> None:
    torch.manual_seed(0)
    X, y = psb.datasets.load("iris", split="train")
    X_test, y_test = psb.datasets.load("iris", split="test")
    bnn = psb.SparseBNN(
        psb.mlp([4, 8, 3]),
        psb.priors.ARD(),
        psb.likelihoods.Categorical(),
        bias_prior=psb.priors.ARD(),
    )
    result = psb.fit(bnn, X, y, method="vadam", ard=True, epochs=800, lr=0.03)  # VOGN
    assert result.method == "vadam" and sorted(result.weight_sites) == sorted(result.info["mu"])
    assert len(result.weight_sites) == 4  # two weights and two biases, 67 parameters
    metrics = result.evaluate(X_test, y_test)
    assert metrics["accuracy"] >= 0.9 and metrics["nll"] < 0.4
    probs = result.predict(X_test)["probs"]
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(X_test)))
    assert 0 < result.compression(3.0)["n_kept"] < result.compression(1.0)["n_kept"] < 30
    assert result.evaluate(X_test, y_test, masked=True, threshold=1.0)["accuracy"] >= 0.9
    idata = result.to_arviz()
    assert idata.posterior["0.weight"].shape == (1, 200, 8, 4)
    assert idata.log_likelihood["y"].shape == (1, 200, len(X))
    psi = result.info["prior_precision"]
    assert set(psi) == set(result.weight_sites) and all((p > 0).all() for p in psi.values())


def test_point_estimates_for_biases_and_learned_noise() -> None:
    # Gaussian() learns the noise sd: VADAM fits it (and the plain-parameter bias) as a point
    # estimate of E_q[NLL] - log p(noise) / N. With n = 400 and posterior sd ~ 0.015 that is the
    # OLS residual sd (plus < 1 % from the weight noise and the prior), and the bias is OLS's.
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(400, 2, generator=gen)
    y = X @ torch.tensor([1.0, -0.5]) + 2.0 + 0.3 * torch.randn(400, generator=gen)
    design = torch.cat([X, torch.ones(400, 1)], 1)
    ols = torch.linalg.lstsq(design, y[:, None]).solution.squeeze(1)
    residual_sd = (y - design @ ols).pow(2).mean().sqrt()
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp([2, 1]), psb.priors.Normal(), psb.likelihoods.Gaussian())
    before = [p.detach().clone() for p in bnn.parameters()]
    result = psb.fit(bnn, X, y, method="vadam", epochs=400, lr=0.05, betas=(0.9, 0.99))
    noise = result.info["point_estimates"]["noise"]
    assert abs(noise / residual_sd - 1) < 0.02
    assert abs(result.model.net[0].bias - ols[2]) < 0.02
    torch.testing.assert_close(result.info["mu"]["0.weight"][0], ols[:2], rtol=0.03, atol=0.0)
    assert torch.equal(result.samples["noise"][0, 0], noise)
    assert all(torch.equal(a, b) for a, b in zip(before, bnn.parameters(), strict=True))


def test_replaced_prior_warns_and_names_the_sites() -> None:
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    with pytest.warns(UserWarning, match=r"replaces the model's prior on weight sites \['0.w"):
        psb.fit(bnn, X, y, method="vadam", epochs=1, progress=False)
    normal = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    with pytest.warns(UserWarning, match="overrides the precision"):
        psb.fit(normal, X, y, method="vadam", epochs=1, prior_precision=4.0, progress=False)


def test_same_seed_same_result() -> None:
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    a, b = (psb.fit(bnn, X, y, method="vadam", epochs=5, seed=3, progress=False) for _ in "ab")
    assert torch.equal(a.samples["0.weight"], b.samples["0.weight"])


def test_models_vadam_cannot_fit_raise() -> None:
    X, y = torch.randn(10, 2), torch.randn(10)

    def untagged(x: Tensor, y: Tensor | None = None) -> Tensor:
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)

    def unplated(x: Tensor, y: Tensor | None = None) -> Tensor:
        w = psb.priors.Normal().sample("w", (2,))
        return pyro.sample("y", dist.Normal(x @ w, 1.0).to_event(1), obs=y)

    with pytest.raises(ValueError, match="no weight sites"):
        psb.fit(untagged, X, y, method="vadam", epochs=1)
    with pytest.raises(ValueError, match=r"pyro\.plate over the rows"):
        psb.fit(unplated, X, y, method="vadam", epochs=1)


BAD_OPTIONS = [
    ({"lr": -0.1}, ValueError, "lr"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"num_particles": 0}, ValueError, "num_particles"),
    ({"prior_precision": 0.0}, ValueError, "prior_precision"),
    ({"prior_precision": -2.0}, ValueError, "prior_precision"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"batch_size": -1}, ValueError, "batch_size"),
    ({"betas": (0.9, 1.0)}, ValueError, "betas"),
    ({"kl_weight": 0.0}, ValueError, "kl_weight"),
    ({"kl_weight": float("nan")}, ValueError, "kl_weight"),
    ({"num_posterior_samples": 1}, ValueError, "num_posterior_samples"),
    ({"ard": "yes"}, TypeError, "ard"),
    ({"per_example_grads": 1}, TypeError, "per_example_grads"),
    ({"callback": 3}, TypeError, "callback"),
    ({"prec_init": -1.0}, ValueError, "prec_init"),
    ({"lr_schedule": "cosine"}, ValueError, "lr_schedule"),
]


@pytest.mark.parametrize(
    ("options", "name"),
    [({"variant": "adam"}, "variant"), ({"a0": -1.0}, "a0"), ({"b0": -1.0}, "b0")],
)
def test_ard_options_cannot_be_built_invalid(options: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ARDOptions(**options)


@pytest.mark.parametrize(("options", "error", "name"), BAD_OPTIONS)
def test_bad_arguments_raise_before_any_work(
    options: dict, error: type[Exception], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the arguments were checked")

    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    monkeypatch.setattr(perturbation_training, "_inspect", no_work)
    monkeypatch.setattr(perturbation_training, "copy", SimpleNamespace(deepcopy=no_work))
    with pytest.raises(error, match=name):
        psb.fit(bnn, X, y, method="vadam", **options)


def test_optimiser_classes_match_options() -> None:
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.ARD(), psb.likelihoods.Categorical())
    with pytest.warns(UserWarning, match="replaces"):
        plain = psb.fit(bnn, X, y, method="vadam", epochs=1, progress=False, prior_precision=2.0)
    thesis = ARDOptions(variant="thesis")
    ard = psb.fit(bnn, X, y, method="vadam", ard=thesis, epochs=1, progress=False)
    assert type(plain.info["optimizer"]) is Vadam and plain.info["variant"] is None
    assert isinstance(ard.info["optimizer"], VadamARD) and ard.info["optimizer"].variant == "thesis"
