"""Group variables shared across layers (``SparseBNN(..., ties=...)``): the layers that read the
same channels after a residual addition share one variable per channel, counted once in the
model's density, so a channel it switches off is read by none of them and pruned as a whole."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from test_prune_graph import DenseNet, ResNet
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.penalties import GroupLaplace
from pyro_sparse_bnn.priors import GroupLogUniform, Horseshoe
from pyro_sparse_bnn.prune_graph import shared_inputs


class Residual(nn.Module):
    """``head(h + b(relu(h)))`` with ``h = a(x)``: ``b`` and ``head`` read the same 4 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.head(h + self.b(torch.relu(h)))


def tied(prior=None, net=None) -> psb.SparseBNN:
    net = Residual() if net is None else net
    prior = GroupLogUniform(groups="in") if prior is None else prior
    return psb.SparseBNN(net, prior, psb.likelihoods.Categorical(), ties=[["b", "head"]])


def test_shared_inputs_finds_the_readers_of_each_residual_stream():
    x = torch.randn(2, 1, 8, 8)
    assert shared_inputs(ResNet(), x) == [["blocks.0.conv1", "blocks.1.conv1", "head.2"]]
    assert shared_inputs(Residual(), torch.randn(2, 3)) == [["b", "head"]]
    # a concatenation's reader reads two groups, each only in part: no tie
    assert shared_inputs(DenseNet(), x) == []


def test_the_shared_variable_is_one_site_counted_once_in_the_density():
    """Prior log density of a conditioned trace against the closed form: the tie's HalfCauchy
    local scales enter once, each layer keeps its own global scale."""
    torch.manual_seed(0)
    bnn = tied(Horseshoe(groups="in"))
    g = torch.Generator().manual_seed(1)

    def positive(*shape):
        return torch.rand(shape, generator=g) + 0.2

    values = {
        "a.weight_global_scale": positive(), "b.weight_global_scale": positive(),
        "head.weight_global_scale": positive(), "a.weight_local_scale": positive(1, 3),
        "tie0_local_scale": positive(4), "a.weight_decentered": torch.randn(4, 3, generator=g),
        "b.weight_decentered": torch.randn(4, 4, generator=g),
        "head.weight_decentered": torch.randn(2, 4, generator=g),
    }  # fmt: skip
    tr = poutine.trace(poutine.condition(bnn, values)).get_trace(torch.randn(5, 3))
    sites = [n for n, s in tr.nodes.items() if s["type"] == "sample" and n not in ("y", "data")
             and not s["infer"].get("_deterministic")]  # fmt: skip
    assert sorted(sites) == sorted(values)
    tr.compute_log_prob()
    prior = sum(tr.nodes[n]["log_prob_sum"] for n in sites)
    half_cauchy, normal = dist.HalfCauchy(1.0), dist.Normal(0.0, 1.0)
    expected = sum(
        (half_cauchy if "scale" in n else normal).log_prob(v).sum() for n, v in values.items()
    )
    assert abs(float(prior - expected)) < 1e-5
    # both tied weights are their decentred draws times the one shared scale
    for layer in ("b", "head"):
        w = tr.nodes[f"{layer}.weight"]["value"]
        scale = values["tie0_local_scale"] * values[f"{layer}.weight_global_scale"]
        assert torch.allclose(w, values[f"{layer}.weight_decentered"] * scale)


def test_a_switched_off_shared_channel_is_pruned_from_every_layer():
    """Fit, then set the shared variable of channel 1 to a near-zero mean: both readers lose it
    in the masks (SNR of ``theta * z`` with ``z ~ Normal(1e-4, 0.1)``) and prune removes the
    channel from the stream: ``a``'s and ``b``'s outputs, ``b``'s and ``head``'s inputs."""
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = (x[:, 0] > 0).long()
    result = psb.fit(tied(), x, y, method="svi", guide="sparse_vd", epochs=3, seed=0,
                     progress=False)  # fmt: skip
    guide = result.guide
    assert guide.loc("tie0_local_scale").shape == (4,)
    with torch.no_grad():
        guide.locs.tie0_local_scale[1] = 1e-4
        guide.log_sigma2s.tie0_local_scale[1] = 2 * torch.log(torch.tensor(0.1))
    masks = result.masks(threshold=1.0)
    assert not masks["b.weight"][:, 1].any() and not masks["head.weight"][:, 1].any()
    assert masks["b.weight"][:, [0, 2, 3]].any(0).all()
    small = result.prune(threshold=1.0, example_input=x[:2])
    assert (small.a.out_features, small.b.in_features, small.b.out_features,
            small.head.in_features) == (3, 3, 3, 3)  # fmt: skip
    full = result.masked_network(threshold=1.0)
    with torch.no_grad():
        assert (small(x) - full(x)).abs().max() < 1e-5


def test_the_users_prior_is_not_changed():
    prior = GroupLogUniform(groups="in")
    bnn = tied(prior)
    assert prior.tied == {}
    assert bnn.priors["b"].tied == {"b.weight": "tie0", "head.weight": "tie0"}
    assert bnn.priors["a"] is bnn.priors["b"]  # one copy, still shared by every layer


@pytest.mark.parametrize(
    ("ties", "prior", "match"),
    [
        ("b", None, "list of lists"),
        ([["b"]], None, "two or more"),
        ([["b", "nope"]], None, "two or more"),
        ([["b", "head"], ["a", "head"]], None, "one tie only"),
        ([["a", "b"]], None, "as many groups"),  # 3 inputs against 4
        ([["b", "head"]], psb.priors.Normal(), "no latent group variables"),
        ([["b", "head"]], Horseshoe(), "no latent group variables"),
        ([["b", "head"]], GroupLaplace(groups="in"), "no latent group variables"),
        ([["b", "head"]], {"a": Horseshoe(groups="in"), "b": Horseshoe(groups="in"),
                           "head": Horseshoe(groups="in")}, "one prior object"),
    ],
)  # fmt: skip
def test_bad_ties_are_refused_at_construction(ties, prior, match):
    prior = GroupLogUniform(groups="in") if prior is None else prior
    with pytest.raises((ValueError, TypeError), match=match):
        psb.SparseBNN(Residual(), prior, psb.likelihoods.Categorical(), ties=ties)


def test_tied_groups_in_a_vectorised_predictive():
    """Posterior draws over a vectorised plate: each draw's tied weights use its own scales."""
    bnn = tied(Horseshoe(groups="in"))
    with pyro.plate("draws", 6, dim=-2):
        tr = poutine.trace(bnn).get_trace(torch.randn(5, 3))
    assert tr.nodes["tie0_local_scale"]["value"].shape == (6, 1, 4)
    assert tr.nodes["y"]["value"].shape == (6, 5)
