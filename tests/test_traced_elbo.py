"""The traced SVI step computes the eager step's loss and gradients, or falls back to it."""

from __future__ import annotations

import itertools
import os
import shutil

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from sklearn.datasets import load_iris
from torch import fx

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer import traced_elbo
from pyro_sparse_bnn.infer.traced_elbo import TracedELBO
from pyro_sparse_bnn.lrt import LocalReparameterizationELBO

# Inductor compiles C++ on CPU: without a compiler the compiled step falls back (tested below).
needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler"
)


@pytest.fixture(scope="module")
def iris() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_iris(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def _fit(iris, prior: psb.priors.Prior, elbo: str, graph: str) -> psb.FitResult:
    torch.manual_seed(0)  # the network's initial weights
    bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), prior, psb.likelihoods.Categorical())
    return psb.fit(
        bnn, *iris, method="svi", elbo=elbo, epochs=6, batch_size=64, kl_warmup=3, lr=0.05,
        seed=1, progress=False, graph=graph,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("prior", "elbo"),
    [(psb.priors.Normal(), "mean_field"), (psb.priors.Horseshoe(), "trace")],
    ids=["normal-mean_field", "horseshoe-trace"],
)
def test_traced_fit_takes_the_eager_fits_steps(iris, prior, elbo: str) -> None:
    # 150 rows in minibatches of 64: two graphs (64 and 22 rows), KL warm-up changing the scale.
    eager, traced = (_fit(iris, prior, elbo, graph) for graph in ("eager", "traced"))
    np.testing.assert_allclose(traced.info["history"], eager.info["history"], rtol=1e-5)
    for a, b in zip(eager.guide.parameters(), traced.guide.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@needs_compiler
def test_compiled_fit_takes_the_traced_fits_steps(iris, recwarn) -> None:
    """(Not the eager fit's: LRT's first eager step draws the weights, the traced ones start from
    the settled estimator, which passes the means, so the random streams differ.)"""
    traced, compiled = (_fit(iris, psb.priors.Normal(), "lrt", g) for g in ("traced", "compiled"))
    assert not [w for w in recwarn if "SVI step" in str(w.message)]
    np.testing.assert_allclose(compiled.info["history"], traced.info["history"], rtol=1e-4)
    for a, b in zip(traced.guide.parameters(), compiled.guide.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def _step(bnn, guide, x, y, graph: str) -> TracedELBO:
    params = [*bnn.parameters(), *guide.parameters()]
    return TracedELBO(LocalReparameterizationELBO().differentiable_loss, bnn, guide, params,
                      graph=graph)  # fmt: skip


def test_lrt_graph_gives_the_eager_loss_and_gradients(iris) -> None:
    x, y = iris[0][:32], iris[1][:32]
    bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.LogUniform(), psb.likelihoods.Categorical())
    guide = psb.guides.sparse_vd(bnn)
    guide(x, y)
    results = []
    for graph in ("eager", "traced"):
        step = _step(bnn, guide, x, y, graph)
        step(x, y, observed=4.0, latent=1.0)  # LRT learns which draws it can skip
        torch.manual_seed(5)
        loss = step(x, y, observed=4.0, latent=1.0)
        results.append([loss, *(p.grad.clone() for p in step.params)])
        traced = graph == "traced"
        assert step.traced == traced and len(step._graphs) == int(traced)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_replay_leaves_plain_gradients(iris) -> None:
    """The graph computes the gradients itself: the replay records nothing for autograd, so the
    gradients it leaves in ``p.grad`` hold no graph (and no memory) behind them."""
    step, _ = _sparse_vd_lrt(iris, graph="traced")
    assert step.replays
    assert all(p.grad.grad_fn is None and not p.grad.requires_grad for p in step.params)


def _sparse_vd_lrt(iris, graph: str) -> tuple[TracedELBO, list[torch.Tensor]]:
    """One SparseVD + LRT step on 32 iris rows from seed 5: the step and [loss, *grads]."""
    x, y = iris[0][:32], iris[1][:32]
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.LogUniform(), psb.likelihoods.Categorical())
    guide = psb.guides.sparse_vd(bnn)
    guide(x, y)
    step = _step(bnn, guide, x, y, graph)
    step(x, y, observed=4.0, latent=1.0)
    torch.manual_seed(5)
    loss = step(x, y, observed=4.0, latent=1.0)
    return step, [loss, *(p.grad.clone() for p in step.params)]


@needs_compiler
def test_compiled_graph_gives_the_eager_loss_and_gradients(iris, recwarn) -> None:
    """Inductor fuses the graph's arithmetic (reductions may sum in another order), but its
    random draws are torch's: the same noise, so the same step up to float32 rounding."""
    _, expected = _sparse_vd_lrt(iris, graph="eager")
    step, got = _sparse_vd_lrt(iris, graph="compiled")
    assert not [w for w in recwarn if "SVI step" in str(w.message)]
    (graph,) = step._graphs.values()
    assert graph is not None and not isinstance(graph, fx.GraphModule)  # the compiled one
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@needs_compiler
def test_compiled_conv_net_draws_the_eager_noise(recwarn) -> None:
    """Inductor may lay convolution outputs out channels-last; the LRT noise (``randn_like``)
    must still land where the eager step puts it (it did not before ``layout_optimization``
    was turned off: the check failed and the step ran uncompiled)."""
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 12, 12), torch.randint(0, 3, (16,))
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(36, 3),
    )  # fmt: skip
    bnn = psb.SparseBNN(net, psb.priors.LogUniform(), psb.likelihoods.Categorical())
    guide = psb.guides.sparse_vd(bnn)
    guide(x, y)
    results = []
    for graph in ("eager", "compiled"):
        step = _step(bnn, guide, x, y, graph)
        step(x, y, observed=1.0, latent=1.0)
        torch.manual_seed(5)
        results.append([step(x, y, observed=1.0, latent=1.0), *(p.grad for p in step.params)])
    assert not [w for w in recwarn if "SVI step" in str(w.message)]
    assert not isinstance(step._graphs[_key(x, y)].graph, fx.GraphModule)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_graph_that_cannot_be_compiled_is_replayed_uncompiled(iris, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("no compiler\nmore")

    monkeypatch.setattr(torch, "compile", fail)
    _, expected = _sparse_vd_lrt(iris, graph="traced")
    with pytest.warns(UserWarning, match=r"compiling .* failed \(RuntimeError: no compiler\)"):
        step, got = _sparse_vd_lrt(iris, graph="compiled")
    (replay,) = step._graphs.values()
    assert isinstance(replay.graph, fx.GraphModule)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_scales_enter_linearly(iris) -> None:
    """observed and latent are inputs of the graph, not constants baked into it."""
    x, y = iris[0][:32], iris[1][:32]
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    guide = psb.guides.mean_field(bnn)
    guide(x, y)
    params = list(guide.parameters())
    step = TracedELBO(TraceMeanField_ELBO().differentiable_loss, bnn, guide, params)
    losses = {}
    for observed, latent in [(1.0, 0.0), (0.0, 1.0), (2.0, 3.0)]:
        torch.manual_seed(0)
        losses[observed, latent] = step(x, y, observed=observed, latent=latent)
    assert len(step._graphs) == 1
    combined = 2.0 * losses[1.0, 0.0] + 3.0 * losses[0.0, 1.0]
    torch.testing.assert_close(losses[2.0, 3.0], combined, rtol=1e-5, atol=1e-5)


class _CountingModel:
    """Adds its call count to the loss: every eager call differs from the traced constant."""

    calls = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self.calls += 1
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.factor("count", torch.tensor(float(self.calls)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(w * x[:, 0], 1.0), obs=y)


def _data_reading_model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    shift = float(np.asarray(x.detach()).mean())  # Python reads the data: a graph constant
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(w * x[:, 0] + shift, 1.0), obs=y)


def _regression_step(model, x: torch.Tensor, y: torch.Tensor) -> TracedELBO:
    guide = psb.guides.mean_field(model)
    guide(x, y)
    return TracedELBO(TraceMeanField_ELBO().differentiable_loss, model, guide,
                      list(guide.parameters()))  # fmt: skip


def _key(x: torch.Tensor, y: torch.Tensor) -> tuple:
    return x.shape, y.shape, x.dtype, y.dtype, x.device


def test_untraceable_step_runs_eagerly_with_a_warning(iris, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("no graph")

    monkeypatch.setattr(traced_elbo, "make_fx", fail)
    x, y = iris[0][:16], iris[0][:16, 1]
    step = _regression_step(_CountingModel(), x, y)
    with pytest.warns(UserWarning, match=r"could not be traced \(RuntimeError: no graph\)"):
        loss = step(x, y, observed=1.0, latent=1.0)
    assert step._graphs[_key(x, y)] is None
    assert torch.isfinite(loss) and all(p.grad is not None for p in step.params)


def test_graph_that_disagrees_when_traced_is_dropped(iris) -> None:
    x, y = iris[0][:16], iris[0][:16, 1]
    step = _regression_step(_CountingModel(), x, y)
    with pytest.warns(UserWarning, match="differs from the eager one"):
        step(x, y, observed=1.0, latent=1.0)
    assert step._graphs[_key(x, y)] is None


def test_graph_that_read_the_data_is_dropped_on_new_data(iris) -> None:
    x, y = iris[0][:16], iris[0][:16, 1]
    step = _regression_step(_data_reading_model, x, y)
    step(x, y, observed=1.0, latent=1.0)  # same data as traced on: the constant is right
    assert step._graphs[_key(x, y)] is not None
    other_x, other_y = iris[0][16:32], iris[0][16:32, 1]
    eager = TracedELBO(step.loss_fn, step.model, step.guide, step.params, graph="eager")
    torch.manual_seed(2)
    expected = eager(other_x, other_y, observed=1.0, latent=1.0)
    torch.manual_seed(2)
    with pytest.warns(UserWarning, match="on a new minibatch"):
        loss = step(other_x, other_y, observed=1.0, latent=1.0)
    assert step._graphs[_key(x, y)] is None
    torch.testing.assert_close(loss, expected)  # this step already ran eagerly


@pytest.mark.parametrize("method", ["svi", "nuts", "sgld"])
def test_bad_graph_option_is_rejected_by_every_method(iris, method) -> None:
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    with pytest.raises(ValueError, match=r"graph must be one of .*'traced'.*, got 'yes'"):
        psb.fit(bnn, *iris, method=method, graph="yes", progress=False)
    with pytest.raises(TypeError, match=r"graph must be one of .* got True"):
        psb.fit(bnn, *iris, method=method, graph=True, progress=False)


def test_sgmcmc_offers_no_compiled_graph(iris) -> None:
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    with pytest.raises(ValueError, match=r"graph must be one of \['eager', 'traced'\]"):
        psb.fit(bnn, *iris, method="sgld", graph="compiled", progress=False)


def test_conv_net_with_max_pool_traces(recwarn) -> None:
    """Max-pooling returns (values, indices): the graph simplification must cope with it."""
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(18, 3),
    )  # fmt: skip
    bnn = psb.SparseBNN(net, psb.priors.LogUniform(), psb.likelihoods.Categorical())
    guide = psb.guides.sparse_vd(bnn)
    guide(x, y)
    step = _step(bnn, guide, x, y, graph="traced")
    step(x, y, observed=1.0, latent=1.0)
    assert step._graphs[_key(x, y)] is not None
    assert not [w for w in recwarn if "traced SVI step" in str(w.message)]


@pytest.mark.parametrize(
    ("eager_s", "graph_s", "expected"), [(2.0, 1.0, "traced"), (1.0, 2.0, "eager")]
)
def test_svi_default_times_long_fits_both_ways(iris, monkeypatch, eager_s, graph_s, expected):
    """``graph=None``: a fit below ``TRACE_FROM_STEPS`` optimiser steps runs eagerly (150 rows in
    batches of 64: 3 steps per epoch); a longer one times its first steps of each minibatch
    shape eagerly and from the graph and keeps the faster (a clock that makes each eager step
    take ``eager_s`` and each replay ``graph_s``). Where the graph wins, the fit takes exactly
    the traced fit's steps (the graph's results are the step's while timing)."""
    clock = itertools.cycle([0.0, eager_s, 0.0, graph_s])  # eager start/end, graph start/end
    monkeypatch.setattr(traced_elbo, "_clock", lambda x: next(clock))
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    options = {"method": "svi", "batch_size": 64, "seed": 1, "progress": False}
    short = psb.fit(bnn, *iris, epochs=66, **options)
    assert short.info["graph"] == "eager"
    fits = {g: psb.fit(bnn, *iris, epochs=67, graph=g, **options) for g in (None, "traced")}
    assert fits[None].info["graph"] == expected
    if expected == "traced":  # every step replayed: the traced fit's exact steps
        assert fits[None].info["history"] == fits["traced"].info["history"]
    else:
        np.testing.assert_allclose(fits[None].info["history"], fits["traced"].info["history"],
                                   rtol=1e-4)  # fmt: skip
