"""A Pyro model's posterior as one flat potential over an unconstrained vector, and the batched
gradient machinery every sampler shares.

:class:`ChainGradient` evaluates a one-chain function and its gradient for a batch of chains:
through ``torch.func.vmap`` where the function vectorises, chain by chain where it does not, and
replayed from a checked ATen graph once traced. NUTS/HMC (through :class:`FlatPotential`) and
SG-MCMC (:mod:`~pyro_sparse_bnn.infer.sgmcmc.model`) build on it.

:class:`FlatPotential` traces the model once, lays its latent sites out in one unconstrained vector
``theta`` (``biject_to(support)`` per site, as Pyro's HMC does) and builds the potential energy
``U(theta) = -log p(x, y, constrain(theta)) - log|J|`` for a batch of chains at once. The batched
potential and its gradient are traced once with ``make_fx`` into a graph of ATen operations, so an
evaluation replays a few hundred tensor operations instead of running the Pyro model under
effect handlers; the graph is checked against the eager computation at a second point.

>>> import pyro, pyro.distributions as dist, torch
>>> def model(x, y=None):
...     s = pyro.sample("s", dist.HalfNormal(1.0))
...     with pyro.plate("data", x.shape[0]):
...         pyro.sample("y", dist.Normal(0.0, s), obs=y)
>>> flat = FlatPotential(model, (torch.zeros(3, 1), torch.zeros(3)), num_chains=2)
>>> flat.dim, flat.traced
(1, True)
>>> pe, grad = flat.potential_and_grad(torch.zeros(2, 1))
>>> tuple(pe.shape), tuple(grad.shape)
((2,), (2, 1))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor, fx
from torch.distributions import Transform, biject_to

from ..sites import is_improper, site_log_prob
from .graph_replay import flat_function
from .graph_simplify import checked_trace, simplify_graph

__all__ = ["ChainGradient", "FlatPotential", "check_latent_sites", "latent_nodes"]

OneChain = Callable[..., list[Tensor]]  # (xs, *inputs) -> [value, *aux] for one chain


def latent_nodes(trace: poutine.Trace) -> dict[str, dict]:
    """The latent (unobserved, non-deterministic) sample sites of a trace, in model order."""
    return {
        name: node
        for name, node in trace.nodes.items()
        if node["type"] == "sample" and not node["is_observed"] and not site_is_subsample(node)
    }


def check_latent_sites(nodes: Mapping[str, dict]) -> None:
    """Raise ``ValueError`` for latent sites that Hamiltonian Monte Carlo cannot sample."""
    if not nodes:
        raise ValueError("the model has no latent sample sites: there is nothing to sample")
    for name, node in nodes.items():
        fn = node["fn"]
        if is_improper(fn):
            raise ValueError(
                f"site {name!r} has an improper prior ({type(fn).__name__}, e.g. LogUniform), "
                "which has no posterior for MCMC to sample; use a proper prior (Horseshoe, "
                "StudentT, ...) or fit it with method='svi'"
            )
        if fn.has_enumerate_support or not node["value"].dtype.is_floating_point:
            raise ValueError(
                f"site {name!r} is discrete ({type(fn).__name__}); HMC/NUTS needs continuous "
                "latent sites"
            )


class ChainGradient:
    """The gradient and outputs of a one-chain function, for a batch of chains.

    ``one_chain(xs, *inputs)`` takes one chain's tensors ``xs`` (a list) and the ``inputs`` and
    returns ``[value, *aux]``. Called with ``xs`` that have a leading chain dim, this class
    returns the gradient of every chain's ``value`` w.r.t. its own ``xs`` and every output
    stacked over the chains. An input whose ``input_dims`` entry is 0 is split over the chains;
    ``None`` shares it (the ``in_dims`` of ``torch.func.vmap``).

    >>> import torch
    >>> chains = ChainGradient(lambda xs: [-(xs[0] ** 2).sum()], num_chains=2)
    >>> grads, outputs = chains([torch.tensor([[1.0], [2.0]])], ())
    >>> grads[0].flatten().tolist(), outputs[0].tolist()
    ([-2.0, -4.0], [-1.0, -4.0])
    """

    def __init__(
        self, one_chain: OneChain, num_chains: int, input_dims: tuple[int | None, ...] = ()
    ) -> None:
        self.one_chain, self.num_chains, self.input_dims = one_chain, num_chains, input_dims
        self.vectorised = True
        self.graph: Callable | None = None

    def outputs(self, xs: list[Tensor], inputs: Sequence[Tensor | None]) -> list[Tensor]:
        """Every output of every chain, stacked along a leading chain dim."""
        if self.vectorised:
            batched = torch.func.vmap(self.one_chain, in_dims=(0, *self.input_dims))
            return list(batched(xs, *inputs))
        per_chain = [
            self.one_chain([x[c] for x in xs], *self._chain_inputs(inputs, c))
            for c in range(self.num_chains)
        ]
        return [torch.stack(parts) for parts in zip(*per_chain, strict=True)]

    def _chain_inputs(self, inputs: Sequence[Tensor | None], c: int) -> list[Tensor | None]:
        dims = self.input_dims or (None,) * len(inputs)
        return [v if d is None or v is None else v[c] for v, d in zip(inputs, dims, strict=True)]

    def choose_vectorised(self, xs: list[Tensor], inputs: Sequence[Tensor | None]) -> str | None:
        """Keep ``vmap`` if the function runs under it with finite values, else run chain by
        chain; the reason when not vectorised."""
        try:
            with torch.no_grad():
                finite = bool(torch.isfinite(self.outputs(xs, inputs)[0]).all())
        except Exception as error:  # anything vmap cannot run: Python branches on values, ...
            self.vectorised = False
            return f"{type(error).__name__}: {error}"
        self.vectorised = finite
        return None if finite else "non-finite values under vmap"

    def eager(
        self, xs: list[Tensor], inputs: Sequence[Tensor | None], params: Sequence[Tensor] = ()
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Gradients w.r.t. ``xs``, outputs and gradients of the summed value w.r.t. other
        tensors ``params`` (zeros where unused), by autograd through :meth:`outputs`."""
        leaves = [x.detach().requires_grad_(True) for x in xs]
        targets = leaves + list(params)
        with torch.enable_grad():
            outputs = self.outputs(leaves, inputs)
            grads = torch.autograd.grad(outputs[0].sum(), targets, allow_unused=True)
        grads = [
            torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads, strict=True)
        ]
        outputs = [o.detach() for o in outputs]
        return grads[: len(leaves)], outputs, grads[len(leaves) :]

    def _transformed(self) -> Callable:
        """``(xs, inputs) -> (grads, (value, outputs))`` from functorch transforms (to trace)."""

        def value_and_outputs(xs: list[Tensor], inputs: list) -> tuple[Tensor, tuple]:
            outputs = self.one_chain(xs, *inputs)
            return outputs[0], tuple(outputs)

        if self.vectorised:
            one = torch.func.grad_and_value(value_and_outputs, has_aux=True)
            return torch.func.vmap(one, in_dims=(0, list(self.input_dims)))

        def all_chains(xs: list[Tensor], inputs: list) -> tuple[Tensor, tuple]:
            outputs = self.outputs(xs, inputs)
            return outputs[0].sum(), tuple(outputs)

        return torch.func.grad_and_value(all_chains, has_aux=True)

    def trace(
        self,
        xs: list[Tensor],
        inputs: Sequence[Tensor],
        agrees: Callable[[Callable], bool],
        passes: Sequence[Callable] = (),
    ) -> str | None:
        """Trace the gradient at ``(xs, inputs)`` into an ATen graph of flat tensor arguments,
        kept if ``agrees(replay)`` where ``replay(xs, inputs) -> (grads, outputs)`` runs it
        (:func:`~.graph_simplify.checked_trace`); ``None`` on success, else the reason. The
        graph runs as a :func:`~.graph_replay.flat_function` (fewer lookups per operation)."""
        n, transformed = len(xs), self._transformed()

        def flat(*args: Tensor) -> list[Tensor]:
            grads, (_, outputs) = transformed(list(args[:n]), list(args[n:]))
            return [*grads, *outputs]

        def replay(graph: fx.GraphModule) -> Callable:
            call = flat_function(graph)

            def run(xs: list[Tensor], inputs: Sequence[Tensor]) -> tuple[list, list]:
                out = call(*xs, *inputs)
                return list(out[:n]), list(out[n:])

            return run

        traced = checked_trace(flat, (*xs, *inputs), lambda g: agrees(replay(g)), passes)
        self.graph = None if traced.graph is None else replay(traced.graph)
        if traced.graph is None:
            return traced.error or "the traced gradient disagrees with the eager one"
        return None

    def __call__(
        self, xs: list[Tensor], inputs: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Gradients w.r.t. ``xs`` and outputs, from the graph if traced, else eagerly."""
        if self.graph is None:
            grads, outputs, _ = self.eager(xs, inputs)
            return grads, outputs
        return self.graph(xs, inputs)


@dataclass(frozen=True)
class Slot:
    """Where one latent site lives in the flat unconstrained vector."""

    name: str
    shape: torch.Size
    unconstrained_shape: torch.Size
    transform: Transform
    start: int
    stop: int


class FlatPotential:
    """The potential energy of ``model(*args)`` over a flat unconstrained vector.

    Args:
        model: a Pyro model; ``args`` are its arguments (the observations included).
        args: model arguments, e.g. ``(x, y)``.
        num_chains: the batch size ``C`` of :meth:`potential_and_grad`.
        trace: a trace of the model giving the sites (default: one run of the model).
        traced: trace the batched potential into an ATen graph (else evaluate it eagerly).
    """

    def __init__(
        self,
        model: Callable,
        args: tuple,
        *,
        num_chains: int = 1,
        trace: poutine.Trace | None = None,
        traced: bool = True,
    ) -> None:
        self.model = model
        self.args = args
        self.num_chains = num_chains
        if trace is None:
            with torch.no_grad():
                trace = poutine.trace(model).get_trace(*args)
        nodes = latent_nodes(trace)
        check_latent_sites(nodes)
        slots, start = [], 0
        for name, node in nodes.items():
            transform = biject_to(node["fn"].support)
            value = node["value"].detach()
            shape = transform.inv(value).shape
            slots.append(Slot(name, value.shape, shape, transform, start, start + shape.numel()))
            start += shape.numel()
        self.slots = slots
        self.dim = start
        first = nodes[slots[0].name]["value"]
        self.dtype, self.device = first.dtype, first.device
        self.chains = ChainGradient(lambda xs: [self.potential(xs[0])], num_chains)
        probe = self._probes()
        problem = self.chains.choose_vectorised([probe[0]], ())
        if problem is not None:  # a model that vmap cannot batch runs chain by chain
            warnings.warn(
                f"the potential does not vectorise over chains ({problem}); evaluating chains "
                "one by one",
                stacklevel=2,
            )
        elif traced:
            self._trace_graph(probe)

    @property
    def traced(self) -> bool:
        """Whether evaluations replay the traced graph."""
        return self.chains.graph is not None

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Unconstrained site values from ``theta`` of shape ``(..., dim)``."""
        batch = theta.shape[:-1]
        return {
            s.name: theta[..., s.start : s.stop].reshape(batch + s.unconstrained_shape)
            for s in self.slots
        }

    def constrain(self, theta: Tensor) -> dict[str, Tensor]:
        """Constrained site values (the model's own) from ``theta`` of shape ``(..., dim)``."""
        free = self.unflatten(theta)
        return {s.name: s.transform(free[s.name]) for s in self.slots}

    def flatten(self, values: Mapping[str, Tensor]) -> Tensor:
        """Inverse of :meth:`constrain` for one chain: constrained values to ``theta``."""
        parts = [s.transform.inv(values[s.name].detach()).reshape(-1) for s in self.slots]
        return torch.cat(parts).to(self.dtype)

    def log_joint(self, values: Mapping[str, Tensor]) -> Tensor:
        """``log p`` of the model conditioned on constrained latent ``values`` (one chain)."""
        with pyro.validation_enabled(False):
            trace = poutine.trace(poutine.condition(self.model, dict(values))).get_trace(*self.args)
            total = torch.zeros((), dtype=self.dtype, device=self.device)
            for node in trace.nodes.values():
                if node["type"] != "sample" or site_is_subsample(node):
                    continue
                total = total + site_log_prob(node, validate=False)
        return total

    def potential(self, theta: Tensor) -> Tensor:
        """``U(theta)`` for one chain (``theta`` of shape ``(dim,)``)."""
        free = self.unflatten(theta)
        values, log_det = {}, torch.zeros((), dtype=theta.dtype, device=theta.device)
        for s in self.slots:
            values[s.name] = s.transform(free[s.name])
            log_det = log_det + s.transform.log_abs_det_jacobian(free[s.name], values[s.name]).sum()
        return -(self.log_joint(values) + log_det)

    def potential_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """``(U, dU/dtheta)`` for a batch ``theta`` of shape ``(num_chains, dim)``."""
        grads, outputs = self.chains([theta], ())
        return outputs[0], grads[0]

    def _probes(self) -> list[Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(0)
        shape = (self.num_chains, self.dim)
        probe = [0.1 * torch.randn(shape, generator=gen, dtype=self.dtype) for _ in range(2)]
        return [p.to(self.device) for p in probe]

    def _trace_graph(self, probe: list[Tensor]) -> None:
        """Replace the eager batched potential by its ATen graph if the graph reproduces it."""
        tol = 1e-4 if self.dtype == torch.float32 else 1e-9

        def agrees(graph: Callable) -> bool:
            grads, outputs, _ = self.chains.eager([probe[1]], ())
            got_grads, got = graph([probe[1]], ())
            pairs = [(grads[0], got_grads[0]), (outputs[0], got[0])]
            return all(torch.allclose(a, b, rtol=tol, atol=tol, equal_nan=True) for a, b in pairs)

        problem = self.chains.trace([probe[0]], (), agrees, passes=(simplify_graph,))
        if problem is not None:
            warnings.warn(
                f"the potential was not replaced by a graph ({problem}; data-dependent control "
                "flow?); using the slower eager potential",
                stacklevel=3,
            )
