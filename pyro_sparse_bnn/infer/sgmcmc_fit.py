"""``fit_sgmcmc``: SGLD, SGHMC and the SSGL adaptive empirical Bayes samplers for any Pyro model.

The sampler moves the model's latent sites in an unconstrained space (``biject_to(support)``,
with the log-Jacobian added), so the scale sites of a shrinkage prior are sampled along with the
weights. The log density comes from the Pyro model itself: the model is run conditioned on the
current values of every chain and the ``log_prob`` of its sites is summed; the observed site's
minibatch sum is scaled by ``N / n``.

* ``prior="model"`` samples every latent site under the model's own prior.
* ``prior="ssgl"`` replaces the prior of the weight sites (those tagged ``psb_weight``) by the
  spike-and-slab Gaussian-Laplace prior of :class:`~pyro_sparse_bnn.infer.sgmcmc.SSGL`, whose
  latent state (inclusion probabilities ``rho``, rates ``delta``, scale ``sigma``) follows
  stochastic-approximation (``sa="sa"``) or EM (``sa="em"``) updates after every step. Latent
  sites that only shape the weights' prior (horseshoe scales, non-centred draws, ...) no longer
  matter and keep their starting values; other latent sites the likelihood uses are sampled under
  their model prior, except the Gaussian noise scale (``noise_site``), which is set to ``sigma``
  (the paper's regression form).

All chains run at once through ``torch.func.vmap`` of the one-chain log density (any model that
runs for one chain vectorises; one that vmap cannot run is run chain by chain). With
``compile=True`` the gradient is traced once into an ATen graph (``make_fx``), simplified, checked
against eager autograd at a second point and minibatch, and replayed without Pyro's per-step
tracing; a model that cannot be traced (Python branches on tensor values) runs eagerly.
See docs/sgmcmc.md.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median, init_to_value
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import biject_to, constraints
from tqdm.auto import tqdm

from ..isolation import check_seed, isolated
from ..priors import WEIGHT_TAG
from ..sites import is_improper, unvalidated, unwrap
from ..sparsity import budget_masks, relevance
from ..validation import (
    as_tensor,
    check_choice,
    check_number,
    check_positive,
    check_positive_int,
    check_xy,
)
from .result import FitResult
from .sgmcmc import (
    EM_WEIGHTS,
    SGHMC,
    SGLD,
    SSGL,
    SSGL_SA_WEIGHTS,
    ConstantSchedule,
    LangevinIntegrator,
    RMSPreconditioner,
    SparseRateSchedule,
    inclusion_mask,
    magnitude_mask,
)

__all__ = ["PRIORS", "PRUNING", "SAMPLERS", "SA_MODES", "SGMCMC_METHODS", "fit_sgmcmc"]

SAMPLERS = ("sgld", "sghmc")
PRIORS = ("model", "ssgl")
SA_MODES = ("sa", "em")
PRUNING = ("magnitude", "inclusion")
LATE_STATES = 25  # per chain, for the PSIS-LOO budget of pruning="inclusion"
_SSGL_OPTIONS = ("v0", "v1", "nu", "lam", "a", "b", "delta", "sigma")

Schedule = Callable[[int], float]


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


def _layout(
    model: Callable, x: Tensor, y: Tensor, prior: str, noise_site: str | None, init: dict
) -> _Layout:
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
    if prior == "model":
        improper = [k for k in latent if is_improper(unwrap(trace.nodes[k]["fn"]))]
        if improper:
            raise ValueError(
                f"sites {improper} have improper priors: use prior='ssgl' or SVI for them"
            )
    else:
        _ssgl_layout(layout, model, x, y, trace, noise_site)
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
            f"prior='ssgl' needs weight sites tagged infer={{{WEIGHT_TAG!r}: True}} "
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

    :meth:`single` runs the model for one chain; all chains run through ``torch.func.vmap`` of
    it (any model that runs for one chain vectorises, no plate semantics needed) or, if the
    model cannot be vmapped (e.g. Python branches on tensor values), in a loop.
    """

    def __init__(self, model: Callable, layout: _Layout, num_chains: int, num_data: int) -> None:
        self.model, self.layout, self.num_chains, self.num_data = (
            model,
            layout,
            num_chains,
            num_data,
        )
        self.vectorised = True

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

        def log_prob(name: str) -> Tensor:
            n = nodes[name]
            log_p = unvalidated(n["fn"]).log_prob(n["value"])
            return scale_and_mask(log_p, n["scale"], n["mask"]).sum()

        scale = self.num_data / x.shape[0]
        total = log_prob(layout.observed)
        total = total if scale == 1.0 else scale * total
        for k in layout.scored:
            total = total + log_prob(k)
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

    def __call__(
        self, unconstrained: list[Tensor], noise: Tensor | None, x: Tensor, y: Tensor
    ) -> list[Tensor]:
        """:meth:`single` for every chain, stacked along a leading chain dim."""
        if self.vectorised:
            batched = torch.func.vmap(self.single, in_dims=(0, _noise_dim(noise), None, None))
            return batched(unconstrained, noise, x, y)
        per_chain = [
            self.single([u[c] for u in unconstrained], None if noise is None else noise[c], x, y)
            for c in range(self.num_chains)
        ]
        return [torch.stack(parts) for parts in zip(*per_chain, strict=True)]

    def parse(self, grads: list[Tensor], outputs: list[Tensor]) -> _Eval:
        """Name the pieces of :meth:`__call__`'s output."""
        rss = outputs[1] if self.layout.noise is not None else None
        offset = 1 + (rss is not None)
        recorded = dict(zip(self.layout.recorded, outputs[offset:], strict=True))
        return _Eval(list(grads), outputs[0], rss, recorded)

    def choose_vectorised(self, unconstrained: list[Tensor], noise: Tensor | None, x, y) -> None:
        """Keep ``vmap`` if the model runs under it (and gives finite numbers), else loop."""
        try:
            with torch.no_grad():
                self.vectorised = bool(torch.isfinite(self(unconstrained, noise, x, y)[0]).all())
        except (RuntimeError, ValueError, NotImplementedError):
            self.vectorised = False


def _noise_dim(noise: Tensor | None) -> int | None:
    return None if noise is None else 0


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
    """Gradient and outputs of :class:`_Density`: eager autograd or a traced ATen graph."""

    def __init__(self, density: _Density) -> None:
        self.density = density
        self.graph: Callable | None = None

    def eager(
        self,
        unconstrained: list[Tensor],
        noise: Tensor | None,
        x: Tensor,
        y: Tensor,
        params: Sequence[Tensor] = (),
    ) -> tuple[_Eval, list[Tensor]]:
        """The evaluation and the gradient of the summed log density w.r.t. ``params``."""
        leaves = [u.detach().requires_grad_(True) for u in unconstrained]
        targets = leaves + list(params)
        with torch.enable_grad():
            outputs = self.density(leaves, noise, x, y)
            grads = torch.autograd.grad(outputs[0].sum(), targets, allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(targets, grads, strict=True)
        ]
        outputs = [o.detach() for o in outputs]
        return self.density.parse(grads[: len(leaves)], outputs), grads[len(leaves) :]

    def _transformed(self, with_noise: bool) -> Callable:
        """``(us, inputs) -> (grads, (sum, outputs))`` built from functorch transforms."""
        density = self.density

        def one_chain(us: list[Tensor], inputs: list[Tensor]) -> tuple[Tensor, tuple]:
            outputs = density.single(us, *(inputs if with_noise else [None, *inputs]))
            return outputs[0], tuple(outputs)

        if density.vectorised:
            in_dims = (0, [0, None, None] if with_noise else [None, None])
            return torch.func.vmap(torch.func.grad_and_value(one_chain, has_aux=True), in_dims)

        def all_chains(us: list[Tensor], inputs: list[Tensor]) -> tuple[Tensor, tuple]:
            outputs = density(us, *(inputs if with_noise else [None, *inputs]))
            return outputs[0].sum(), tuple(outputs)

        return torch.func.grad_and_value(all_chains, has_aux=True)

    def compile(
        self, unconstrained: list[Tensor], noise: Tensor | None, batches: list[tuple]
    ) -> str | None:
        """Trace the gradient into an ATen graph; ``None`` on success, else the reason.

        The graph is replayed at a moved point on a second minibatch and must match eager.
        """
        from torch.fx.experimental.proxy_tensor import make_fx

        (x0, y0), (x1, y1) = batches
        try:
            graph = make_fx(self._transformed(noise is not None))(
                unconstrained, _inputs(noise, x0, y0)
            )
            _fold_broadcast_bmm(graph.graph)
            _merge_common_subexpressions(graph.graph)
            graph.graph.eliminate_dead_code()
            graph.recompile()
            moved = [u + 0.01 * torch.randn_like(u) for u in unconstrained]
            expected, _ = self.eager(moved, noise, x1, y1)
            grads, (_, outputs) = graph(moved, _inputs(noise, x1, y1))
        except Exception as error:  # any failure to trace or replay means: stay eager
            return f"{type(error).__name__}: {error}"
        got = self.density.parse(grads, list(outputs))
        pairs = [*zip(got.grads, expected.grads, strict=True), (got.lp, expected.lp)]
        pairs += [] if got.rss is None else [(got.rss, expected.rss)]
        pairs += [(got.recorded[k], expected.recorded[k]) for k in got.recorded]
        if not all(_close(a, b) for a, b in pairs):
            return "the traced gradient disagrees with the eager one"
        self.graph = graph
        return None

    def __call__(
        self, unconstrained: list[Tensor], noise: Tensor | None, x: Tensor, y: Tensor
    ) -> _Eval:
        if self.graph is None:
            return self.eager(unconstrained, noise, x, y)[0]
        grads, (_, outputs) = self.graph(unconstrained, _inputs(noise, x, y))
        return self.density.parse(grads, list(outputs))


def _fold_broadcast_bmm(graph: Any) -> None:
    """Rewrite ``bmm`` with an operand broadcast over the batch (stride 0) as one ``mm``.

    ``vmap`` over chains turns ``x @ w_chain`` with shared data ``x`` into a ``bmm`` of the
    expanded ``x``: a batch of matrix-vector products when ``w`` is a column, ~15x slower on CPU
    than the single matrix product that reads ``x`` once. Both sides of each rewrite are exact
    (the traced graph is still checked against eager afterwards).
    """
    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.target is not aten.bmm.default:
            continue
        left, right = node.args
        lv, rv = left.meta.get("val"), right.meta.get("val")
        if not isinstance(lv, Tensor) or not isinstance(rv, Tensor) or lv.shape[0] < 2:
            continue
        batch, n, p = lv.shape
        k = rv.shape[2]

        def call(op: Any, *args: Any) -> Any:
            return graph.call_function(op, args)

        with graph.inserting_before(node):
            if lv.stride(0) == 0:  # out[b] = x @ right[b] = (x @ [right[0] ... right[B-1]])
                columns = call(
                    aten.reshape.default,
                    call(aten.permute.default, right, [1, 0, 2]),
                    [p, batch * k],
                )
                product = call(aten.mm.default, call(aten.select.int, left, 0, 0), columns)
                folded = call(
                    aten.permute.default,
                    call(aten.reshape.default, product, [n, batch, k]),
                    [1, 0, 2],
                )
                folded = graph.call_function(
                    aten.clone.default, (folded,), {"memory_format": torch.contiguous_format}
                )
            elif rv.stride(0) == 0:  # out[b] = left[b] @ x: stack the left rows
                rows = call(aten.reshape.default, left, [batch * n, p])
                product = call(aten.mm.default, rows, call(aten.select.int, right, 0, 0))
                folded = call(aten.reshape.default, product, [batch, n, k])
            else:
                continue
        node.replace_all_uses_with(folded)
        graph.erase_node(node)


def _merge_common_subexpressions(graph: Any) -> None:
    """Let repeated pure ATen calls with equal arguments share one node (e.g. the residual that
    both the log-likelihood and the RSS use). Graphs with in-place ops are left alone: merging
    two equal tensors is only safe when neither is mutated later."""

    def key(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(key(v) for v in value)
        if isinstance(value, dict):
            return tuple(sorted((k, key(v)) for k, v in value.items()))
        return value

    schemas = [getattr(n.target, "_schema", None) for n in graph.nodes if n.op == "call_function"]
    if any(schema is None or schema.is_mutable for schema in schemas):
        return
    seen: dict[Any, Any] = {}
    for node in list(graph.nodes):
        target = node.target
        if node.op != "call_function":
            continue
        if torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
            continue
        signature = (target, key(node.args), key(node.kwargs))
        if signature in seen:
            node.replace_all_uses_with(seen[signature])
            graph.erase_node(node)
        else:
            seen[signature] = node


def _inputs(noise: Tensor | None, x: Tensor, y: Tensor) -> list[Tensor]:
    return [x, y] if noise is None else [noise, x, y]


# --------------------------------------------------------------------------------------------
# Options


def _check_schedule(value: Any, name: str) -> Schedule:
    if callable(value):
        return value
    return ConstantSchedule(check_positive(value, name))


def _integrator(
    sampler: str,
    step_size: float | Schedule,
    temperature: float,
    friction: float | None,
    preconditioner: str | RMSPreconditioner | None,
    warmup: int,
) -> LangevinIntegrator:
    if preconditioner == "rmsprop":
        preconditioner = RMSPreconditioner(adapt_until=warmup or None)
    elif preconditioner is not None and not isinstance(preconditioner, RMSPreconditioner):
        raise ValueError(
            "preconditioner must be None, 'rmsprop' or an RMSPreconditioner, "
            f"got {preconditioner!r}"
        )
    if sampler == "sgld":
        if friction is not None:
            raise ValueError("friction applies to sampler='sghmc' only")
        return SGLD(step_size, temperature=temperature, preconditioner=preconditioner)
    friction = 0.1 if friction is None else float(check_number(friction, "friction", low=0, high=1))
    if friction == 0.0:
        raise ValueError("friction must be in (0, 1], got 0")
    return SGHMC(step_size, friction, temperature=temperature, preconditioner=preconditioner)


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


# --------------------------------------------------------------------------------------------
# The sampler


@isolated
def fit_sgmcmc(
    model: Callable,
    X: Tensor,
    y: Tensor,
    *,
    sampler: str = "sgld",
    prior: str = "model",
    sa: str | None = None,
    step_size: float | Schedule | None = None,
    num_samples: int = 1000,
    warmup: int = 1000,
    thin: int = 1,
    batch_size: int | None = None,
    num_chains: int = 4,
    temperature: float = 1.0,
    friction: float | None = None,
    preconditioner: str | RMSPreconditioner | None = None,
    ssgl_options: Mapping[str, float] | None = None,
    sa_weights: float | Schedule | None = None,
    noise_site: str | None = "auto",
    pruning: str | None = None,
    sparsity: float = 0.9,
    sparsity_damping: float = 0.99,
    sparsity_period: float | None = None,
    prune_every: int = 10,
    inclusion_threshold: float = 0.5,
    init: Mapping[str, Any] | None = None,
    param_lr: float = 1e-2,
    compile: bool = True,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
) -> FitResult:
    """Sample the posterior of ``model`` with stochastic-gradient Langevin dynamics.

    Args:
        sampler: ``"sgld"`` or ``"sghmc"`` (SGD-with-momentum form: ``step_size`` is the
            learning rate, ``friction`` is ``1 - momentum``, default 0.1).
        prior: ``"model"`` (the model's own prior on every latent site) or ``"ssgl"`` (the
            SSGL prior on the weight sites; see the module docstring).
        sa: ``"sa"`` (stochastic approximation, weights ``sa_weights``, default
            ``min(0.1, 1000 / (100 + k) ** 0.7)``) or ``"em"`` (weight 1); ``prior="ssgl"`` only.
        step_size: a number or a schedule ``k -> eps`` (``k`` from 1). Default ``0.1 / N`` for
            SGLD (the SSGL paper's 1e-3 at N = 100) and ``0.01 / N`` for SGHMC; tune it.
        num_samples, warmup, thin: ``warmup + num_samples * thin`` iterations; every ``thin``-th
            after warm-up is kept, per chain.
        batch_size: rows per gradient (drawn without replacement each step; default all ``N``);
            the minibatch log-likelihood is scaled by ``N / batch_size``.
        num_chains: independent chains, vectorised when the model allows.
        temperature: ``T``; the chains target ``posterior ** (1 / T)`` (noise variance
            ``2 eps T``).
        preconditioner: ``None``, ``"rmsprop"`` (pSGLD, adapting during warm-up, then frozen)
            or an :class:`~pyro_sparse_bnn.infer.sgmcmc.RMSPreconditioner`.
        ssgl_options: SSGL hyperparameters ``v0, v1, nu, lam, a, b, delta, sigma`` (defaults
            0.1, 10, 1, 1, 1, p per weight site, 0.5, 1). Each weight site has its own ``delta``;
            ``sigma`` is shared.
        noise_site: the latent site holding the Gaussian noise standard deviation, set to the
            SSGL ``sigma`` (regression form); ``"auto"`` picks ``"noise"`` when the model has it
            and a Normal observation model; ``None`` uses the classification form.
        pruning: ``None``; ``"magnitude"`` zeroes the ``s_k`` smallest weights of each weight
            site, ``s_k = sparsity * (1 - sparsity_damping ** (k / sparsity_period))`` refreshed
            every ``prune_every`` iterations (default period: ``s_k`` reaches 99 % of
            ``sparsity`` at the end of warm-up); ``"inclusion"`` (``prior="ssgl"``) zeroes, from
            the end of warm-up on, the weights with ``rho <= inclusion_threshold`` in every
            chain (a weight that any chain still includes is kept in all of them); in the
            classification form only as many as keep the PSIS-LOO predictive of the last
            quarter of warm-up within the default budget of ``FitResult.masks``.
        init: starting values of latent sites (constrained), shared by all chains; others start
            at the network's initial weights (SparseBNN) or the prior median.
        param_lr: Adam learning rate for the model's non-sample parameters (e.g. plain network
            biases); they are fitted during warm-up and fixed afterwards.
        compile: trace the gradient into an ATen graph once (checked; eager fallback).
        seed: seeds the starting values, the minibatches and the Langevin noise.
        callback: ``callback(iteration, lp)`` after each iteration with the chain-mean log
            density estimate; returning ``True`` stops (at least one draw must be kept).

    Returns a :class:`~pyro_sparse_bnn.FitResult` with ``(chain, draw, ...)`` draws of every
    latent and deterministic site (SSGL: the sites that keep their starting values are stored as
    constant draws and listed in ``info["fixed_sites"]``), ``sample_stats`` ``lp`` (the
    minibatch log-density estimate the chain follows, SSGL penalty excluded) and ``step_size``
    (and ``ssgl_delta``, ``ssgl_sigma``), and ``info`` with ``seconds``, ``compiled``,
    ``vectorised`` and, for SSGL, the final ``delta``, ``sigma`` (per chain), ``rho`` per weight
    site ``(chain, ...)`` and ``inclusion`` (chain-averaged ``rho > inclusion_threshold``).

    >>> import pyro_sparse_bnn as psb
    >>> X, y = psb.datasets.load("iris")
    >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    >>> fit = fit_sgmcmc(bnn, X, y, num_samples=20, warmup=20, num_chains=2, progress=False)
    >>> fit.samples["0.weight"].shape
    torch.Size([2, 20, 3, 4])
    """
    x, y = check_xy(X, y, model=model)
    if y is None:
        raise ValueError("y is required for fitting")
    x, y = x.contiguous(), y.contiguous()  # row gathers and matrix products want row-major data
    n = x.shape[0]
    check_choice(sampler, "sampler", SAMPLERS)
    check_choice(prior, "prior", PRIORS)
    if prior == "ssgl":
        check_choice(sa, "sa", SA_MODES)
    elif sa is not None:
        raise ValueError(
            f"sa={sa!r} needs prior='ssgl' (the SA/EM updates belong to the SSGL prior)"
        )
    num_samples = check_number(num_samples, "num_samples", integer=True, low=1)
    warmup = check_number(warmup, "warmup", integer=True, low=0)
    thin = check_number(thin, "thin", integer=True, low=1)
    num_chains = check_number(num_chains, "num_chains", integer=True, low=1)
    batch_size = n if batch_size is None else min(check_positive_int(batch_size, "batch_size"), n)
    if step_size is None:
        step_size = (0.1 if sampler == "sgld" else 0.01) / n
    step_size = _check_schedule(step_size, "step_size")
    check_positive(temperature, "temperature")
    integrator = _integrator(sampler, step_size, temperature, friction, preconditioner, warmup)
    ssgl_options = dict(ssgl_options or {})
    unknown = sorted(set(ssgl_options) - set(_SSGL_OPTIONS))
    if unknown:
        raise ValueError(f"ssgl_options has unknown keys {unknown}; allowed: {list(_SSGL_OPTIONS)}")
    if ssgl_options and prior != "ssgl":
        raise ValueError("ssgl_options need prior='ssgl'")
    if sa_weights is not None and prior != "ssgl":
        raise ValueError("sa_weights need prior='ssgl'")
    omega = (SSGL_SA_WEIGHTS if sa == "sa" else EM_WEIGHTS) if sa_weights is None else None
    omega = omega or _check_schedule(sa_weights, "sa_weights")
    if noise_site is not None and not isinstance(noise_site, str):
        raise TypeError(f"noise_site must be a site name, 'auto' or None, got {noise_site!r}")
    if pruning is not None:
        check_choice(pruning, "pruning", PRUNING)
        if pruning == "inclusion" and prior != "ssgl":
            raise ValueError(
                "pruning='inclusion' uses the SSGL inclusion probabilities: prior='ssgl'"
            )
        if pruning == "inclusion" and warmup == 0:
            raise ValueError("pruning='inclusion' prunes at the end of warm-up: warmup must be > 0")
    check_number(sparsity, "sparsity", low=0.0, high=1.0, high_open=True)
    check_number(sparsity_damping, "sparsity_damping", low=0, high=1, low_open=True, high_open=True)
    check_number(inclusion_threshold, "inclusion_threshold", low=0.0, high=1.0, high_open=True)
    prune_every = check_number(prune_every, "prune_every", integer=True, low=1)
    if sparsity_period is None:
        sparsity_period = max(warmup, 1) * math.log(sparsity_damping) / math.log(0.01)
    check_positive(sparsity_period, "sparsity_period")
    check_positive(param_lr, "param_lr")
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be a bool, got {compile!r}")
    check_seed(seed)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    init = {k: as_tensor(v, f"init[{k!r}]").to(x.device, x.dtype) for k, v in (init or {}).items()}

    if isinstance(model, nn.Module):
        model = copy.deepcopy(model).to(device=x.device, dtype=x.dtype)
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    layout = _layout(model, x, y, prior, noise_site, init)
    if pruning == "magnitude":
        direct = [k for k in layout.weights if k in layout.sampled]
        if len(direct) != len(layout.weights):
            raise ValueError(
                "pruning needs the weight sites to be sampled directly: use centred priors "
                "(centered=True) or prior='ssgl'"
            )
    method = sampler if prior == "model" else f"{sampler}_{sa}"
    sampler_run = _Run(
        model,
        layout,
        x,
        y,
        integrator,
        num_chains,
        batch_size,
        seed,
        ssgl_options if prior == "ssgl" else None,
        param_lr,
    )
    sampler_run.setup(compile)
    schedule = None
    if pruning == "magnitude":
        schedule = SparseRateSchedule(sparsity, sparsity_damping, sparsity_period)
    draws, stats, stopped_at = sampler_run.loop(
        warmup,
        num_samples,
        thin,
        omega,
        pruning,
        schedule,
        prune_every,
        inclusion_threshold,
        progress,
        callback,
        method,
    )
    seconds = time.perf_counter() - start
    info = {
        "seconds": seconds,
        "sampler": sampler,
        "prior": prior,
        "sa": sa,
        "num_chains": num_chains,
        "iterations": stopped_at,
        "batch_size": batch_size,
        "compiled": sampler_run.gradient.graph is not None,
        "compile_error": sampler_run.compile_error,
        "vectorised": sampler_run.density.vectorised,
        "point_parameters": len(sampler_run.params),
        "fixed_sites": list(layout.fixed),
        "noise_site": layout.noise,
    }
    info |= sampler_run.ssgl_info(inclusion_threshold)
    if sampler_run.masks is not None:
        info["pruning_masks"] = sampler_run.masks
    return FitResult(model, draws, method=method, x=x, y=y, info=info, sample_stats=stats)


class _Run:
    """State of one ``fit_sgmcmc`` call: chains, SSGL state, point parameters, pruning masks."""

    def __init__(
        self,
        model: Callable,
        layout: _Layout,
        x: Tensor,
        y: Tensor,
        integrator: LangevinIntegrator,
        num_chains: int,
        batch_size: int,
        seed: int,
        ssgl_options: dict[str, float] | None,
        param_lr: float,
    ) -> None:
        self.model, self.layout, self.x, self.y = model, layout, x, y
        self.integrator, self.num_chains, self.batch_size = integrator, num_chains, batch_size
        self.density = _Density(model, layout, num_chains, x.shape[0])
        self.gradient = _Gradient(self.density)
        self.generator = torch.Generator(device=x.device).manual_seed(seed)
        self.start = []
        for k in layout.sampled:
            transform, value = layout.transforms[k], layout.init[k]
            value = value if transform is None else transform.inv(value)
            self.start.append(value.expand(num_chains, *value.shape).clone())
        self.weight_index = [layout.sampled.index(k) for k in layout.weights if k in layout.sampled]
        self.ssgl = None
        self.noise = None
        if ssgl_options is not None:
            sizes = [self.start[i][0].numel() for i in self.weight_index]
            self.ssgl = SSGL(
                self._flat(self.start), groups=sizes if len(sizes) > 1 else None, **ssgl_options
            )
            self.noise = self.ssgl.sigma if layout.noise is not None else None
        self.params = _point_parameters(model, _param_leaves(model, x[:1], y[:1], layout.init))
        self.optimizer = torch.optim.Adam(self.params, lr=param_lr) if self.params else None
        self.compile_error: str | None = None
        self.masks: dict[str, Tensor] | None = None
        self.late_states: dict[str, list[Tensor]] = {}

    def _flat(self, unconstrained: list[Tensor]) -> Tensor:
        parts = [unconstrained[i].reshape(self.num_chains, -1) for i in self.weight_index]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _split(self, flat: Tensor) -> list[Tensor]:
        shapes = [self.start[i].shape for i in self.weight_index]
        sizes = [math.prod(s[1:]) for s in shapes]
        return [p.reshape(s) for p, s in zip(flat.split(sizes, dim=1), shapes, strict=True)]

    def batch(self) -> tuple[Tensor, Tensor]:
        n = self.x.shape[0]
        if self.batch_size == n:
            return self.x, self.y
        index = torch.randperm(n, generator=self.generator, device=self.x.device)
        index = index[: self.batch_size]
        return self.x[index], self.y[index]

    def setup(self, compile: bool) -> None:
        """Choose vectorised or per-chain runs and trace the gradient (when nothing is learned)."""
        probe = torch.Generator(device=self.x.device).manual_seed(12345)
        moved = [
            u + 0.1 * torch.randn(u.shape, generator=probe, dtype=u.dtype, device=u.device)
            for u in self.start
        ]
        noise = (
            None if self.noise is None else self.noise * torch.linspace(0.8, 1.2, self.num_chains)
        )
        b = self.batch_size
        other = torch.randperm(self.x.shape[0], generator=probe, device=self.x.device)[:b]
        batches = [(self.x[:b], self.y[:b]), (self.x[other], self.y[other])]
        self.density.choose_vectorised(moved, noise, *batches[0])
        self.compile_requested = compile
        if compile and not self.params:
            self._compile(moved, noise, batches)

    def _compile(self, moved: list[Tensor], noise: Tensor | None, batches: list) -> None:
        self.compile_error = self.gradient.compile(moved, noise, batches)
        if self.compile_error is not None:
            warnings.warn(
                f"fit_sgmcmc: running eagerly, the gradient could not be traced "
                f"({self.compile_error})",
                stacklevel=4,
            )

    def _freeze_parameters(self) -> None:
        for p in self.params:
            p.requires_grad_(False)
        if self.compile_requested:
            b = self.batch_size
            batches = [(self.x[:b], self.y[:b]), (self.x[-b:], self.y[-b:])]
            self._compile(self._state.params, self.noise, batches)

    def _evaluate(self, learn: bool) -> _Eval:
        """Gradients etc. at the current state; with ``learn``, also one Adam step on ``params``."""
        x, y = self.batch()
        if not learn:
            return self.gradient(self._state.params, self.noise, x, y)
        evaluation, param_grads = self.gradient.eager(
            self._state.params, self.noise, x, y, self.params
        )
        scale = -1.0 / (self.num_chains * self.x.shape[0])
        for p, g in zip(self.params, param_grads, strict=True):
            p.grad = scale * g
        self.optimizer.step()
        return evaluation

    def _prune(
        self, k: int, warmup: int, pruning: str, schedule: Any, every: int, threshold: float
    ):
        """Refresh the keep-masks when due and zero the pruned weights (and their momentum)."""
        names = [name for name in self.layout.weights if name in self.layout.sampled]
        if pruning == "magnitude" and k % every == 0:
            rate = schedule(k)
            self.masks = {
                name: magnitude_mask(
                    self._state.params[i].reshape(self.num_chains, -1), rate
                ).reshape(self._state.params[i].shape)
                for name, i in zip(names, self.weight_index, strict=True)
            }
        elif pruning == "inclusion" and k == warmup:
            self.masks = self._inclusion_masks(names, threshold)
        if self.masks is None:
            return
        params = list(self._state.params)
        momentum = None if self._state.momentum is None else list(self._state.momentum)
        for mask, i in zip(self.masks.values(), self.weight_index, strict=True):
            params[i] = params[i] * mask
            if momentum is not None:
                momentum[i] = momentum[i] * mask
        self._state = replace(self._state, params=params, momentum=momentum)

    def _record_late_state(self) -> None:
        for name, value in self.density.values(self._state.params, self.noise).items():
            self.late_states.setdefault(name, []).append(value.detach())

    def _inclusion_masks(self, names: list[str], threshold: float) -> dict[str, Tensor]:
        """Keep-masks ``(chain, ...)`` at the end of warm-up.

        A weight that any chain includes (``rho > threshold``) stays in every chain. In the
        regression form the spike's scale is ``v0`` noise sds and the others go. In the
        classification form ``sigma`` grows with the weights themselves, so a weight in the
        spike need not be near zero: of the others, ranked by ``|mean| / sd`` over the late
        warm-up states of all chains, the fewest stay whose PSIS-LOO predictive over those
        states holds within the default budget of
        :func:`~pyro_sparse_bnn.sparsity.budget_masks`.
        """
        rho = dict(zip(names, self._split(self.ssgl.rho), strict=True))
        included = {n: inclusion_mask(rho[n], threshold).any(0) for n in names}
        states = {n: torch.stack(v, dim=1) for n, v in self.late_states.items()}
        self.late_states = {}
        if self.layout.noise is None:
            for name in self.layout.fixed:
                shape = self.layout.shapes[name]
                states[name] = self.layout.init[name].expand(*states[names[0]].shape[:2], *shape)
            scores = {n: torch.where(included[n], torch.inf, relevance(states[n])) for n in names}
            late = FitResult(self.model, states, method="warmup", x=self.x, y=self.y)
            kept = budget_masks(
                scores, lambda keep: late._losses(self.x, self.y, keep or {}, loo=True)
            )
            included = {n: kept[n] | included[n] for n in names}
        return {n: included[n].expand_as(rho[n]) for n in names}

    def loop(
        self,
        warmup: int,
        num_samples: int,
        thin: int,
        omega: Schedule,
        pruning: str | None,
        schedule: SparseRateSchedule | None,
        prune_every: int,
        threshold: float,
        progress: bool,
        callback: Callable[[int, float], bool | None] | None,
        method: str,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
        """Run the chains; return the kept draws, sample stats and the iterations run.

        A kept state's log density and deterministic sites come from the next evaluation, which
        happens at exactly that state (one extra evaluation after the last iteration).
        """
        layout, n = self.layout, self.x.shape[0]
        self._state = self.integrator.init(self.start)
        kept: dict[str, list[Tensor]] = {}
        stats: dict[str, list[Tensor]] = {}
        pending: dict[str, Tensor] | None = None
        late_every = max(1, warmup // (4 * LATE_STATES))  # states from the last quarter
        total_iterations = warmup + num_samples * thin
        bar = tqdm(total=total_iterations, disable=not progress, desc=method, leave=False)
        k = 0
        for k in range(1, total_iterations + 1):
            if self.params and k == warmup + 1:
                self._freeze_parameters()
            evaluation = self._evaluate(learn=bool(self.params) and k <= warmup)
            if pending is not None:
                self._store(kept, stats, pending, evaluation)
                pending = None
            grads = evaluation.grads
            if self.ssgl is not None:
                prior_grads = self._split(self.ssgl.grad_log_prior(self._flat(self._state.params)))
                for i, g in zip(self.weight_index, prior_grads, strict=True):
                    grads[i] = grads[i] + g
            self._state = self.integrator.step(self._state, grads, self.generator)
            if pruning is not None:
                self._prune(k, warmup, pruning, schedule, prune_every, threshold)
            if self.ssgl is not None:
                regression = layout.noise is not None
                active = None
                if self.masks is not None:
                    parts = [m.reshape(self.num_chains, -1) for m in self.masks.values()]
                    active = torch.cat(parts, dim=1)
                self.ssgl.update(
                    self._flat(self._state.params),
                    omega(k),
                    rss=evaluation.rss if regression else None,
                    num_data=n if regression else None,
                    active=active,
                )
                if regression:
                    self.noise = self.ssgl.sigma
            late = 0 < warmup - k <= LATE_STATES * late_every and (warmup - k) % late_every == 0
            if pruning == "inclusion" and layout.noise is None and late:
                self._record_late_state()
            if k > warmup and (k - warmup) % thin == 0:
                pending = self._snapshot(k)
            if callback is not None and callback(k, float(evaluation.lp.mean())):
                break
            if k % 100 == 0:
                bar.update(k - bar.n)
        bar.update(k - bar.n)
        bar.close()
        if pending is not None:
            self._store(kept, stats, pending, self._evaluate(learn=False))
        if not kept:
            raise RuntimeError("the callback stopped sampling before the first kept draw")
        draws = {name: torch.stack(v, dim=1) for name, v in kept.items()}
        num_kept = next(iter(draws.values())).shape[1]
        for name in layout.fixed:
            draws[name] = layout.init[name].expand(self.num_chains, num_kept, *layout.shapes[name])
        return draws, {name: torch.stack(v, dim=1) for name, v in stats.items()}, k

    def _snapshot(self, k: int) -> dict[str, Tensor]:
        """Values of the sampled (and driven) sites at the current state, plus SSGL stats."""
        values = self.density.values(self._state.params, self.noise)
        out = {name: values[name] for name in values if name not in self.layout.fixed}
        like = self.start[0]
        eps = self.integrator.step_size(k)
        out["_step_size"] = torch.full(
            (self.num_chains,), eps, dtype=like.dtype, device=like.device
        )
        if self.ssgl is not None:
            out |= {"_ssgl_sigma": self.ssgl.sigma, "_ssgl_delta": self.ssgl.delta}
        return out

    def _store(self, kept: dict, stats: dict, snapshot: dict, evaluation: _Eval) -> None:
        for name, value in {**snapshot, **evaluation.recorded}.items():
            if name.startswith("_"):
                stats.setdefault(name[1:], []).append(value)
            else:
                kept.setdefault(name, []).append(value.detach())
        stats.setdefault("lp", []).append(evaluation.lp)

    def ssgl_info(self, threshold: float) -> dict[str, Any]:
        if self.ssgl is None:
            return {}
        names = [k for k in self.layout.weights if k in self.layout.sampled]
        rho = dict(zip(names, self._split(self.ssgl.rho), strict=True))
        delta = self.ssgl.delta
        delta = (
            {names[0]: delta}
            if delta.dim() == 1
            else {name: delta[:, g] for g, name in enumerate(names)}
        )
        return {
            "delta": delta,
            "sigma": self.ssgl.sigma,
            "rho": rho,
            "inclusion": {name: r.mean(0) > threshold for name, r in rho.items()},
        }


# --------------------------------------------------------------------------------------------
# Method names for ``fit``


SGMCMC_METHODS: dict[str, dict[str, str | None]] = {
    f"{sampler}{suffix}": {"sampler": sampler, "prior": prior, "sa": sa}
    for sampler in SAMPLERS
    for suffix, prior, sa in (("", "model", None), ("_sa", "ssgl", "sa"), ("_em", "ssgl", "em"))
}
"""``fit`` method names and the :func:`fit_sgmcmc` options each fixes: plain SGLD/SGHMC under the
model's prior, and SSGL with SA or EM."""
