"""The mean-field ELBO, with the KL of a ``Delta`` guide site that keeps its ``log_density``.

Pyro's ``AutoNormal`` samples a constrained latent (a horseshoe scale, an ARD precision) as a
Normal in the unconstrained space and emits the constrained value as
``Delta(value, log_density=log|d z / d value|)``. Pyro registers ``KL(Delta || p) = -log p(value)``
and so drops that log-Jacobian: ``TraceMeanField_ELBO`` then maximises
``E_q[log p(value) - log q(z)]``, which rewards shrinking every positive scale by
``sum(log scale)``. :class:`MeanFieldELBO` uses the true single-draw KL of a Delta,
``log_density - log p(value)``, and the analytic KL wherever one is registered for another
guide family, including the auxiliary Normal of a Delta whose transform is the identity (an
unconstrained weight: the Delta is that Normal's draw, so ``KL(Normal || p)`` is its exact KL);
everywhere else it keeps the Monte Carlo ``log q - log p`` term. Each estimate is an
unbiased estimate of the negative ELBO (NumPyro made the same correction in its PR 1625).

>>> import pyro, pyro.distributions as dist, torch
>>> from pyro.infer.autoguide import AutoNormal
>>> def model():
...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
>>> guide = AutoNormal(model, init_scale=1.0)  # q(log s) = N(0, 1): the prior itself
>>> round(MeanFieldELBO().loss(model, guide), 6)  # KL(q || p) = 0
0.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from torch import Tensor
from torch.distributions import kl_divergence

from .distributions import ARDNormal
from .sites import site_log_prob, unwrap

__all__ = ["MeanFieldELBO", "analytic_kl", "mean_field_elbo"]

Q_KEY = "_posterior"
"""``infer`` key of a guide site whose posterior law is another distribution than its ``fn``
(an ``AutoNormal`` Delta with identity transform: its auxiliary Normal)."""
AUX_SUFFIX = "_unconstrained"


def analytic_kl(guide_site: dict, model_site: dict) -> Tensor | None:
    """Scaled, summed ``KL(q || p)`` of one latent site, or ``None`` where none is known.

    A Delta's KL is ``log_density - log p(value)``, exact for its single point; any other
    guide law uses the KL registered with torch (``None`` if there is none). The profiled
    :class:`~pyro_sparse_bnn.distributions.ARDNormal` prior has no other KL than its closed
    form against a Normal: any other guide raises a ValueError.
    """
    q = guide_site["infer"].get(Q_KEY, guide_site["fn"])
    p = model_site["fn"]
    try:
        kl = None if isinstance(unwrap(q), dist.Delta) else kl_divergence(q, p)
    except NotImplementedError:
        kl = None
    if kl is None and isinstance(unwrap(p), ARDNormal):
        raise ValueError(
            f"site {model_site['name']!r} has the profiled ARDNormal prior, whose KL exists only "
            "in closed form against a Normal guide site: use guide='sparse_vd' or 'mean_field' "
            "(or priors.ARD with any guide)"
        )
    if kl is not None:
        return scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
    if isinstance(unwrap(q), dist.Delta):
        kl = q.log_prob(guide_site["value"]) - p.log_prob(guide_site["value"])
        return scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
    return None


def mean_field_elbo(
    model_trace: poutine.Trace, guide_trace: poutine.Trace
) -> tuple[Tensor, set[str]]:
    """ELBO of one particle, and the latent sites whose KL term was analytic.

    Observed sites give their log-likelihood; a latent site its analytic KL where
    :func:`analytic_kl` knows one, else ``log p - log q`` at the draw; auxiliary guide sites
    (those the model lacks) their ``-log q``, unless their site's KL already covered them.
    """
    elbo: Tensor | float = 0.0
    covered: set[str] = set()
    analytic: set[str] = set()
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            elbo = elbo + site_log_prob(site)
            continue
        guide_site = guide_trace.nodes[name]
        _mark_identity_posterior(guide_trace, guide_site)
        kl = analytic_kl(guide_site, site)
        if kl is None:
            elbo = elbo + site_log_prob(site) - site_log_prob(guide_site)
            continue
        elbo = elbo - kl
        if not isinstance(unwrap(guide_site["infer"].get(Q_KEY, guide_site["fn"])), dist.Delta):
            analytic.add(name)
        if Q_KEY in guide_site["infer"]:
            covered.add(name + AUX_SUFFIX)
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and name not in model_trace.nodes and name not in covered:
            elbo = elbo - site_log_prob(site)
    return torch.as_tensor(elbo), analytic


def _mark_identity_posterior(guide_trace: poutine.Trace, guide_site: dict) -> None:
    """Record an ``AutoNormal`` auxiliary Normal as the posterior law of its Delta site when the
    site's transform is the identity (the Delta's value is the auxiliary draw itself)."""
    if Q_KEY in guide_site["infer"] or not isinstance(unwrap(guide_site["fn"]), dist.Delta):
        return
    aux = guide_trace.nodes.get(guide_site["name"] + AUX_SUFFIX)
    if (
        aux is not None
        and aux["type"] == "sample"
        and aux["infer"].get("is_auxiliary")
        and isinstance(unwrap(aux["fn"]), dist.Normal)
        and unwrap(guide_site["fn"]).v is aux["value"]
    ):
        guide_site["infer"][Q_KEY] = aux["fn"]


class MeanFieldELBO(ELBO):
    """Negative ELBO with analytic KLs where they are known and the exact Delta KL (module doc).

    A drop-in for ``TraceMeanField_ELBO`` without its bias for constrained ``AutoNormal`` sites:
    ``differentiable_loss`` for torch optimisers, ``loss_and_grads`` inside ``pyro.infer.SVI``.

    Args:
        num_particles: independent estimates averaged per call.
    """

    def __init__(self, num_particles: int = 1) -> None:
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            raise TypeError(f"num_particles must be an int, got {num_particles!r}")
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        super().__init__(num_particles=num_particles)

    def _traces(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[poutine.Trace, poutine.Trace]:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        return (
            poutine.util.prune_subsample_sites(model_trace),
            poutine.util.prune_subsample_sites(guide_trace),
        )

    def _particle(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Tensor:
        return -mean_field_elbo(*self._traces(model, guide, args, kwargs))[0]

    def _get_trace(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[poutine.Trace, poutine.Trace]:
        return self._traces(model, guide, args, kwargs)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """Differentiable negative ELBO (a scalar tensor), averaged over ``num_particles``."""
        total = sum(self._particle(model, guide, args, kwargs) for _ in range(self.num_particles))
        return total / self.num_particles

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Negative ELBO estimate as a float."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """Negative ELBO estimate; gradients are accumulated into the parameters."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()
