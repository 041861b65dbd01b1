"""How ``fit_vadam`` and ``fit_ivon`` read a Pyro model: its weight, observed, point and held
sites, and the per-row negative log-likelihood with every latent site conditioned."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import (
    InitMessenger,
    init_to_median,
    init_to_sample,
    init_to_value,
)
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import Gamma, Normal, biject_to

from ...distributions import ARDNormal
from ...priors import WEIGHT_TAG
from ...sites import site_log_prob, unwrap


def _is_latent(node: dict) -> bool:
    return node["type"] == "sample" and not site_is_subsample(node) and not node["is_observed"]


@dataclass
class _Sites:
    """What one trace of the model says about its sites (see the module docstring)."""

    weights: dict[str, Tensor]
    observed: str
    fixed: dict[str, Tensor]
    points: dict[str, tuple[Any, Tensor]]
    priors: dict[str, tuple[str, float | None]]


def _inspect(model: Callable, x: Tensor, y: Tensor) -> _Sites:
    """Trace ``model`` on a few rows and sort its sites; raise ``ValueError`` for what VADAM
    cannot fit."""
    rows = min(x.shape[0], 3)
    x, y = x[:rows], y[:rows]
    initial = getattr(model, "initial_weights", None)
    if callable(initial):
        start = {k: v.detach() for k, v in initial().items()}
        init = init_to_value(values=start, fallback=init_to_median(num_samples=15))
    else:
        init = init_to_sample
    with torch.no_grad():
        trace = poutine.trace(InitMessenger(init)(model)).get_trace(x, y)
    nodes = {name: n for name, n in trace.nodes.items() if n["type"] == "sample"}
    weights = {
        name: n["value"].detach().clone()
        for name, n in nodes.items()
        if n["infer"].get(WEIGHT_TAG) and not site_is_subsample(n)
    }
    if not weights:
        raise ValueError(
            "model has no weight sites: draw the weights with a prior from pyro_sparse_bnn.priors "
            "or tag their sample sites with infer={'psb_weight': True}"
        )
    for name, value in weights.items():
        if not value.dtype.is_floating_point:
            raise ValueError(f"weight site {name!r} must be real-valued, got dtype {value.dtype}")
    observed = [
        name
        for name, n in nodes.items()
        if n["is_observed"]
        and name not in weights
        and not site_is_subsample(n)
        and not n["infer"].get("_deterministic")
    ]
    if len(observed) != 1:
        raise ValueError(f"the model must have exactly one observed site, found {observed}")
    latent = {name: n for name, n in nodes.items() if _is_latent(n) and name not in weights}
    data_plates = {f.name for f in nodes[observed[0]]["cond_indep_stack"]}
    for name, n in latent.items():
        if not n["value"].dtype.is_floating_point:
            raise ValueError(f"VADAM needs continuous latent sites; {name!r} is discrete")
        if any(f.name in data_plates for f in n["cond_indep_stack"]):
            raise ValueError(
                f"VADAM cannot fit the per-row latent site {name!r} (it shares the data plate)"
            )
    leaves = {name: n["value"].detach().clone().requires_grad_() for name, n in latent.items()}
    with torch.enable_grad():
        trace = poutine.trace(poutine.condition(model, {**weights, **leaves})).get_trace(x, y)
        uses = _dependencies(_row_log_prob(trace.nodes[observed[0]], rows).sum(), leaves)
        centred = {k: v for k, v in weights.items() if not nodes[k]["infer"].get("_deterministic")}
        trace = poutine.trace(poutine.condition(model, {**centred, **leaves})).get_trace(x, y)
        priors = {name: _prior_family(trace.nodes[name], leaves, latent) for name in weights}
    points = {name: (latent[name]["fn"], leaves[name].detach()) for name in uses}
    fixed = {name: v.detach() for name, v in leaves.items() if name not in uses}
    return _Sites(weights, observed[0], fixed, points, priors)


def _dependencies(value: Tensor, leaves: dict[str, Tensor]) -> list[str]:
    """Names of the ``leaves`` that ``value`` depends on (through autograd)."""
    if not leaves or not value.requires_grad:
        return []
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True, retain_graph=True)
    return [name for name, g in zip(leaves, grads, strict=True) if g is not None]


def _prior_family(
    node: dict, leaves: dict[str, Tensor], latent: dict[str, dict]
) -> tuple[str, float | None]:
    """The family of a weight's prior: ``("normal", precision)`` for a fixed zero-mean Normal with
    one scale; ``("ard", None)`` for a Normal whose precision has a Gamma prior, centred or
    non-centred (``w = z / sqrt(psi)``), or an :class:`ARDNormal`; else ``("other", None)``."""
    fn = unwrap(node["fn"])
    if node["infer"].get("_deterministic"):
        deps = _dependencies(node["value"].sum(), leaves)
        standard = [d for d in deps if _is_standard_normal(latent[d], node["value"].shape)]
        rest = [d for d in deps if d not in standard]
        gamma = all(isinstance(unwrap(latent[d]["fn"]), Gamma) for d in rest)
        return ("ard", None) if len(standard) == 1 and rest and gamma else ("other", None)
    if isinstance(fn, ARDNormal):
        return "ard", None
    if not isinstance(fn, Normal):
        return "other", None
    deps = _dependencies(node["fn"].log_prob(node["value"]).sum(), leaves)
    if deps:
        gamma = all(isinstance(unwrap(latent[d]["fn"]), Gamma) for d in deps)
        return ("ard", None) if gamma else ("other", None)
    scale = fn.scale.detach().reshape(-1)
    if bool((fn.loc != 0).any()) or bool((scale != scale[0]).any()):
        return "other", None
    return "normal", float(scale[0]) ** -2


def _is_standard_normal(node: dict, shape: torch.Size) -> bool:
    fn = unwrap(node["fn"])
    return (
        isinstance(fn, Normal)
        and node["value"].shape == shape
        and bool((fn.loc == 0).all())
        and bool((fn.scale == 1).all())
    )


def _row_log_prob(node: dict, rows: int) -> Tensor:
    """The observed site's log-likelihood per row, shape ``(rows,)``."""
    lp = site_log_prob(node, total=False)
    if lp.dim() == 0 or lp.shape[0] != rows:
        raise ValueError(
            f"the observed site {node['name']!r} must sit inside a pyro.plate over the rows of X "
            f"(its log_prob must have shape ({rows}, ...)), got shape {tuple(lp.shape)}"
        )
    return lp.reshape(rows, -1).sum(1)


class _NLL:
    """Per-row NLL of the observed site with every latent site conditioned."""

    def __init__(self, model: Callable, sites: _Sites) -> None:
        self.model = model
        self.observed = sites.observed
        self.fixed = sites.fixed
        self.priors = {name: fn for name, (fn, _) in sites.points.items()}
        self.unconstrained = {
            name: nn.Parameter(biject_to(fn.support).inv(value).detach())
            for name, (fn, value) in sites.points.items()
        }

    def points(self) -> dict[str, Tensor]:
        """Current values of the point-estimated latent sites."""
        return {
            name: biject_to(self.priors[name].support)(u) for name, u in self.unconstrained.items()
        }

    def penalty(self, num_data: float) -> Tensor | float:
        """``-log prior / N`` of the point-estimated latent sites."""
        return sum(
            (-self.priors[name].log_prob(v).sum() / num_data for name, v in self.points().items()),
            0.0,
        )

    def __call__(self, weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        data = {**self.fixed, **self.points(), **weights}
        trace = poutine.trace(poutine.condition(self.model, data)).get_trace(x, y)
        return -_row_log_prob(trace.nodes[self.observed], x.shape[0])


def _warn_replaced(sites: _Sites, ard: bool, prior_precision: float | None, method: str) -> None:
    if ard:
        replaced = [n for n, (family, _) in sites.priors.items() if family != "ard"]
        message = (
            "{} replaces the model's prior on weight sites {} (not a Normal with a "
            "Gamma-distributed precision) by N(0, 1/psi_j), psi_j ~ Gamma(a0, b0), per weight"
        )
    else:
        replaced = [n for n, (family, _) in sites.priors.items() if family != "normal"]
        message = (
            "{} replaces the model's prior on weight sites {} (not a fixed zero-mean Normal) "
            "by its Gaussian N(0, 1/prior_precision)"
        )
    if replaced:
        warnings.warn(message.format(method, replaced), UserWarning, stacklevel=4)
    if not ard and prior_precision is not None:
        differs = [
            n
            for n, (family, lam) in sites.priors.items()
            if family == "normal" and abs(lam - prior_precision) > 1e-6 * lam
        ]
        if differs:
            warnings.warn(
                f"prior_precision={prior_precision} overrides the precision of the model's Normal "
                f"prior on weight sites {differs}",
                UserWarning,
                stacklevel=4,
            )
