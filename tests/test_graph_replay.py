"""flat_function: the graph's results, bit for bit, without FX's per-operation lookups."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.elbo import MeanFieldELBO
from pyro_sparse_bnn.infer.graph_replay import flat_function
from pyro_sparse_bnn.infer.traced_elbo import TracedELBO


def test_matches_the_graph_module_bit_for_bit() -> None:
    """Stored tensors, node lists (``cat``), keyword arguments, an in-place random draw and
    several outputs: the same values as the GraphModule from the same random state."""
    stored = torch.arange(6.0).reshape(2, 3)

    def f(x, y):
        noise = torch.empty_like(x).normal_()
        joined = torch.cat([x * stored, y.expand(2, 3)], dim=0)
        return joined.sum(dim=1, keepdim=True), noise + x, torch.zeros(3, dtype=torch.float64)

    x, y = torch.randn(2, 3), torch.randn(3)
    graph = make_fx(f)(x, y)
    run = flat_function(graph)
    torch.manual_seed(1)
    expected = graph(x, y)
    torch.manual_seed(1)
    got = run(x, y)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_intermediates_are_freed_after_their_last_use() -> None:
    """A chain of five 8 MB temporaries: when each operation starts, only its own input is
    still alive (kept to the end, all earlier ones would be)."""
    made: list[weakref.ref] = []  # every intermediate, as it is made
    most_alive = 0

    def observed(op):
        def call(*args, **kwargs):
            nonlocal most_alive
            most_alive = max(most_alive, sum(r() is not None for r in made))
            out = op(*args, **kwargs)
            made.append(weakref.ref(out))
            return out

        return call

    x = torch.ones(2_000_000)
    graph = make_fx(lambda x: ((((x + 1) * 2) - 3) / 4).exp().sum())(x)
    for node in graph.graph.nodes:
        if node.op == "call_function":
            node.target = observed(node.target)
    graph.recompile()
    flat_function(graph)(x)
    assert len(made) == 6 and most_alive == 1


def test_refuses_graphs_that_call_modules() -> None:
    graph = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="ATen graphs only"):
        flat_function(graph)


def test_traced_svi_step_replays_as_its_graph_module() -> None:
    """A horseshoe MLP's traced SVI step (checked against the eager step on its first minibatch
    and on the first with other data) gives, replayed flat, its GraphModule's loss and
    gradients bit for bit."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    bnn = psb.SparseBNN(psb.mlp([10, 16, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    guide = psb.guides.mean_field(bnn)
    guide(x, y)
    params = list({id(p): p for m in (bnn, guide) for p in m.parameters()}.values())
    step = TracedELBO(MeanFieldELBO().differentiable_loss, bnn, guide, params)
    step(x[:32], y[:32], observed=1 / 32, latent=1 / 64)
    step(x[32:], y[32:], observed=1 / 32, latent=1 / 64)
    assert step.replays
    replay = next(iter(step._graphs.values()))
    torch.manual_seed(3)
    with torch.no_grad():
        expected = replay.graph(*params, x[:32], y[:32], torch.tensor(1 / 32), torch.tensor(1 / 64))
    torch.manual_seed(3)
    got = replay(*params, x[:32], y[:32], torch.tensor(1 / 32), torch.tensor(1 / 64))
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


def test_a_compiled_caller_traces_the_graph_module() -> None:
    """``torch.compile`` cannot trace the C++ entries; under it the function runs the graph
    module, so a caller compiled with ``fullgraph=True`` (as the compiled NUTS step is) works."""
    graph = make_fx(lambda x: (x.sin() * 2).sum())(torch.ones(3))
    run = flat_function(graph)
    compiled = torch.compile(lambda x: run(x) + 1, backend="eager", fullgraph=True)
    x = torch.randn(3)
    assert torch.equal(compiled(x), run(x) + 1)
