"""simplify_graph: fewer operations per replay, bit-for-bit the same results."""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer import graph_simplify
from pyro_sparse_bnn.infer.graph_simplify import simplify_graph
from pyro_sparse_bnn.infer.traced_elbo import TracedELBO
from pyro_sparse_bnn.lrt import LocalReparameterizationELBO

aten = torch.ops.aten
# values where a wrong rewrite would show: signed zeros, infinities, NaN, tiny and huge numbers
SPECIAL = torch.tensor(
    [0.0, -0.0, 1.0, -2.5, float("inf"), -float("inf"), float("nan"), 1e-38, 3e38]
)


def _targets(graph) -> list:
    return [n.target for n in graph.graph.nodes if n.op == "call_function"]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (NaN where NaN, the sign of zero included)."""
    same_bytes = a.contiguous().numpy().tobytes() == b.contiguous().numpy().tobytes()
    return a.dtype == b.dtype and a.shape == b.shape and same_bytes


def test_identities_are_dropped_bit_for_bit() -> None:
    ones, zeros = torch.ones(SPECIAL.shape), torch.zeros(SPECIAL.shape)

    def f(x):  # a unit prior scale and a zero prior mean, as in Normal(0, 1) priors
        return ((x - zeros) / ones) ** 1.0 * ones * 1 * 3.0, x * 1.0 / 1 * 3.0

    graph = make_fx(f)(SPECIAL)
    expected = graph(SPECIAL)
    simplify_graph(graph)
    assert _targets(graph) == [aten.mul.Tensor]  # x * 3, once: the rest were identities
    for a, b in zip(expected, graph(SPECIAL), strict=True):
        assert _same(a, b)


def test_no_identity_when_it_would_change_shape_dtype_or_value() -> None:
    ones_2x9, halves, zeros = torch.ones(2, 9), torch.full((9,), 0.5), torch.zeros(9)

    def f(x, k):
        # broadcasting to a larger shape, int -> float promotion, a non-unit factor, x + 0
        return x * ones_2x9, k * 1.0, x / halves, x + 0, x + zeros

    k = torch.arange(9)
    graph = make_fx(f)(SPECIAL, k)
    expected = graph(SPECIAL, k)
    before = len(_targets(graph))
    simplify_graph(graph)
    assert len(_targets(graph)) == before
    for a, b in zip(expected, graph(SPECIAL, k), strict=True):
        assert _same(a, b)


def test_an_input_is_never_returned_in_place_of_a_result() -> None:
    """``x * 1`` returned from the graph stays a new tensor: callers may write to results."""
    graph = simplify_graph(make_fx(lambda x: x * 1.0)(torch.zeros(3)))
    x = torch.zeros(3)
    assert graph(x).data_ptr() != x.data_ptr()


def test_elementwise_work_on_a_broadcast_scalar_runs_on_the_scalar() -> None:
    def f(x, w):  # autograd's pattern: a summed loss's gradient is an expanded scalar
        g = (x.sum().expand(300, 784) * 0.5).neg()
        return (g / w + g).sum(), g.exp() * w

    x, w = torch.randn(5), torch.rand(300, 784) + 0.5
    graph = make_fx(f)(x, w)
    expected = graph(x, w)
    simplify_graph(graph)
    full = [
        n.target
        for n in graph.graph.nodes
        if n.op == "call_function"
        and n.target is not aten.expand.default
        and n.meta["val"].shape == (300, 784)
    ]
    assert full.count(aten.neg.default) == full.count(aten.exp.default) == 0
    assert sorted(map(str, full)) == ["aten.add.Tensor", "aten.div.Tensor", "aten.mul.Tensor"]
    for a, b in zip(expected, graph(x, w), strict=True):
        assert _same(a, b)


def test_a_returned_broadcast_result_stays_a_full_tensor() -> None:
    """A gradient becomes ``p.grad``: it must not turn into a stride-0 view."""
    graph = make_fx(lambda x: x.sum().expand(4, 3) * 2.0)(torch.ones(5))
    simplify_graph(graph)
    out = graph(torch.ones(5))
    assert out.is_contiguous() and out.stride() == (3, 1)
    assert torch.equal(out, torch.full((4, 3), 10.0))


def test_reads_around_an_in_place_update_keep_their_order() -> None:
    """``y = x * 1`` read after ``x`` is updated in place must keep the old value, and two
    equal-looking reads on either side of the update are two values."""

    def f(x):
        x = x.clone()
        before, twice_before = x * 1.0, x * 2.0
        x.add_(1.0)
        return before, twice_before, x * 2.0

    graph = simplify_graph(make_fx(f)(torch.zeros(3)))
    before, twice_before, twice_after = graph(torch.zeros(3))
    assert torch.equal(before, torch.zeros(3)) and torch.equal(twice_before, torch.zeros(3))
    assert torch.equal(twice_after, torch.full((3,), 2.0))


def test_random_draws_are_neither_folded_nor_merged() -> None:
    """Two draws from no tensor input: constant folding must not freeze them, nor merging
    make them one draw."""
    graph = make_fx(lambda x: (x + torch.randn(3), x + torch.randn(3)))(torch.zeros(3))
    graph = simplify_graph(graph)
    first, second = graph(torch.zeros(3)), graph(torch.zeros(3))
    assert not torch.equal(first[0], second[0])  # fresh on every replay
    assert not torch.equal(first[0], first[1])  # two draws, not one


def test_lrt_step_loses_a_third_of_its_weight_sized_passes() -> None:
    """The mean-field LRT step of a 20-30-3 network: the elementwise passes over the 30 x 20
    weight matrix drop from 39 to 18 (Normal(0, 1) prior: x - 0, x / 1, pow(x, 1), broadcast
    scalars); the traced step checks itself against the eager one, so the results are kept."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 20), torch.randint(0, 3, (16,))
    bnn = psb.SparseBNN(psb.mlp([20, 30, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    guide = psb.guides.make_guide("mean_field", bnn)
    guide(x, y)
    params = [*bnn.parameters(), *guide.parameters()]
    step = TracedELBO(LocalReparameterizationELBO().differentiable_loss, bnn, guide, params)
    scales = [torch.tensor(1 / 16), torch.tensor(1 / 16)]
    raw = make_fx(lambda *a: step._eager(*a), _error_on_data_dependent_ops=False)(x, y, *scales)

    def passes(graph) -> int:
        return sum(
            n.op == "call_function"
            and n.target not in graph_simplify._VIEWS
            and n.target not in (aten.mm.default, aten.detach.default)
            and getattr(n.meta.get("val"), "shape", None) == (30, 20)
            for n in graph.graph.nodes
        )

    assert passes(raw) >= 35
    step(x, y, observed=1 / 16, latent=1 / 16)  # traces and checks against the eager step
    replay = next(iter(step._graphs.values()))
    assert replay is not None  # None: it did not match the eager step
    assert passes(replay.graph) <= 20
