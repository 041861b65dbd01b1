"""ScaLa/ScaLP: the profiles' sums, bounded forward and update variance as the width grows
(100 to 10000), the MAP of the ScaLP prior against its closed form, and neuron pruning."""

import math

import numpy as np
import pyro
import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.priors import PROFILES, ScaLP, scaling_factors
from pyro_sparse_bnn.prune import scalp_prune
from pyro_sparse_bnn.sparsity import outgoing_norms, scalp_masks

WIDTHS = [100, 1000, 10_000]


def test_profiles_sums_and_order():
    for n in WIDTHS:
        assert scaling_factors(n, "fan_in").double().square().sum().item() == pytest.approx(1.0)
        partial = sum(1 / k**2 for k in range(1, n + 1)) * 6 / math.pi**2
        inverse = scaling_factors(n, "inverse").double()
        assert inverse.square().sum().item() == pytest.approx(partial, rel=1e-6)
    for profile in ("inverse", "inverse_sqrt_log"):
        sigma = scaling_factors(10_000, profile)
        assert (sigma[1:] < sigma[:-1]).all()  # strictly decreasing with the neuron index
    # sum_{k>=1} sigma_k^2 -> 1; the log profile's tail is 1 / (C log(n + 1)), slow but finite
    tail = 1 / (2.109742801236891 * math.log(10_001.5))
    total = scaling_factors(10_000, "inverse_sqrt_log").double().square().sum().item()
    assert total == pytest.approx(1 - tail, abs=1e-4)


def _layer_draw(profile, width, rows, seed):
    """``rows`` independent output neurons of a ScaLa layer: w = sigma w_tilde, w_tilde ~ N(0,1)."""
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return ScaLP(profile).sample("w", (rows, width))


@pytest.mark.parametrize("profile", PROFILES)
def test_forward_variance_bounded_in_width(profile):
    """E[a^2] = sum_k sigma_k^2 E[x_k^2] for a = w x with unit inputs: within 4 standard errors
    of theory at every width (4000 independent (w, x) pairs), and the widest layer's variance within
    20 % of the narrowest one's. Without the scaling (sigma = 1) it would grow 100-fold."""
    g = torch.Generator().manual_seed(2**20)  # not a stream that pyro.set_rng_seed also starts
    variances = []
    for i, width in enumerate(WIDTHS):
        squares = []
        for chunk in range(4):
            w = _layer_draw(profile, width, rows=1000, seed=10 * i + chunk)
            x = torch.randn(1000, width, generator=g)  # one input per output neuron: independent
            squares.append((w * x).sum(dim=1).double().square())
        squares = torch.cat(squares)
        var, se = squares.mean().item(), squares.std().item() / math.sqrt(len(squares))
        theory = scaling_factors(width, profile).double().square().sum().item()
        assert abs(var - theory) < 4 * se
        variances.append(var)
    assert max(variances) / min(variances) < 1.2


@pytest.mark.parametrize("profile", PROFILES)
def test_sgd_update_of_the_output_is_bounded_in_width(profile):
    """One SGD step of size eta on w_tilde for the loss a = w x moves a by exactly
    -eta sum_k sigma_k^2 x_k^2: bounded in the width (its mean is -eta sum_k sigma_k^2)."""
    eta, g = 0.1, torch.Generator().manual_seed(1)
    changes = []
    for width in WIDTHS:
        sigma = scaling_factors(width, profile, dtype=torch.float64)
        w_tilde = torch.randn(width, generator=g, dtype=torch.float64, requires_grad=True)
        x = torch.randn(width, generator=g, dtype=torch.float64)
        a = (sigma * w_tilde) @ x
        a.backward()
        with torch.no_grad():
            change = (sigma * (w_tilde - eta * w_tilde.grad)) @ x - a
        assert change.item() == pytest.approx(-eta * (sigma**2 * x**2).sum().item(), rel=1e-10)
        changes.append(-change.item() / eta)
    assert max(changes) < 3.0 and min(changes) > 0.3  # vs. width * eta unscaled


def test_map_is_ridge_with_per_neuron_force():
    """ScaLP MAP on linear regression: min (1/2N)||y - Xw - b||^2 + (1/2N) sum_k (w_k / s_k)^2
    with s_k = scale * sigma_k, i.e. neuron k pushed to 0 with force 1/s_k^2: a closed form."""
    g = torch.Generator().manual_seed(0)
    n, p, scale = 80, 6, 0.5
    X = torch.randn(n, p, generator=g)
    y = X @ torch.ones(p) + 0.2 * torch.randn(n, generator=g)
    bnn = psb.SparseBNN(
        torch.nn.Linear(p, 1), ScaLP("inverse", scale), psb.likelihoods.Gaussian(1.0)
    )
    fit = psb.fit(
        bnn, X, y, method="svi", guide="map", epochs=600, lr=0.1,
        lr_schedule="linear_decay", progress=False, num_posterior_samples=2,
    )  # fmt: skip
    w = fit.samples["weight"][0, 0, 0].double()
    s = scale * scaling_factors(p, "inverse", dtype=torch.float64)
    Xc, yc = (X - X.mean(0)).double(), (y - y.mean()).double()
    exact = torch.linalg.solve(Xc.T @ Xc + torch.diag(1 / s**2), Xc.T @ yc)
    assert (w - exact).abs().max().item() < 1e-3
    assert exact[0] > 0.9 and exact[-1] < 0.4  # the asymmetry is real: late inputs are shrunk
    # the decentred site is ScaLa's w_tilde, and the result works with the usual tools
    w_tilde = fit.samples["weight_decentered"][0, 0, 0].double()
    assert torch.allclose(w_tilde * s, w, atol=1e-6)
    assert fit.compression()["n_weights"] == p
    assert "weight" in fit.to_arviz().posterior


def test_outgoing_norms_and_masks():
    w = torch.tensor([[1.0, 0.0, 0.02], [-3.0, 0.0, 0.0]])
    assert outgoing_norms(w).tolist() == pytest.approx([2.0, 0.0, 0.01])
    masks = scalp_masks({"2.weight": w}, 0.01)["2.weight"]
    assert masks.tolist() == [[True, False, True], [True, False, True]]
    assert psb.sparsity.compression({"2.weight": masks})["kept_neurons"]["2.weight"] == 2


def test_scalp_prune_removes_weak_neurons_exactly():
    """Hidden neurons whose outgoing mean |w| < threshold go; the pruned net equals the masked
    one (the kept neurons' function is unchanged)."""
    torch.manual_seed(0)
    net = psb.mlp([5, 8, 3])
    bnn = psb.SparseBNN(net, {"0": ScaLP("fan_in"), "2": ScaLP()}, psb.likelihoods.Categorical())
    w0, w2 = torch.randn(8, 5), torch.randn(3, 8)
    w2[:, [1, 4, 6]] *= 1e-4
    samples = {
        "0.weight_decentered": w0 / scaling_factors(5, "fan_in"),
        "0.weight": w0,
        "2.weight_decentered": w2 / scaling_factors(8),
        "2.weight": w2,
    }
    samples = {k: v[None, None] for k, v in samples.items()}
    X, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    fit = psb.FitResult(bnn, samples, method="map", x=X, y=y)
    small, masks = scalp_prune(fit, threshold=1e-2)
    assert small[0].out_features == 5 and small[-1].in_features == 5
    keep = np.setdiff1d(np.arange(8), [1, 4, 6])
    reference = torch.relu(X @ w0[keep].T + net[0].bias[keep]) @ w2[:, keep].T + net[2].bias
    with torch.no_grad():
        assert torch.allclose(small(X), reference, atol=1e-5)
    assert masks["2.weight"].sum().item() == 3 * 5


def test_validation():
    with pytest.raises(ValueError, match="groups"):
        ScaLP(groups=None)
    with pytest.raises(ValueError, match="profile"):
        ScaLP("linear")
    with pytest.raises(ValueError, match="scale"):
        ScaLP(scale=0.0)
    with pytest.raises(ValueError, match="n must"):
        scaling_factors(0)
    with pytest.raises(ValueError, match="threshold"):
        scalp_masks({"w": torch.ones(2, 2)}, -1.0)
    with pytest.raises(TypeError, match="FitResult"):
        scalp_prune(object(), 0.1)
