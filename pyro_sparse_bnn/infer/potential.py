"""A Pyro model's posterior as one flat potential over an unconstrained vector.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Transform, biject_to

from ..sites import is_improper, site_log_prob
from .graph_simplify import checked_trace, simplify_graph

__all__ = ["FlatPotential", "check_latent_sites", "latent_nodes"]

PotentialGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


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
        self.traced = False
        self._eager: PotentialGrad = torch.func.vmap(torch.func.grad_and_value(self.potential))
        probe = self._probes()
        try:
            self._eager(probe[0])
        except Exception as error:  # a model that vmap cannot batch runs chain by chain
            warnings.warn(
                f"the potential does not vectorise over chains ({type(error).__name__}: "
                f"{error}); evaluating chains one by one",
                stacklevel=2,
            )
            self._eager = self._chain_by_chain
            traced = False
        self._fn = self._eager
        if traced:
            self._trace_graph(probe)

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
        grad, value = self._fn(theta)
        return value, grad

    def _chain_by_chain(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        grads, values = [], []
        for row in theta:
            with torch.enable_grad():
                leaf = row.detach().requires_grad_(True)
                value = self.potential(leaf)
                (grad,) = torch.autograd.grad(value, leaf)
            grads.append(grad)
            values.append(value.detach())
        return torch.stack(grads), torch.stack(values)

    def _probes(self) -> list[Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(0)
        shape = (self.num_chains, self.dim)
        probe = [0.1 * torch.randn(shape, generator=gen, dtype=self.dtype) for _ in range(2)]
        return [p.to(self.device) for p in probe]

    def _trace_graph(self, probe: list[Tensor]) -> None:
        """Replace the eager batched potential by its ATen graph if the graph reproduces it."""
        tol = 1e-4 if self.dtype == torch.float32 else 1e-9

        def agrees(graph: Callable) -> bool:
            pairs = zip(self._eager(probe[1]), graph(probe[1]), strict=True)
            return all(torch.allclose(a, b, rtol=tol, atol=tol, equal_nan=True) for a, b in pairs)

        traced = checked_trace(lambda theta: self._eager(theta), (probe[0],), agrees,
                               passes=(simplify_graph,))  # fmt: skip
        if traced.graph is not None:
            self._fn, self.traced = traced.graph, True
        elif traced.error is not None:
            warnings.warn(
                f"the model could not be traced into a graph ({traced.error}); "
                "using the slower eager potential",
                stacklevel=3,
            )
        else:
            warnings.warn(
                "the traced potential differs from the eager one (data-dependent control flow?); "
                "using the slower eager potential",
                stacklevel=3,
            )
