"""Looking through the distribution of a Pyro sample site.

Pyro wraps a site's distribution in ``Independent``, ``ExpandedDistribution`` and
``MaskedDistribution`` layers; the inference code asks what lies underneath, switches value checks
off along the chain, and tells improper priors (no ``sample``) from proper ones.

>>> import pyro.distributions as dist
>>> fn = dist.Normal(0.0, 1.0).expand([3]).to_event(1)
>>> type(unwrap(fn)).__name__
'Normal'
>>> is_improper(fn)
False
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
from pyro.distributions.util import scale_and_mask
from torch import Tensor

__all__ = ["WRAPPERS", "is_improper", "site_log_prob", "unvalidated", "unwrap"]

WRAPPERS = (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)


def unwrap(fn: Any) -> Any:
    """The distribution under ``fn``'s ``Independent``/``Expanded``/``Masked`` wrappers."""
    while isinstance(fn, WRAPPERS):
        fn = fn.base_dist
    return fn


def unvalidated(fn: Any) -> Any:
    """``fn`` with argument and support checks switched off along its wrapper chain.

    The checks branch on tensor values (NaNs are expected while a step size adapts, and a traced
    graph cannot branch); some distributions keep ``_validate_args`` even under
    ``pyro.validation_enabled(False)``.
    """
    inner = fn
    while inner is not None:
        if getattr(inner, "_validate_args", False):
            inner._validate_args = False
        inner = getattr(inner, "base_dist", None)
    return fn


def site_log_prob(node: dict, *, total: bool = True, validate: bool = True) -> Tensor:
    """The log density of a traced sample site's value, scaled and masked as the site says;
    summed unless ``total=False``; without value checks with ``validate=False``
    (:func:`unvalidated`, for traced graphs).

    >>> import pyro, torch
    >>> trace = pyro.poutine.trace(lambda: pyro.sample("w", dist.Normal(0.0, 1.0))).get_trace()
    >>> trace.nodes["w"]["value"] = torch.tensor(0.0)
    >>> round(float(site_log_prob(trace.nodes["w"])), 4)  # -log(2 pi) / 2
    -0.9189
    """
    fn = node["fn"] if validate else unvalidated(node["fn"])
    log_p = fn.log_prob(node["value"])
    log_p = scale_and_mask(log_p, node["scale"], node["mask"])
    return log_p.sum() if total else log_p


def is_improper(fn: Any) -> bool:
    """Whether ``fn`` is an improper law (one that cannot be sampled, e.g. LogUniform)."""
    try:
        fn.sample()
    except NotImplementedError:
        return True
    return False
