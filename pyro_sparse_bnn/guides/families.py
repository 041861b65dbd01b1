"""The mean-field and MAP guides (Pyro autoguides that own their parameters), the registry of
guide names and guide draws.

>>> import torch
>>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
>>> bnn = SparseBNN(mlp([4, 3]), priors.Horseshoe(), likelihoods.Categorical())
>>> guide = mean_field(bnn)
>>> sorted(guide(torch.randn(2, 4), torch.tensor([0, 2])))
['0.weight_decentered', '0.weight_global_scale', '0.weight_local_scale']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuide, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median, init_to_value

from ..handlers import is_latent_or_deterministic
from ..isolation import LocalParams
from ..validation import check_positive
from .sparse_vd import sparse_vd

__all__ = ["GUIDES", "draw", "make_guide", "map_estimate", "mean_field"]


def _init_loc_fn(model: Callable) -> Callable:
    """Start weights at the network's own initialisation (random, so symmetry is broken) and
    every other latent at a prior median."""
    initial = {k: v.detach().clone() for k, v in getattr(model, "initial_weights", dict)().items()}
    return init_to_value(values=initial, fallback=init_to_median(num_samples=15))


class MeanFieldGuide(LocalParams, AutoNormal):
    """Pyro's ``AutoNormal`` owning its parameters (no global param store, whoever calls it)."""


class MAPGuide(LocalParams, AutoDelta):
    """Pyro's ``AutoDelta`` owning its parameters (no global param store, whoever calls it)."""


def mean_field(model: Callable, *, init_scale: float = 0.01) -> AutoNormal:
    """Fully factorised Gaussian in the unconstrained space (log-normal for positive scales)."""
    check_positive(init_scale, "init_scale")
    return MeanFieldGuide(model, init_loc_fn=_init_loc_fn(model), init_scale=init_scale)


def map_estimate(model: Callable) -> AutoDelta:
    """Point estimates of every latent (MAP): the deterministic baseline."""
    return MAPGuide(model, init_loc_fn=_init_loc_fn(model))


GUIDES: dict[str, Callable[..., AutoGuide]] = {
    "mean_field": mean_field,
    "map": map_estimate,
    "sparse_vd": sparse_vd,
}


def make_guide(guide: str | Callable, model: Callable, **options: Any) -> Callable:
    """Build a named guide for ``model``, or pass a user's guide (any callable) through."""
    if isinstance(guide, str):
        if guide not in GUIDES:
            raise ValueError(f"guide must be one of {sorted(GUIDES)} or a callable, got {guide!r}")
        return GUIDES[guide](model, **options)
    if not callable(guide):
        raise TypeError(f"guide must be a name or a callable, got {type(guide).__name__}")
    if options:
        raise ValueError(f"guide options {sorted(options)} only apply to named guides")
    return guide


def draw(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int) -> dict:
    """Draws of the guide's latent sites and the model's deterministic sites, ``(1, draw, ...)``.

    Each guide draw is replayed through the model at ``x`` so deterministic sites (such as the
    weights of a non-centred prior) come out too.
    """
    draws: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for _ in range(num_samples):
            guide_trace = poutine.trace(guide).get_trace(x, None)
            trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, None)
            for name, node in trace.nodes.items():
                latent = name in guide_trace.nodes and is_latent_or_deterministic(node)
                if latent or node.get("infer", {}).get("_deterministic"):
                    draws.setdefault(name, []).append(node["value"])
    return {k: torch.stack(v).unsqueeze(0) for k, v in draws.items()}
