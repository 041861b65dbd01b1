"""An SVI step's loss and gradients replayed from one traced graph of ATen operations.

Running a Pyro model and guide under an ELBO costs far more Python (effect handlers, site
dictionaries, distribution objects) than arithmetic for a network of moderate size. A
:class:`TracedELBO` runs ``loss_fn(model, guide, x, y)`` and its backward pass once under
``make_fx``, so every later step replays the few hundred tensor operations that the step really
is, random draws included, on the current parameter values. The parameters, the minibatch and
the two :class:`~pyro_sparse_bnn.handlers.ScaleSites` factors are inputs of the graph; one graph
is kept per minibatch shape.

The graph is checked when it is built: from the same random state it must give the loss and
gradients of the eager step, on the minibatch it was traced on and again on the first minibatch
with other data. A step that cannot be traced, or whose graph fails a check, runs eagerly from
then on, with a warning. As with Pyro's ``JitTrace_ELBO``, the model's Python control flow may
depend on shapes but not on tensor values: a value that Python reads from a tensor becomes a
constant of the graph, and the checks only catch it when it changes between them.

With ``graph="compiled"`` the checked graph is further compiled by ``torch.compile``'s Inductor
backend, which fuses its elementwise operations (the per-weight KL terms, the guide's scale
transforms, the local-reparameterisation noise) into a few generated C++ (CPU, needs a C++
compiler) or Triton (CUDA) kernels; random draws still come from torch's generator, so the
compiled graph is checked against the eager step like the plain one. Compiling costs seconds to a
minute per minibatch shape; a graph that cannot be compiled, or whose compiled form fails the
check, is replayed uncompiled, with a warning.

>>> import torch
>>> from pyro.infer import TraceMeanField_ELBO
>>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
>>> from pyro_sparse_bnn.guides import mean_field
>>> bnn = SparseBNN(mlp([4, 8, 3]), priors.Normal(), likelihoods.Categorical())
>>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
>>> guide = mean_field(bnn)
>>> _ = guide(x, y)
>>> params = list(guide.parameters())
>>> step = TracedELBO(TraceMeanField_ELBO().differentiable_loss, bnn, guide, params)
>>> loss = step(x, y, observed=1.0, latent=1.0)
>>> step.traced, all(p.grad is not None for p in params)
(True, True)
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import pyro
import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.proxy_tensor import make_fx

from ..dtypes import float_dtype
from ..handlers import ScaleSites
from ..validation import GRAPH_MODES, check_graph
from .graph_replay import flat_function
from .graph_simplify import simplify_graph

__all__ = ["TracedELBO"]

AUTO_PROBES = 6
"""``graph="auto"`` times this many steps of a minibatch shape both ways before it chooses."""
AUTO_EAGER_BELOW = 0.8
"""``graph="auto"`` runs eagerly only when the eager step takes less than this fraction of the
replay's time: a close call keeps the graph, so the choice (and the fit's rounding) does not
flip with the machine's load."""
LossFn = Callable[..., Tensor]
Graph = Callable[..., list[Tensor]]  # (*params, x, y, observed, latent) -> [loss, *grads]


class TracedELBO:
    """``loss_fn(model, guide, x, y)`` and its gradients, traced once per minibatch shape.

    Args:
        loss_fn: a differentiable ELBO loss, e.g. ``TraceMeanField_ELBO().differentiable_loss``.
        model, guide: the Pyro model and guide (already run once, so their parameters exist).
        params: the parameters to differentiate; their ``.grad`` is set by each call.
        graph: ``"traced"``; ``"eager"`` runs every step eagerly (same results, no tracing);
            ``"compiled"`` also compiles each graph with Inductor; ``"auto"`` traces, times
            each minibatch shape's first :data:`AUTO_PROBES` steps both ways (the graph's
            result is the step's) and keeps the faster: a graph of many small operations, such
            as a recurrent net unrolled over time, can replay slower than torch's fused eager
            kernels.

    Calling it returns the loss (detached) and leaves the gradients in ``p.grad``.
    """

    def __init__(
        self,
        loss_fn: LossFn,
        model: Callable,
        guide: Callable,
        params: list[nn.Parameter],
        *,
        graph: str = "traced",
    ) -> None:
        check_graph(graph, (*GRAPH_MODES, "auto"))
        self.loss_fn, self.model, self.guide = loss_fn, model, guide
        self.params = list(params)
        self.traced, self.compiled = graph != "eager", graph == "compiled"
        self.auto = graph == "auto"
        self._graphs: dict[tuple, Graph | None] = {}
        self._unchecked: dict[tuple, tuple[Tensor, Tensor]] = {}  # the data each was traced on
        self._timings: dict[tuple, tuple[list[float], list[float]]] = {}  # auto: graph, eager

    @property
    def replays(self) -> bool:
        """Whether some minibatch shape's steps are replayed from a graph."""
        return any(graph is not None for graph in self._graphs.values())

    def __call__(self, x: Tensor, y: Tensor, *, observed: float, latent: float) -> Tensor:
        dtype = float_dtype(x)
        scales = [torch.tensor(s, dtype=dtype, device=x.device) for s in (observed, latent)]
        graph = self._graph(x, y, scales) if self.traced else None
        if graph is None:
            loss, *grads = self._eager(x, y, *scales)
        elif self.auto and _key(x, y) in self._timings:
            loss, *grads = self._timed(graph, x, y, scales)
        else:
            loss, *grads = graph(*self.params, x, y, *scales)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        return loss

    def _timed(self, graph: Graph, x: Tensor, y: Tensor, scales: list[Tensor]) -> list[Tensor]:
        """``graph="auto"``: the step from the graph, timed against the same step run eagerly
        (from the same random state, its result discarded); after :data:`AUTO_PROBES` steps
        the eager step runs this minibatch shape from then on if it was clearly faster
        (:data:`AUTO_EAGER_BELOW`), else the graph."""
        key = _key(x, y)
        on_graph, on_eager = self._timings[key]
        with torch.random.fork_rng(devices=_devices(x)):
            start = _clock(x)
            self._eager(x, y, *scales)
            on_eager.append(_clock(x) - start)
        start = _clock(x)
        result = graph(*self.params, x, y, *scales)
        on_graph.append(_clock(x) - start)
        if len(on_graph) > AUTO_PROBES:  # the first of each pays one-time costs
            del self._timings[key]
            eager, replay = statistics.median(on_eager[1:]), statistics.median(on_graph[1:])
            if eager < AUTO_EAGER_BELOW * replay:
                self._graphs[key] = None
                self._unchecked.pop(key, None)
        return result

    def _eager(self, x: Tensor, y: Tensor, observed: Tensor, latent: Tensor) -> list[Tensor]:
        with torch.enable_grad():
            scale = ScaleSites(observed=observed, latent=latent)
            loss = self.loss_fn(scale(self.model), scale(self.guide), x, y)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        zeros = [
            torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)
        ]
        return [loss.detach(), *zeros]

    def _graph(self, x: Tensor, y: Tensor, scales: list[Tensor]) -> Graph | None:
        """The graph for this minibatch shape: traced and checked on first use, checked again
        on the first minibatch with other data (values the trace read from the data would show
        there); ``None`` once a check fails."""
        key = _key(x, y)
        if key not in self._graphs:
            self._graphs[key] = graph = self._trace(x, y, scales)
            if graph is not None:
                self._unchecked[key] = (x.clone(), y.clone())
                if self.auto:
                    self._timings[key] = ([], [])
        elif key in self._unchecked and not all(map(torch.equal, self._unchecked[key], (x, y))):
            del self._unchecked[key]
            if not self._matches(self._graphs[key], x, y, scales):
                self._graphs[key] = None
                _warn("differs from the eager one on a new minibatch (data-dependent Python?)")
        return self._graphs[key]

    def _trace(self, x: Tensor, y: Tensor, scales: list[Tensor]) -> Graph | None:
        """Trace the step; ``None`` (eager from then on) when tracing fails or disagrees."""
        try:
            with warnings.catch_warnings(), pyro.validation_enabled(False):
                warnings.simplefilter("ignore")
                with torch.random.fork_rng(devices=_devices(x)):
                    self._eager(x, y, *scales)  # lets stateful estimators settle (LRT's means)
                    # Pyro reads loss values with .item() and checks for NaN: such reads become
                    # constants of the graph, so its outputs are checked against the eager step.
                    graph = make_fx(
                        lambda *args: self._eager(*args), _error_on_data_dependent_ops=False
                    )(x, y, *scales)
                graph = simplify_graph(_params_as_inputs(graph, self.params))
                replay = _Replay(graph)
                matches = self._matches(replay, x, y, scales)
        except Exception as error:  # any failure: keep the eager step
            _warn(f"could not be traced ({type(error).__name__}: {error})")
            return None
        if not matches:
            _warn("differs from the eager one (Python control flow on random draws?)")
            return None
        return self._compile(replay, x, y, scales) if self.compiled else replay

    def _compile(self, replay: _Replay, x: Tensor, y: Tensor, scales: list[Tensor]) -> Graph:
        """The replay's graph compiled by Inductor, or ``replay`` itself (with a warning) when
        compiling fails or the compiled graph disagrees with the eager step."""

        # Inductor draws its own random numbers unless told to call torch's generator, and may
        # lay out a convolution's output channels-last, where ``randn_like`` would then put the
        # same numbers at other positions than the eager step does.
        options = {"fallback_random": True, "layout_optimization": False}
        try:
            compiled = torch.compile(replay.graph, dynamic=False, fullgraph=True, options=options)
            run = _Replay(compiled)
            if self._matches(run, x, y, scales):
                return run
            problem = "differs from the eager step"
        except Exception as error:
            problem = f"failed ({type(error).__name__}: {str(error).splitlines()[0]})"
        warnings.warn(
            f"compiling the traced SVI step {problem}; replaying it uncompiled", stacklevel=5
        )
        return replay

    def _matches(self, graph: Graph, x: Tensor, y: Tensor, scales: list[Tensor]) -> bool:
        """Whether the graph gives the eager loss and gradients from one random state (the
        global random state is left as it was)."""
        with torch.random.fork_rng(devices=_devices(x)), pyro.validation_enabled(False):
            seed = int(torch.randint(2**62, ()))
            torch.manual_seed(seed)
            expected = self._eager(x, y, *scales)
            torch.manual_seed(seed)
            got = graph(*self.params, x, y, *scales)
        tol = 1e-4 if x.dtype == torch.float32 else 1e-9
        pairs = zip(expected, got, strict=True)
        return all(torch.allclose(a, b, rtol=tol, atol=tol, equal_nan=True) for a, b in pairs)


class _Replay:
    """A traced (``fx.GraphModule``, run as a :func:`~.graph_replay.flat_function`) or compiled
    ``graph`` run with autograd off: it computes its gradients itself, and recording the
    replay's operations for autograd would only cost time and memory."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._run = flat_function(graph) if isinstance(graph, fx.GraphModule) else graph

    def __call__(self, *args: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return self._run(*args)


def _key(x: Tensor, y: Tensor) -> tuple:
    return (x.shape, y.shape, x.dtype, y.dtype, x.device)


def _clock(x: Tensor) -> float:
    """Wall time after the device's queued work (a CUDA step returns before it has run)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter()


def _warn(what: str) -> None:
    warnings.warn(f"the traced SVI step {what}; running it eagerly", stacklevel=5)


def _devices(x: Tensor) -> list[int]:
    return [x.device.index or 0] if x.device.type == "cuda" else []


def _params_as_inputs(graph: fx.GraphModule, params: list[nn.Parameter]) -> fx.GraphModule:
    """Turn the graph's stored references to ``params`` into leading placeholder inputs."""
    index = {id(p): i for i, p in enumerate(params)}
    first = next(n for n in graph.graph.nodes if n.op == "placeholder")
    inputs = []
    for i in range(len(params)):
        with graph.graph.inserting_before(first):
            inputs.append(graph.graph.placeholder(f"param_{i}"))
        inputs[-1].meta["val"] = torch.empty_like(params[i], device="meta")
    for node in list(graph.graph.nodes):
        if node.op == "get_attr" and id(getattr(graph, node.target, None)) in index:
            node.replace_all_uses_with(inputs[index[id(getattr(graph, node.target))]])
            graph.graph.erase_node(node)
    graph.graph.lint()
    graph.recompile()
    return graph
