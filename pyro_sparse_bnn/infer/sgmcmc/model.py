"""What ``fit_sgmcmc`` samples: the model's layout (sampled, fixed, SSGL-driven and recorded
sites) and the log density and gradient of every chain at once.

>>> from torch.distributions import constraints
>>> _is_real(constraints.real), _is_real(constraints.positive)
(True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median, init_to_value
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import biject_to, constraints

from ...priors import WEIGHT_TAG
from ...sites import is_improper, site_log_prob, unwrap
from ..graph_simplify import fold_broadcast_bmm, merge_common_subexpressions
from ..potential import ChainGradient
from .options import SSGLPrior

SAMPLERS = ("sgld", "sghmc")
LATE_STATES = 25  # per chain, for the PSIS-LOO budget of pruning="inclusion"


# --------------------------------------------------------------------------------------------
# What the model looks like: which sites are sampled, fixed, driven by SSGL or recorded


def _is_real(support: constraints.Constraint) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


@dataclass
class _Layout:
    """Sites of the model, classified once from a trace at the starting values."""

    observed: str
    shapes: dict[str, torch.Size]
    init: dict[str, Tensor]
    sampled: list[str]
    transforms: dict[str, Any]
    scored: list[str]
    weights: list[str]
    fixed: list[str] = field(default_factory=list)
    noise: str | None = None
    recorded: list[str] = field(default_factory=list)


def _start_trace(model: Callable, x: Tensor, y: Tensor, init: dict[str, Tensor]) -> poutine.Trace:
    values = {**getattr(model, "initial_weights", dict)(), **init}
    strategy = init_to_value(values=values, fallback=init_to_median(num_samples=15))
    try:
        with torch.no_grad():
            return poutine.trace(InitMessenger(strategy)(model)).get_trace(x, y)
    except NotImplementedError as error:
        raise ValueError(
            f"a latent site cannot be sampled to find a starting value ({error}); give its "
            "starting value in init={site: value}"
        ) from error


def _likelihood_inputs(
    model: Callable, x: Tensor, y: Tensor, observed: str, values: dict, candidates: list[str]
) -> set[str]:
    """Candidates whose value reaches the observed site's log-density (given ``values``)."""
    leaves = {k: values[k].detach().clone().requires_grad_(True) for k in candidates}
    with torch.enable_grad():
        trace = poutine.trace(poutine.condition(model, {**values, **leaves})).get_trace(x, y)
        node = trace.nodes[observed]
        log_lik = node["fn"].log_prob(node["value"]).sum()
        if not leaves or not log_lik.requires_grad:
            return set()
        grads = torch.autograd.grad(log_lik, list(leaves.values()), allow_unused=True)
    return {k for k, g in zip(leaves, grads, strict=True) if g is not None}


def _layout(model: Callable, x: Tensor, y: Tensor, ssgl: SSGLPrior | None, init: dict) -> _Layout:
    trace = _start_trace(model, x, y, init)
    unknown = sorted(set(init) - set(trace.nodes))
    if unknown:
        raise ValueError(f"init names sites the model does not have: {unknown}")
    nodes = [(k, n) for k, n in trace.nodes.items() if n["type"] == "sample"]
    nodes = [(k, n) for k, n in nodes if not site_is_subsample(n)]
    deterministic = [k for k, n in nodes if n["infer"].get("_deterministic")]
    observed = [k for k, n in nodes if n["is_observed"] and k not in deterministic]
    latent = [k for k, n in nodes if not n["is_observed"]]
    if len(observed) != 1:
        raise ValueError(f"the model must have exactly one observed site, found {observed}")
    weights = [k for k, n in nodes if n["infer"].get(WEIGHT_TAG)]
    for k in latent:
        fn = trace.nodes[k]["fn"]
        if fn.support.is_discrete:
            raise ValueError(f"site {k!r} is discrete: SG-MCMC needs continuous latent sites")
        if any(f.size == x.shape[0] for f in trace.nodes[k]["cond_indep_stack"]):
            raise ValueError(
                f"site {k!r} is a per-row (local) latent variable: minibatch SG-MCMC supports "
                "global latent sites only"
            )
    layout = _Layout(
        observed=observed[0],
        shapes={k: trace.nodes[k]["value"].shape for k in latent + deterministic},
        init={k: trace.nodes[k]["value"].detach() for k in latent + deterministic},
        sampled=latent,
        transforms={},
        scored=latent,
        weights=weights,
    )
    if ssgl is None:
        improper = [k for k in latent if is_improper(unwrap(trace.nodes[k]["fn"]))]
        if improper:
            raise ValueError(
                f"sites {improper} have improper priors: use an SSGLPrior or SVI for them"
            )
    else:
        _ssgl_layout(layout, model, x, y, trace, ssgl.noise_site)
    layout.transforms = {
        k: None
        if _is_real(trace.nodes[k]["fn"].support)
        else biject_to(trace.nodes[k]["fn"].support)
        for k in layout.sampled
    }
    conditioned = set(layout.sampled) | set(layout.fixed) | {layout.noise}
    layout.recorded = [k for k in deterministic if k not in conditioned]
    return layout


def _ssgl_layout(
    layout: _Layout, model: Callable, x: Tensor, y: Tensor, trace: Any, noise_site: str | None
) -> None:
    """Weights get the SSGL prior; other sites are sampled, fixed or driven by ``sigma``."""
    if not layout.weights:
        raise ValueError(
            f"an SSGLPrior needs weight sites tagged infer={{{WEIGHT_TAG!r}: True}} "
            "(every pyro_sparse_bnn prior tags its weights); the model has none"
        )
    latent = layout.sampled
    for k in layout.weights:
        if k in latent and not _is_real(trace.nodes[k]["fn"].support):
            raise ValueError(f"weight site {k!r} must be real-valued for the SSGL prior")
    others = [k for k in latent if k not in layout.weights]
    gaussian = isinstance(unwrap(trace.nodes[layout.observed]["fn"]), dist.Normal)
    if noise_site == "auto":
        noise_site = "noise" if "noise" in others and gaussian else None
    elif noise_site is not None:
        if noise_site not in others:
            raise ValueError(
                f"noise_site {noise_site!r} is not a latent non-weight site of the model"
            )
        if not gaussian:
            raise ValueError("noise_site needs a Normal observation model (regression form)")
    used = _likelihood_inputs(model, x, y, layout.observed, layout.init, others)
    layout.noise = noise_site
    layout.fixed = [k for k in others if k not in used]
    free = [k for k in others if k in used and k != noise_site]
    layout.sampled = list(layout.weights) + free
    layout.scored = free


# --------------------------------------------------------------------------------------------
# The log density of every chain, from the model


class _Density:
    """Log density of the sampled sites (unconstrained) per chain, with the RSS and the values
    of the recorded (deterministic) sites.

    :meth:`single` runs the model for one chain; :class:`_Gradient` runs it for all chains
    (:class:`~pyro_sparse_bnn.infer.potential.ChainGradient`: ``torch.func.vmap`` of it, so any
    model that runs for one chain vectorises with no plate semantics needed, or a loop where
    the model cannot be vmapped, e.g. Python branches on tensor values).
    """

    def __init__(self, model: Callable, layout: _Layout, num_chains: int, num_data: int) -> None:
        self.model, self.layout, self.num_chains, self.num_data = (
            model,
            layout,
            num_chains,
            num_data,
        )

    def values(self, unconstrained: list[Tensor], noise: Tensor | None) -> dict[str, Tensor]:
        """Constrained values of the sampled and driven sites (any leading chain dims)."""
        out = {}
        for k, u in zip(self.layout.sampled, unconstrained, strict=True):
            transform = self.layout.transforms[k]
            out[k] = u if transform is None else transform(u)
        if self.layout.noise is not None:
            shape = self.layout.shapes[self.layout.noise]
            out[self.layout.noise] = noise.reshape((*noise.shape, *shape))
        return out

    def single(
        self, unconstrained: list[Tensor], noise: Tensor | None, x: Tensor, y: Tensor
    ) -> list[Tensor]:
        """``[log density, rss (if a noise site is driven), *recorded values]`` of one chain.

        ``rss`` is the ``N/n``-scaled residual sum of squares of the minibatch.
        """
        layout = self.layout
        values = self.values(unconstrained, noise)
        conditioned = {**{k: layout.init[k] for k in layout.fixed}, **values}
        with pyro.validation_enabled(False):
            nodes = poutine.trace(poutine.condition(self.model, conditioned)).get_trace(x, y).nodes

        scale = self.num_data / x.shape[0]
        total = site_log_prob(nodes[layout.observed], validate=False)
        total = total if scale == 1.0 else scale * total
        for k in layout.scored:
            total = total + site_log_prob(nodes[k], validate=False)
        for k, u in zip(layout.sampled, unconstrained, strict=True):
            transform = layout.transforms[k]
            if transform is not None:
                total = total + transform.log_abs_det_jacobian(u, values[k]).sum()
        outputs = [total]
        if layout.noise is not None:
            node = nodes[layout.observed]
            rss = ((node["value"] - node["fn"].mean) ** 2).sum()
            outputs.append(rss if scale == 1.0 else scale * rss)
        outputs += [nodes[k]["value"].reshape(layout.shapes[k]) for k in layout.recorded]
        return outputs

    def parse(self, grads: list[Tensor], outputs: list[Tensor]) -> _Eval:
        """Name the pieces of :meth:`__call__`'s output."""
        rss = outputs[1] if self.layout.noise is not None else None
        offset = 1 + (rss is not None)
        recorded = dict(zip(self.layout.recorded, outputs[offset:], strict=True))
        return _Eval(list(grads), outputs[0], rss, recorded)


class _Eval(NamedTuple):
    """One evaluation at the current state: gradients, log density, RSS, recorded sites."""

    grads: list[Tensor]
    lp: Tensor
    rss: Tensor | None
    recorded: dict[str, Tensor]


def _close(a: Tensor, b: Tensor) -> bool:
    tol = 1e-4 if a.dtype == torch.float32 else 1e-9
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item())


class _Gradient:
    """Gradient and outputs of :class:`_Density` for every chain: the shared
    :class:`~pyro_sparse_bnn.infer.potential.ChainGradient` over the sampled sites, with the
    noise scale (split over chains) and the minibatch (shared) as inputs."""

    def __init__(self, density: _Density) -> None:
        self.density = density
        with_noise = density.layout.noise is not None

        def one_chain(us: list[Tensor], *inputs: Tensor) -> list[Tensor]:
            return density.single(us, *(inputs if with_noise else (None, *inputs)))

        dims = (0, None, None) if with_noise else (None, None)
        self.chains = ChainGradient(one_chain, density.num_chains, dims)

    @property
    def graph(self) -> Callable | None:
        """The traced gradient, or ``None`` while it runs eagerly."""
        return self.chains.graph

    def choose_vectorised(
        self, unconstrained: list[Tensor], noise: Tensor | None, x: Tensor, y: Tensor
    ) -> None:
        """Keep ``vmap`` if the model runs under it (and gives finite numbers), else loop."""
        self.chains.choose_vectorised(unconstrained, _inputs(noise, x, y))

    def eager(
        self,
        unconstrained: list[Tensor],
        noise: Tensor | None,
        x: Tensor,
        y: Tensor,
        params: Sequence[Tensor] = (),
    ) -> tuple[_Eval, list[Tensor]]:
        """The evaluation and the gradient of the summed log density w.r.t. ``params``."""
        grads, outputs, param_grads = self.chains.eager(unconstrained, _inputs(noise, x, y), params)
        return self.density.parse(grads, outputs), param_grads

    def trace(
        self, unconstrained: list[Tensor], noise: Tensor | None, batches: list[tuple]
    ) -> str | None:
        """Trace the gradient into an ATen graph; ``None`` on success, else the reason.

        The graph is replayed at a moved point on a second minibatch and must match eager.
        """
        (x0, y0), (x1, y1) = batches
        moved = [u + 0.01 * torch.randn_like(u) for u in unconstrained]

        def agrees(replay: Callable) -> bool:
            expected, _ = self.eager(moved, noise, x1, y1)
            got = self.density.parse(*replay(moved, _inputs(noise, x1, y1)))
            pairs = [*zip(got.grads, expected.grads, strict=True), (got.lp, expected.lp)]
            pairs += [] if got.rss is None else [(got.rss, expected.rss)]
            pairs += [(got.recorded[k], expected.recorded[k]) for k in got.recorded]
            return all(_close(a, b) for a, b in pairs)

        return self.chains.trace(unconstrained, _inputs(noise, x0, y0), agrees, (_rewrite,))

    def __call__(
        self, unconstrained: list[Tensor], noise: Tensor | None, x: Tensor, y: Tensor
    ) -> _Eval:
        return self.density.parse(*self.chains(unconstrained, _inputs(noise, x, y)))


def _rewrite(graph: Any) -> None:
    """SG-MCMC's own graph passes: batched products of broadcast weights, shared subterms."""
    fold_broadcast_bmm(graph.graph)
    merge_common_subexpressions(graph.graph)
    graph.graph.eliminate_dead_code()
    graph.recompile()


def _inputs(noise: Tensor | None, x: Tensor, y: Tensor) -> list[Tensor]:
    return [x, y] if noise is None else [noise, x, y]


def _point_parameters(model: Callable, trace_params: list[Tensor]) -> list[Tensor]:
    """Trainable tensors of the model that are not sample sites (e.g. plain network biases)."""
    found = list(trace_params)
    if isinstance(model, nn.Module):
        found += [p for p in model.parameters() if p.requires_grad]
    return list({id(p): p for p in found}.values())


def _param_leaves(model: Callable, x: Tensor, y: Tensor, values: dict) -> list[Tensor]:
    with torch.no_grad(), poutine.block(hide_types=["sample"]):
        trace = poutine.trace(poutine.condition(model, values), param_only=True).get_trace(x, y)
    leaves = []
    for node in trace.nodes.values():
        value = node["value"]
        unconstrained = getattr(value, "unconstrained", None)
        leaf = unconstrained() if unconstrained is not None else value
        if leaf.requires_grad:
            leaves.append(leaf)
    return leaves
