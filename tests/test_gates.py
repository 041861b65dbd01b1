"""L0 hard-concrete gates at layer level: gate frequencies, the deterministic test gate, the
penalty and the clamp, equivalence of the folded plain network, masks by P(z != 0), and a fit
that closes the gates of irrelevant inputs."""

import math

import pytest
import torch
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.distributions import HardConcrete
from pyro_sparse_bnn.gates import LOG_ALPHA_RANGE, GatedLayer, L0Network
from pyro_sparse_bnn.sparsity import default_gate_threshold, gate_masks

N = 20_000
LOG_ALPHAS = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])


def p_nonzero(log_alpha):
    """Louizos et al.: P(z != 0) = sigmoid(log_alpha - beta log(-gamma / zeta))."""
    return torch.sigmoid(log_alpha - 2 / 3 * math.log(0.1 / 1.1))


def test_linear_gates_open_with_the_hard_concrete_probability():
    """With identity weights and unit inputs a gated Linear outputs its gates: in training mode
    each example's gate is non-zero with probability P(z != 0) (within 4 binomial standard
    errors) and exactly 1 with P(z = 1); in eval mode it is the deterministic gate."""
    torch.manual_seed(0)
    linear = nn.Linear(5, 5, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(5))
    layer = GatedLayer(linear, LOG_ALPHAS.clone())
    with torch.no_grad():
        z = layer(torch.ones(N, 5))
    p = p_nonzero(LOG_ALPHAS)
    se = (p * (1 - p) / N).sqrt()
    assert ((z != 0).float().mean(0) - p).abs().max() < 4 * se.max()
    p_one = torch.sigmoid(LOG_ALPHAS - 2 / 3 * math.log(1.1 / 0.1))  # P(s > 1/1.2 stretched)
    assert ((z == 1).float().mean(0) - p_one).abs().max() < 4 * se.max()
    test_gate = (torch.sigmoid(LOG_ALPHAS) * 1.2 - 0.1).clamp(0, 1)
    with torch.no_grad():
        assert torch.allclose(layer.eval()(torch.ones(3, 5)), test_gate.expand(3, 5))
    assert test_gate[2] == pytest.approx(0.5)


def test_conv_gates_switch_whole_output_channels():
    """A conv layer's gate multiplies an output channel (before the bias): the fraction of
    examples whose channel is exactly the bias everywhere is P(z = 0)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 5, 3)
    layer = GatedLayer(conv, LOG_ALPHAS.clone())
    x = torch.randn(1, 2, 6, 6).expand(N // 4, 2, 6, 6)
    with torch.no_grad():
        out = layer(x) - conv.bias.reshape(5, 1, 1)
    closed = (out == 0).flatten(2).all(2).float().mean(0)
    p_zero = 1 - p_nonzero(LOG_ALPHAS)
    se = (p_zero * (1 - p_zero) / (N // 4)).sqrt()
    assert (closed - p_zero).abs().max() < 4 * se.max()


def network():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )  # fmt: skip


def test_initialisation_penalty_and_clamp():
    """log_alpha starts at log((1-p)/p) (p = 0.2 for the first layer, 0.5 after) with sd 0.01;
    the penalty is sum_g P(z_g != 0) (lambda + wd/2 ||w_g||^2) + wd/2 ||b||^2 with the groups
    being conv output channels (rows of the kernel) and Linear input columns."""
    gated = L0Network(network(), seed=3)
    first, *rest = (gated.gated(n).log_alpha for n in gated.layer_names)
    assert (first - math.log(4)).abs().max() < 0.05 and first.std() < 0.02
    assert all(la.abs().max() < 0.05 for la in rest)
    lambdas, wd = [0.1, 0.2, 0.3], 1e-2
    expected = 0.0
    for lam, name in zip(lambdas, gated.layer_names, strict=True):
        layer = gated.gated(name)
        w, b = layer.layer.weight, layer.layer.bias
        norms = w.square().flatten(1).sum(1) if isinstance(layer.layer, nn.Conv2d) else (
            w.square().sum(0))  # fmt: skip
        expected += (p_nonzero(layer.log_alpha) * (lam + wd / 2 * norms)).sum()
        expected += wd / 2 * b.square().sum()
    assert gated.penalty(lambdas, wd).item() == pytest.approx(expected.item(), rel=1e-6)
    assert gated.expected_l0().item() == pytest.approx(
        sum(p_nonzero(gated.gated(n).log_alpha).sum().item() for n in gated.layer_names), rel=1e-6
    )
    with torch.no_grad():
        first.fill_(10.0)
        rest[0].fill_(-10.0)
    gated.clamp_()
    assert first.max().item() == pytest.approx(math.log(100)) == LOG_ALPHA_RANGE[1]
    assert rest[0].min().item() == pytest.approx(math.log(0.01))
    with pytest.raises(ValueError, match="lambdas"):
        gated.penalty([0.1, 0.2])


def test_plain_network_is_the_deterministic_network():
    """Folding the test-time gates into the weights gives a plain network with the same outputs;
    a copy of the gated network (deepcopy, as fit does) behaves the same."""
    import copy

    gated = L0Network(network())
    with torch.no_grad():
        for name in gated.layer_names:
            gated.gated(name).log_alpha.normal_(0.0, 3.0)
    gated.clamp_()
    gated.eval()
    x = torch.randn(7, 1, 8, 8)
    plain = gated.plain_network()
    assert not any(isinstance(m, GatedLayer) for m in plain.modules())
    with torch.no_grad():
        assert (plain(x) - gated(x)).abs().max() < 1e-6
        assert (copy.deepcopy(gated)(x) - gated(x)).abs().max() < 1e-6


def test_masks_by_probability_match_test_gates():
    """With the default threshold a gate is kept exactly when its test-time gate is non-zero."""
    log_alpha = torch.linspace(-6, 4, 2001)
    kept = gate_masks({"g": log_alpha})["g"]
    open_gate = HardConcrete(log_alpha).deterministic_gate() > 0
    assert torch.equal(kept, open_gate)
    assert default_gate_threshold() == pytest.approx(
        p_nonzero(torch.tensor(math.log(1 / 11))).item()
    )


def test_l0_fit_closes_gates_of_irrelevant_inputs():
    """Two informative inputs out of 12: after training (lambda 10 on the input gates) the gates
    of the 10 noise features are closed (P(z != 0) below the default threshold, about 0.05)
    and those of the 2 signals open (about 1)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 12, generator=g)
    y = ((x[:, 0] + x[:, 1]) > 0).long()
    bnn = psb.SparseBNN(psb.mlp([12, 16, 2]), psb.priors.Normal(), psb.likelihoods.Categorical())
    result = psb.fit(bnn, x, y, method="l0", lambdas=[10.0, 0.1], epochs=60, batch_size=100,
                     lr=0.03, progress=False)  # fmt: skip
    masks, probs = result.info["gate_masks"]["0"], result.info["prob_nonzero"]["0"]
    assert masks[:2].all() and not masks[2:].any()
    assert probs[:2].min() > 0.95 and probs[2:].max() < 0.2
    assert result.evaluate(x, y)["accuracy"] > 0.95


def test_pruning_an_l0_result_gives_its_test_time_network():
    """FitResult.prune of an L0 fit is the deterministic gated network made smaller: the same
    outputs as ``plain_network()`` (not a network pruned by the spread of 2 stored gate draws),
    reading only the 2 informative inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 12, generator=g)
    y = ((x[:, 0] + x[:, 1]) > 0).long()
    bnn = psb.SparseBNN(psb.mlp([12, 16, 2]), psb.priors.Normal(), psb.likelihoods.Categorical())
    result = psb.fit(bnn, x, y, method="l0", lambdas=[10.0, 0.1], epochs=20, batch_size=100,
                     lr=0.03, gate_lr=0.2, num_posterior_samples=2, progress=False)  # fmt: skip
    small = result.prune(inputs="select")
    test_time = result.info["network"].plain_network()
    with torch.no_grad():
        assert (small(x[:, small.kept_inputs]) - test_time(x)).abs().max() < 1e-5
        assert (result.prune()(x) - test_time(x)).abs().max() < 1e-5
    assert small.kept_inputs.tolist() == [0, 1]
