"""Scaling layers (ScaLa) and asymmetric penalisation with neuron pruning (ScaLP), as a prior.

ScaLa trains ``w_tilde`` with ``w = S w_tilde``, ``S = diag(sigma_k)`` over the layer's input
neurons ``k``. With ``w_tilde ~ Normal(0, 1)`` a pre-activation has variance
``sum_k sigma_k^2 E[x_k^2]``, so any profile with ``sum_k sigma_k^2 < infinity`` keeps the forward
(and SGD-update) variance bounded as the layer widens (:func:`scaling_factors`):

* ``"fan_in"``: ``sigma_k = 1/sqrt(n_in)``, the usual scaling (symmetric);
* ``"inverse"``: ``sigma_k ∝ 1/k``;
* ``"inverse_sqrt_log"``: ``sigma_k ∝ 1/(sqrt(j) log j)`` with ``j = k + 1`` (so ``log j > 0``).

The asymmetric profiles are normalised so that ``sum_{k>=1} sigma_k^2 = 1`` at infinite width
(``"fan_in"`` has sum 1 at every width).

ScaLP adds an L2 penalty on ``w_tilde``: in terms of ``w`` it pushes neuron ``k``'s outgoing weights
to 0 with force ``1/sigma_k^2``, so late neurons die first, then prunes a neuron when the mean
``|w|`` of its outgoing weights falls below a threshold (:func:`scalp_prune`). In the toolkit's
terms this is a prior: :class:`ScaLP` is ``w_jk ~ Normal(0, (scale sigma_k)^2)``, non-centred by
default (the decentred site ``name_decentered`` *is* ``w_tilde``), so ``fit(..., guide="map")``
trains ScaLa with the ScaLP penalty ``||w_tilde||^2 / (2N)`` per row of data, and every other
method (mean-field SVI, MCMC) sees the same prior.

>>> import torch
>>> from pyro_sparse_bnn import SparseBNN, mlp, likelihoods, priors
>>> net = mlp([64, 100, 10])
>>> bnn = SparseBNN(net, {"0": ScaLP("fan_in"), "2": ScaLP("inverse")}, likelihoods.Categorical())
>>> scaling_factors(4, "inverse").tolist()[:2]  # sqrt(6)/pi * (1, 1/2)
[0.7796968221664429, 0.38984841108322144]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Centring, Groups, Prior, _positive

__all__ = ["PROFILES", "ScaLP", "scaling_factors"]

PROFILES = ("fan_in", "inverse", "inverse_sqrt_log")

_SUM_INVERSE_SQUARES = math.pi**2 / 6
# sum_{j >= 2} 1 / (j log^2 j): partial sum to 10^7 plus the tail integral 1 / log(10^7 + 1/2).
_SUM_INVERSE_J_LOG2 = 2.109742801236891


def scaling_factors(
    n: int,
    profile: str = "inverse",
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The ScaLa factors ``sigma_1, ..., sigma_n`` of a layer with ``n`` input neurons.

    >>> round(float(scaling_factors(10_000, "inverse").square().sum()), 5)  # -> 1 as n grows
    0.99994
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    k = torch.arange(1, n + 1, dtype=torch.float64)
    if profile == "fan_in":
        sigma = torch.full((n,), 1.0 / math.sqrt(n), dtype=torch.float64)
    elif profile == "inverse":
        sigma = 1.0 / (k * math.sqrt(_SUM_INVERSE_SQUARES))
    else:
        j = k + 1
        sigma = 1.0 / (j.sqrt() * j.log() * math.sqrt(_SUM_INVERSE_J_LOG2))
    return sigma.to(dtype=dtype or torch.get_default_dtype(), device=device)


class ScaLP(Prior):
    """Per-neuron Gaussian prior ``w ~ Normal(0, scale * sigma_k)`` with the ScaLa profile.

    ``groups="in"`` (default) indexes neurons by the weight's dim 1 (a neuron's *outgoing*
    weights in this layer); ``"out"`` by dim 0. Under ``guide="map"`` the penalty on the decentred
    weights is ``||w_tilde||^2 / 2`` per data set, i.e. ``lam = 1/N`` in the loss convention of
    :mod:`~pyro_sparse_bnn.penalties`; a smaller ``scale`` is a stronger penalty
    (``lam = 1 / (N scale^2)`` on ``w_tilde = w / sigma_k``).

    >>> ScaLP("inverse", 0.5).mixing_scale("w", (2, 3)).tolist()  # one column per input neuron
    [[0.38984841108322144, 0.19492420554161072, 0.12994946539402008]]
    """

    can_tie = False  # fixed scales: no latent group variable

    def __init__(
        self,
        profile: str = "inverse",
        scale: float = 1.0,
        *,
        groups: Groups = "in",
        centered: Centring = False,
    ) -> None:
        if groups not in ("in", "out"):
            raise ValueError(
                f"groups must be 'in' or 'out' (which dim holds the neurons), got {groups!r}"
            )
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        super().__init__(groups=groups, centered=centered)
        self.profile = profile
        self.register_buffer("scale", torch.tensor(_positive("scale", scale)))

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        group = self.group_shape(shape)
        dim = 1 if self.groups == "in" and len(shape) > 1 else 0
        sigma = scaling_factors(
            shape[dim], self.profile, dtype=self._zero.dtype, device=self._zero.device
        )
        return (self.scale * sigma).reshape(group)

    def extra_repr(self) -> str:
        return f"profile={self.profile!r}, scale={self.scale.item():g}, " + super().extra_repr()
