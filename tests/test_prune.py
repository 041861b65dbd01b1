"""Pruning: mask rules against their formulas, torch.nn.utils.prune, and physically smaller networks
that reproduce the masked network's outputs (max abs diff < 1e-5) with fewer parameters."""

import math

import pytest
import torch
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.baselines import l1_penalty, magnitude_prune
from pyro_sparse_bnn.guides import weight_moments
from pyro_sparse_bnn.prune import (
    apply_masks,
    live_masks,
    masked_network,
    prune,
    prune_result,
)
from pyro_sparse_bnn.sparsity import log_alpha_masks, magnitude_masks, shrinkage_masks


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def random_masks(net, seed, keep=0.3, dead_rows=0.4, dead_cols=0.3):
    """Random weight masks that also switch off whole output units and whole input columns."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, p in net.named_parameters():
        if name.endswith("weight"):
            m = torch.rand(p.shape, generator=g) < keep
            m[torch.rand(p.shape[0], generator=g) < dead_rows] = False
            m[:, torch.rand(p.shape[1], generator=g) < dead_cols] = False
            masks[name] = m
    return masks


def assert_equivalent(net, x, masks):
    """Both input modes reproduce the masked net; selecting the read inputs only shrinks it."""
    masked = masked_network(net, masks=masks).eval()
    small = prune(masked, x)
    selecting = prune(masked, x, inputs="select")
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max().item() < 1e-5
        read = selecting(x[:, selecting.kept_inputs])
        assert (read - masked(x)).abs().max().item() < 1e-5
    assert n_params(selecting) <= n_params(small) < n_params(masked)
    return selecting


def test_the_pruned_network_is_made_of_torch_modules_only(tmp_path):
    """Saved whole, it names torch classes only, so torch alone loads it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2))
    for inputs in ("keep", "select"):
        small = prune(masked_network(net, masks=random_masks(net, 0)), inputs=inputs)
        torch.save(small, tmp_path / "small.pt")
        names = torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "small.pt")
        assert names and all(n.startswith("torch.nn.modules.") for n in names), names


@pytest.mark.parametrize("seed", range(4))
def test_mlp_pruning_is_exact(seed):
    """Sigmoid/tanh make act(bias) of an input-less unit non-zero: it must be folded into the
    next bias for the outputs to match."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(30, 40), nn.Tanh(), nn.Linear(40, 20), nn.Sigmoid(), nn.Linear(20, 5)
    )
    small = assert_equivalent(net, torch.randn(64, 30), random_masks(net, seed))
    assert small[0].in_features == small.kept_inputs.numel() < 30


@pytest.mark.parametrize("seed", range(3))
def test_lenet5_pruning_is_exact(seed):
    """LeNet-5-Caffe (20-50-800-500): channels feeding nothing or reading nothing are removed,
    through max-pooling and the flatten into the first dense layer."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )  # fmt: skip
    small = assert_equivalent(net, torch.randn(16, 1, 28, 28), random_masks(net, seed))
    convs = [m for m in small if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels < 20 and convs[1].out_channels < 50


def test_constant_channels_are_folded_only_without_padding():
    """A channel with no input weights is constant: folded into the next conv when it has no
    padding, kept (still exact) when zero padding makes its contribution position-dependent."""
    torch.manual_seed(0)
    for padding, expected in ((0, 3), (1, 4)):
        net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Sigmoid(), nn.Conv2d(4, 3, 3, padding=padding))
        masks = {"0.weight": torch.ones(4, 2, 3, 3, dtype=torch.bool)}
        masks["0.weight"][1] = False  # channel 1 of the first conv outputs sigmoid(bias)
        small = assert_equivalent(net, torch.randn(5, 2, 9, 9), masks) if padding == 0 else prune(
            masked_network(net, masks=masks), torch.randn(5, 2, 9, 9))  # fmt: skip
        assert small[0].out_channels == expected


def test_everything_pruned_leaves_a_constant_network():
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    masks = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in net.state_dict().items()
             if k.endswith("weight")}  # fmt: skip
    masked = masked_network(net, masks=masks)
    small = prune(masked, inputs="select")
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert (small(x[:, small.kept_inputs]) - masked(x)).abs().max() < 1e-6
    assert n_params(small) <= 1 + 1 + 1 * 3 + 3


def test_torch_prune_masks_match_masked_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    masks = random_masks(net, 0, dead_rows=0, dead_cols=0)
    x = torch.randn(10, 8)
    with torch.no_grad():
        assert torch.equal(apply_masks(net, masks)(x), masked_network(net, masks=masks)(x))
    assert torch.equal(apply_masks(net, masks)[0].weight_mask.bool(), masks["0.weight"])


def test_mask_rules():
    """log_alpha < 3 is |theta| / sigma > exp(-1.5); kappa = 1 / (1 + (s/ref)^2) < 1/2 is s > ref;
    magnitude keeps |w| >= T."""
    theta = torch.tensor([1.0, 1.0, 0.0])
    sigma = torch.tensor([math.exp(1.4), math.exp(1.6), 1.0])
    assert log_alpha_masks({"w": (theta, sigma)})["w"].tolist() == [True, False, False]
    assert log_alpha_masks({"w": (theta, sigma)}, threshold=-3)["w"].tolist() == [False] * 3
    scales = torch.tensor([[0.9, 1.1, 3.0]]).expand(1, 5, 3)
    assert shrinkage_masks({"s": scales})["s"].tolist() == [False, True, True]
    assert shrinkage_masks({"s": scales}, reference_scale=2.0)["s"].tolist() == [False, False, True]
    assert magnitude_masks({"w": torch.tensor([0.1, -0.2, 0.05])}, 0.1)["w"].tolist() == [
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="clip range"):
        log_alpha_masks({"w": (theta, sigma)}, threshold=9.0)
    with pytest.raises(ValueError, match="shape"):
        masked_network(nn.Linear(2, 1), masks={"weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="example_input is required"):
        prune(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    with pytest.raises(ValueError, match="example_input"):
        prune(nn.Sequential(nn.Conv2d(1, 1, 3)))


def test_l1_baseline_prunes_small_weights():
    net = nn.Linear(3, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -0.01, 0.2]]))
    assert l1_penalty(net).item() == pytest.approx(0.71)
    pruned, masks = magnitude_prune(net, 0.1)
    assert torch.equal(pruned.weight, torch.tensor([[0.5, 0.0, 0.2]]))
    assert masks["weight"].tolist() == [[True, False, True]]


@pytest.mark.parametrize("guide", ["sparse_vd", "mean_field"])
def test_prune_a_fit_result(guide):
    """prune_result: posterior-mean weights outside the SNR masks zeroed, made smaller; equal to
    the masked mean network on the test split, with fewer parameters. The SparseVD guide gives
    exact moments, other guides Monte Carlo ones from the stored draws."""
    X, y = psb.datasets.load("iris")
    X_test, _ = psb.datasets.load("iris", split="test")
    prior = psb.priors.LogUniform() if guide == "sparse_vd" else psb.priors.Normal()
    bnn = psb.SparseBNN(psb.mlp([4, 16, 3]), prior, psb.likelihoods.Categorical())
    result = psb.fit(bnn, X, y, guide=guide, epochs=150, lr=0.05, progress=False)
    small = prune_result(result, result.masks(1.0))
    if guide == "sparse_vd":
        moments = weight_moments(result.model, result.guide)
        means = {k: m for k, (m, _) in moments.items()}
        masks = {k: m.abs() > v.sqrt() for k, (m, v) in moments.items()}
    else:
        means = {k: v.mean(0) for k, v in result.sample_posterior().items()}
        masks = result.masks(1.0)
    masked = masked_network(result.model.net, means, masks)
    with torch.no_grad():
        assert (small(X_test) - masked(X_test)).abs().max() < 1e-5
    dense = sum(v.numel() for v in result.model.net.state_dict().values())  # weights are buffers
    assert n_params(small) < dense
    linear = [m.weight for m in small.modules() if isinstance(m, nn.Linear)]
    assert result.compression(1.0)["n_kept"] == sum(int((w != 0).sum()) for w in linear)


def hand_made_result(bias_prior=None):
    """A 3-4-2 SparseBNN result with fixed draws (all weights 1 + noise, so none is zero)."""
    torch.manual_seed(0)
    bnn = psb.SparseBNN(
        psb.mlp([3, 4, 2]),
        psb.priors.Normal(),
        psb.likelihoods.Categorical(),
        bias_prior=bias_prior,
    )
    samples = {
        "0.weight": 1 + 0.1 * torch.rand(1, 5, 4, 3),
        "2.weight": 1 + 0.1 * torch.rand(1, 5, 2, 4),
    }
    if bias_prior is not None:
        samples |= {"0.bias": torch.ones(1, 5, 4), "2.bias": torch.ones(1, 5, 2)}
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    return psb.FitResult(bnn, samples, method="test", x=x, y=y)


def test_compression_counts_only_weights_on_live_paths():
    """Hidden unit 0 receives but feeds nothing, unit 1 feeds but receives nothing (a constant,
    folded into the next bias), unit 2 does both, unit 3 neither: only unit 2's weights are live,
    and compression counts exactly the non-zero weights of the pruned network."""
    result = hand_made_result(bias_prior=psb.priors.Normal())
    first = torch.zeros(4, 3, dtype=torch.bool)
    first[0, :2] = first[2, 1:] = True
    second = torch.zeros(2, 4, dtype=torch.bool)
    second[:, 1] = second[0, 2] = True
    masks = {"0.weight": first, "0.bias": torch.ones(4, dtype=torch.bool),
             "2.weight": second, "2.bias": torch.ones(2, dtype=torch.bool)}  # fmt: skip
    live = live_masks(result, masks)
    assert live["0.weight"].nonzero().tolist() == [[2, 1], [2, 2]]
    assert live["2.weight"].nonzero().tolist() == [[0, 2]]
    assert live["0.bias"].tolist() == [False, False, True, False]
    assert live["2.bias"].all()
    small = prune_result(result, masks)
    weights = [m.weight for m in small.modules() if isinstance(m, nn.Linear)]
    assert sum(int((w != 0).sum()) for w in weights) == 3
    stats = psb.sparsity.compression(live)
    assert stats["n_kept"] == 3 + 1 + 2
