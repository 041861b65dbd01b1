"""FitResult against exact answers: draws from a known posterior, fixed weights, hand masks."""

import math

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.result import FitResult

NOISE = 0.5


def exact_posterior_result(num_draws=4000, seed=0):
    """A linear SparseBNN whose draws come from the exact conjugate posterior N(m, A^-1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64) + NOISE * torch.randn(
        60, generator=g, dtype=torch.float64
    )
    precision = x.T @ x / NOISE**2 + torch.eye(3, dtype=torch.float64)
    cov = torch.linalg.inv(precision)
    mean = cov @ x.T @ y / NOISE**2
    w = dist.MultivariateNormal(mean, cov).sample((num_draws,))
    bnn = psb.SparseBNN(
        torch.nn.Linear(3, 1, bias=False), psb.priors.Normal(), psb.likelihoods.Gaussian(NOISE)
    ).double()
    samples = {"weight": w.reshape(1, num_draws, 1, 3)}
    return FitResult(bnn, samples, method="exact", x=x, y=y), x, y, mean, cov


def test_predictive_mean_and_variance_match_closed_form():
    """Predictive at x*: mean x* m, variance noise^2 + x* A^-1 x*. Tolerance: 4 Monte Carlo se."""
    result, _, _, mean, cov = exact_posterior_result()
    x_new = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    pred = result.predict(x_new)
    exact_mean = x_new @ mean
    epistemic = (x_new @ cov * x_new).sum(1)
    se = (epistemic / 4000).sqrt()
    assert ((pred["mean"] - exact_mean).abs() < 4 * se).all()
    exact_sd = (NOISE**2 + epistemic).sqrt()
    assert torch.allclose(pred["std"], exact_sd, rtol=0.01)


def test_pointwise_log_likelihood_is_exact_and_nll_is_the_mixture():
    result, x, y, _, _ = exact_posterior_result(num_draws=50)
    ll = result.pointwise_log_likelihood(x, y)
    w = result.samples["weight"].reshape(50, 3)
    manual = dist.Normal(w @ x.T, NOISE).log_prob(y)
    assert ll.shape == (1, 50, 60)
    assert torch.allclose(ll[0], manual)
    nll = -(torch.logsumexp(manual, 0) - math.log(50)).mean()
    assert result.evaluate(x, y)["nll"] == pytest.approx(nll.item())


def test_vectorised_and_draw_by_draw_paths_agree():
    """A hand-written model that does not vectorise (x @ w) takes the per-draw path."""
    result, x, y, _, _ = exact_posterior_result(num_draws=20)

    def model(x, y=None):
        w = pyro.sample("weight", dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w[0], NOISE), obs=y)

    manual = FitResult(model, result.samples, method="exact", x=x, y=y)
    assert torch.allclose(
        manual.pointwise_log_likelihood(x, y), result.pointwise_log_likelihood(x, y)
    )
    assert torch.allclose(manual.predict(x)["mean"], result.predict(x)["mean"])


def test_classification_probabilities_with_fixed_weights():
    net = psb.mlp([2, 3])
    bnn = psb.SparseBNN(net, psb.priors.Normal(), psb.likelihoods.Categorical())
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    samples = {"0.weight": w.expand(2, 5, 3, 2).clone()}
    x = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    y = torch.tensor([0, 1])
    result = FitResult(bnn, samples, method="fixed", x=x, y=y)
    expected = torch.softmax(x @ w.T + bnn.net[0].bias.detach(), -1)
    assert torch.allclose(result.predict(x)["probs"], expected, atol=1e-6)
    metrics = result.evaluate(x, y)
    assert metrics["accuracy"] == pytest.approx(float((expected.argmax(1) == y).float().mean()))
    assert metrics["nll"] == pytest.approx(-expected[[0, 1], y].log().mean().item(), rel=1e-5)


def test_masks_and_compression_follow_signal_to_noise():
    result, *_ = exact_posterior_result()
    # Coefficient 2 is zero in truth; its posterior mean is within ~1 sd of zero.
    rel = psb.sparsity.relevance(result.samples["weight"]).reshape(-1)
    keep = result.masks(1.0)["weight"].reshape(-1)
    assert keep.tolist() == (rel > 1.0).tolist()
    assert keep[0] and keep[2]
    stats = result.compression(1.0)
    assert stats["n_weights"] == 3 and stats["n_kept"] == int(keep.sum())
    assert stats["compression"] == pytest.approx(3 / int(keep.sum()))
    masked = result.predict(result.x[:4], masked=True, threshold=1e9)  # prune everything
    assert torch.allclose(masked["mean"], torch.zeros(4, dtype=torch.float64))


def test_explicit_keep_masks_project_the_draws_onto_those_weights():
    """``masked`` as a mapping: the log-likelihood is that of each draw projected onto the kept
    weights (a linear model: least squares of its predictor on the kept columns), and
    ``masks(k)`` handed over gives what ``masked=True, threshold=k`` gives."""
    result, x, y, _, _ = exact_posterior_result(num_draws=50)
    keep = torch.tensor([[True, False, True]])
    draws = result.samples["weight"].reshape(50, 3)
    coef = torch.linalg.lstsq(x[:, [0, 2]], (draws @ x.T).T).solution  # (2, draws)
    w = torch.zeros(50, 3, dtype=x.dtype)
    w[:, [0, 2]] = coef.T
    manual = dist.Normal(w @ x.T, NOISE).log_prob(y)
    assert torch.allclose(result.pointwise_log_likelihood(x, y, masked={"weight": keep})[0], manual)
    by_rule = result.evaluate(x, y, masked=True, threshold=5.0)
    assert result.evaluate(x, y, masked=result.masks(5.0)) == by_rule


def test_to_arviz_groups_dims_and_loo(tmp_path):
    result, x, y, _, _ = exact_posterior_result(num_draws=400)
    idata = result.to_arviz()
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data"):
        assert group in idata.groups()
    assert idata.posterior["weight"].dims == ("chain", "draw", "weight_out", "weight_in")
    assert idata.log_likelihood["y"].shape == (1, 400, 60)
    assert torch.allclose(
        torch.from_numpy(idata.log_likelihood["y"].values), result.pointwise_log_likelihood(x, y)
    )
    assert idata.relevance["weight_kept"].dims == ("weight_out", "weight_in")
    loo = psb.arviz.loo(idata)
    # elpd_loo is below the in-sample log predictive density, and by a small p_loo (3 weights).
    lppd = (torch.logsumexp(result.pointwise_log_likelihood(x, y)[0], 0) - math.log(400)).sum()
    assert loo.elpd_loo < lppd.item()
    assert 1.5 < loo.p_loo < 5.0
    path = tmp_path / "fit.nc"
    psb.arviz.to_netcdf(idata, str(path))
    back = az.from_netcdf(path)
    assert set(back.groups()) == set(idata.groups())
    summary = psb.arviz.summary(back, var_names=["weight"])
    assert summary.shape[0] == 3


def test_sample_posterior_stored_fresh_and_neuron_masks():
    result, *_ = exact_posterior_result(num_draws=100)
    assert result.sample_posterior()["weight"].shape == (100, 1, 3)
    spaced = result.sample_posterior(5)["weight"]
    assert torch.equal(spaced[0], result.samples["weight"][0, 0])
    assert torch.equal(spaced[-1], result.samples["weight"][0, -1])
    with pytest.raises(ValueError, match="num_samples"):
        result.sample_posterior(101)
    keep = result.masks()["weight"]
    assert torch.equal(result.neuron_masks()["weight"], keep.any(0))


def test_svi_result_draws_fresh_samples_from_the_guide():
    x, y = psb.datasets.load("iris", split="train")
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    result = psb.fit(bnn, x, y, epochs=5, progress=False, num_posterior_samples=10)
    fresh = result.sample_posterior(1000)["0.weight"]
    assert fresh.shape == (1000, 3, 4)
    guide = result.guide
    loc = guide.median()["0.weight"].detach()
    scale = guide.quantiles([0.8413447])["0.weight"][0].detach() - loc  # Phi(1): loc + 1 sd
    # Mean of 1000 guide draws within 4 standard errors of the guide's location.
    assert ((fresh.mean(0) - loc).abs() < 4 * scale / 1000**0.5).all()


def test_sparse_bnn_predictions_take_the_vectorised_path():
    """A SparseBNN vectorises over draws; a model that broadcasts wrongly is detected."""
    result, x, y, _, _ = exact_posterior_result(num_draws=20)
    result.predict(x)
    assert result._predictive._vectorisable is True

    def broadcasting_model(x, y=None):
        w = pyro.sample("weight", dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
        mean = (w * x).sum(-1)  # under a draws plate this silently broadcasts draws against rows
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(mean, NOISE), obs=y)

    other = FitResult(broadcasting_model, result.samples, method="exact", x=x, y=y)
    assert torch.allclose(other.predict(x)["mean"], result.predict(x)["mean"])


def exact_loo_nll(x, y, noise=NOISE):
    """``-mean_i log p(y_i | y_-i)`` of the conjugate regression (prior N(0, I)), in closed form:
    the posterior without row ``i`` by a rank-one downdate, its predictive a Normal."""
    precision = x.T @ x / noise**2 + torch.eye(x.shape[1], dtype=x.dtype)
    total = 0.0
    for i in range(len(y)):
        a = precision - torch.outer(x[i], x[i]) / noise**2
        mean = torch.linalg.solve(a, x.T @ y - x[i] * y[i]) / noise**2
        var = noise**2 + x[i] @ torch.linalg.solve(a, x[i])
        total -= dist.Normal(x[i] @ mean, var.sqrt()).log_prob(y[i]).item()
    return total / len(y)


def test_psis_loo_matches_the_exact_leave_one_out_predictive():
    """PSIS-LOO over 4000 exact posterior draws is the closed-form LOO NLL within 0.005 nats,
    and it is above the in-sample NLL (which rewards fitting the row it predicts)."""
    result, x, y, _, _ = exact_posterior_result()
    loo = result.loo_metrics()["nll"]
    assert loo == pytest.approx(exact_loo_nll(x, y), abs=0.005)
    assert loo > result.evaluate(x, y)["nll"]


def test_default_masks_drop_the_null_coefficient_by_loo():
    """The default budget, measured by PSIS-LOO, drops the coefficient that is zero in truth (the
    in-sample NLL would count its fit to noise) and keeps both signals."""
    result, *_ = exact_posterior_result()
    assert result.masks()["weight"].reshape(-1).tolist() == [True, False, True]
    assert result.compression()["n_kept"] == 2
