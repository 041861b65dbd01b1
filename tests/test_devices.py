"""Every path runs where the data are: priors, SparseBNN, fit_svi, the loader fit, predict and
to_arviz on each available device (CPU always; CUDA when present), checked against theory or a
plain-torch computation of the same quantity."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.utils.data import DataLoader, TensorDataset

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.streaming import fit_svi_loader

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


def on(device, *tensors):
    return [t.to(device) for t in tensors]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("prior", "mean_abs", "sd_abs"),
    [
        # Laplace(0, b): |w| ~ Exponential with mean b and sd b.
        (psb.priors.Laplace(0.5), 0.5, 0.5),
        # Student-t, 3 df: E|w| = 2 sqrt(3) / pi, E w^2 = 3.
        (psb.priors.StudentT(df=3.0), 2 * math.sqrt(3) / math.pi, math.sqrt(3 - 12 / math.pi**2)),
        # Normal(0, 2): E|w| = 2 sqrt(2 / pi).
        (psb.priors.Normal(2.0), 2 * math.sqrt(2 / math.pi), 2 * math.sqrt(1 - 2 / math.pi)),
    ],
)
def test_prior_draws_live_on_the_device_with_the_right_marginal(device, prior, mean_abs, sd_abs):
    """20,000 draws in float64 on ``device``: every site is there, and the mean of |w| is within
    4 standard errors of the marginal's."""
    prior = prior.to(device=device, dtype=torch.float64)
    pyro.set_rng_seed(0)
    trace = poutine.trace(lambda: prior.sample("w", (20_000,))).get_trace()
    for node in trace.stochastic_nodes:
        value = trace.nodes[node]["value"]
        assert value.device.type == device and value.dtype == torch.float64
    w = trace.nodes["w"]["value"]
    assert abs(w.abs().mean().item() - mean_abs) < 4 * sd_abs / math.sqrt(w.numel())


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_bnn_log_likelihood_on_device_matches_plain_torch(device):
    """Conditioned on its weights, the model's log p(y | x) is sum_i log softmax(net(x_i))[y_i]
    computed with plain torch on the CPU (float32 round-off, 1e-4)."""
    torch.manual_seed(0)
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 6, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    weights = {k: torch.randn(v.shape) for k, v in bnn.initial_weights().items()}
    bnn = bnn.to(device)
    on_device = {k: v.to(device) for k, v in weights.items()}
    trace = poutine.trace(poutine.condition(bnn, on_device)).get_trace(*on(device, X, y))
    got = trace.nodes["y"]["fn"].log_prob(trace.nodes["y"]["value"]).sum()
    assert got.device.type == device
    scales = {
        k: trace.nodes[f"{k}_local_scale"]["value"] * trace.nodes[f"{k}_global_scale"]["value"]
        for k in bnn.weight_sites
    }
    w0 = (weights["0.weight_decentered"] * scales["0.weight"].cpu()).T
    w2 = (weights["2.weight_decentered"] * scales["2.weight"].cpu()).T
    net = bnn.net.cpu()
    logits = torch.relu(X @ w0 + net[0].bias) @ w2 + net[2].bias
    expected = torch.log_softmax(logits, -1).gather(1, y[:, None]).sum()
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_fit_svi_on_device_reaches_the_map_estimate(device):
    """With a point-mass guide, SVI with a Normal(0, 1) prior and unit noise finds the ridge
    solution (X'X + I) w = X'y with the bias unpenalised, solved in float64 (tolerance 1e-3)."""
    X, y, _ = psb.datasets.sparse_regression(n=100, p=5, seed=2, dtype=torch.float64)
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp([5, 1]), psb.priors.Normal(1.0), psb.likelihoods.Gaussian(1.0))
    result = psb.fit(
        bnn,
        *on(device, X, y),
        guide="map",
        epochs=400,
        lr=0.1,
        lr_schedule="linear_decay",
        progress=False,
    )
    design = torch.cat([X, torch.ones(100, 1, dtype=torch.float64)], 1)
    penalty = torch.diag(torch.tensor([1.0] * 5 + [0.0], dtype=torch.float64))
    solution = torch.linalg.solve(design.T @ design + penalty, design.T @ y)
    weight = result.samples["0.weight"]
    assert weight.device.type == device
    torch.testing.assert_close(weight[0, 0].reshape(-1).cpu(), solution[:5], rtol=0, atol=1e-3)
    torch.testing.assert_close(
        result.model.net[0].bias.detach().cpu(), solution[5:], rtol=0, atol=1e-3
    )


@pytest.fixture(scope="module", params=DEVICES)
def classifier_fit(request):
    """A short mean-field fit of an iris classifier on the device (its numbers are not checked,
    only what predictions and InferenceData compute from its draws)."""
    device = request.param
    X, y = psb.datasets.load("iris")
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp([4, 5, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    loader = DataLoader(TensorDataset(X, y), batch_size=56, shuffle=True)
    result = fit_svi_loader(
        bnn, loader, epochs=3, num_posterior_samples=20, device=device, progress=False
    )
    return device, result, X, y


def draw_log_probs(result, X):
    """Per draw, log softmax of the network at X, computed with plain torch on the CPU."""
    net = result.model.net
    rows = []
    for s in range(result.num_draws):
        w0, w2 = (result.samples[k][0, s].cpu() for k in ("0.weight", "2.weight"))
        hidden = torch.relu(X @ w0.T + net[0].bias.detach().cpu())
        rows.append(torch.log_softmax(hidden @ w2.T + net[2].bias.detach().cpu(), -1))
    return torch.stack(rows)


def test_loader_fit_trains_on_the_requested_device(classifier_fit):
    device, result, _, _ = classifier_fit
    params = list(result.guide.parameters()) + list(result.model.parameters())
    assert {p.device.type for p in params} == {device}
    assert result.x.device.type == device and len(result.info["history"]) == 3


def test_predict_on_device_averages_the_draws_probabilities(classifier_fit):
    """``predict`` is the mean over draws of softmax(net(x)) (float32 round-off, 1e-5)."""
    device, result, X, _ = classifier_fit
    probs = result.predict(X.to(device))["probs"]
    assert probs.device.type == device
    expected = draw_log_probs(result, X).exp().mean(0)
    torch.testing.assert_close(probs.cpu(), expected, rtol=0, atol=1e-5)


def test_to_arviz_from_a_device_result_has_the_draws_log_likelihood(classifier_fit):
    """The log_likelihood group holds log softmax(net(x_i))[y_i] per draw (1e-5)."""
    device, result, X, y = classifier_fit
    idata = result.to_arviz(X.to(device), y.to(device))
    got = torch.as_tensor(idata.log_likelihood["y"].values)
    expected = draw_log_probs(result, X).gather(2, y.expand(result.num_draws, -1)[..., None])
    torch.testing.assert_close(got[0], expected[..., 0], rtol=0, atol=1e-5)
    assert idata.observed_data["y"].values.tolist() == y.tolist()


def _conjugate(device):
    """Known-noise regression (n = 60, d = 3, float64) on ``device`` and its exact posterior."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([1.5, -2.0, 1.0], dtype=torch.float64) + 0.5 * torch.randn(
        60, generator=gen, dtype=torch.float64
    )
    precision = x.T @ x / 0.25 + torch.eye(3, dtype=torch.float64)
    mean = torch.linalg.solve(precision, x.T @ y / 0.25)
    prior = psb.priors.Normal(1.0).to(device=device, dtype=torch.float64)

    def model(x, y=None):
        w = prior.sample("w", (3,))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", pyro.distributions.Normal(x @ w, 0.5), obs=y)

    sd = torch.linalg.inv(precision).diagonal().sqrt()
    return model, *on(device, x, y), mean, sd


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("nuts", {"num_chains": 2, "num_samples": 300, "warmup": 200}),
        ("sgld", {"step_size": 1e-4, "num_chains": 20, "warmup": 2000, "num_samples": 500}),
        ("vadam", {"epochs": 600}),  # its defaults: lr 0.1, decaying
        ("ivon", {"epochs": 600, "beta2": 0.99}),  # a Hessian that learns (docs/ivon.md)
        (
            "svi",
            {
                "epochs": 1500,
                "lr": 0.02,
                "lr_schedule": "linear_decay",
                "num_posterior_samples": 2000,
            },
        ),
    ],
)
def test_every_inference_family_runs_on_the_device(device, method, options):
    """Each family's posterior mean of a conjugate regression lies within 0.2 posterior sd of the
    exact one (the Gaussian mean-field optimum has the exact mean), computed on ``device``."""
    model, x, y, mean, sd = _conjugate(device)
    fit = psb.fit(model, x, y, method=method, seed=0, progress=False, **options)
    draws = fit.samples["w"]
    assert draws.device.type == device and draws.dtype == torch.float64
    error = (draws.reshape(-1, 3).mean(0).cpu() - mean).abs() / sd
    assert (error < 0.2).all(), error


@pytest.mark.parametrize("device", DEVICES)
def test_sparsevd_with_lrt_prunes_on_the_device(device):
    """SparseVD + local reparameterisation trains on ``device``; the pruned network lives there
    and equals the masked posterior-mean network (1e-5)."""
    X, y = on(device, *psb.datasets.load("iris"))
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.LogUniform(), psb.likelihoods.Categorical())
    fit = psb.fit(bnn, X, y, guide="sparse_vd", elbo="lrt", epochs=150, lr=0.05, progress=False)
    small = fit.prune()
    assert {p.device.type for p in small.parameters()} == {device}
    means = {k: m for k, (m, _) in fit.weight_moments().items()}
    masked = psb.prune.masked_network(fit.model.net, means, fit.masks())
    with torch.no_grad():
        assert (small(X) - masked(X)).abs().max() < 1e-5
    assert fit.evaluate(X, y)["accuracy"] > 0.9
