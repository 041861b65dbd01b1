"""Penalties as priors: L2, L1 and group lasso, their priors, and Glorot-consistent factors.

Loss convention (the one of ``fit(method="l1")`` and of SVI, whose loss is the negative ELBO per
training row): a penalised fit minimises

    L(w) = (1/N) * sum_i NLL_i(w) + lam * r(w),

which is ``(1/N)`` times ``-log p(D | w) - log p(w)`` for the prior ``-log p(w) = N lam r(w) + c``.
So a penalty with factor ``lam`` on ``N`` rows is the prior of rate ``kappa = N lam``; ``n_data=1``
is the sum convention ``sum_i NLL_i + lam r(w)``. With ``r`` and ``kappa``:

* L2, ``r = sum w^2``: ``Normal(0, 1 / sqrt(2 kappa))``;
* L1, ``r = sum |w|``: ``Laplace(0, 1 / kappa)``;
* group lasso, ``r = sum_g ||w_g||_2``: :class:`GroupLaplace` with scale ``1 / kappa``, the law
  ``p(w_g) ∝ exp(-kappa ||w_g||)`` (one group per output neuron, a *row*, with
  ``groups="out"``; per input neuron, a *column*, with ``groups="in"``).

The MAP of a model with the mapped prior (``fit(..., guide="map")``) is the penalised optimum.
Wolinski et al. show that beyond MAP, a penalty on a Gaussian posterior's parameters is a KL to a
prior only under a condition on the penalty; L2 on the mean is the Gaussian-prior case.

Glorot-consistent factors (Wolinski's thesis): the Bayesian ``lam`` is ``1/N`` times a per-layer
factor chosen so that the prior gives each weight the variance ``1/P`` of a Glorot/He start (``P``
inputs per neuron, ``n`` neurons): ``P/2`` for L2, ``sqrt(2P)`` for L1, ``sqrt(P(P+1))`` for group
lasso on rows and ``sqrt(P(n+1))`` on columns (a group of ``d`` weights under
``exp(-kappa ||w||)`` has per-weight variance ``(d + 1) / kappa^2``).

>>> import torch
>>> prior = penalty_to_prior(Penalty("l1", 1e-3), n_data=500)  # (1/N) NLL + 1e-3 * sum |w|
>>> prior
Laplace(scale=2, groups=None, centered=False)
>>> prior_to_penalty(prior, n_data=500)
Penalty(kind='l1', lam=0.001, groups=None)
>>> glorot_factor("group_lasso", (3, 25), groups="in")  # columns: sqrt(P (n + 1))
10.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions.transforms import PowerTransform

from .nn import BAYESIAN_LAYERS, weight_name
from .priors import Groups, Laplace, Normal, Prior
from .priors.base import _positive

__all__ = [
    "PENALTIES",
    "GroupLaplace",
    "Penalty",
    "glorot_factor",
    "glorot_penalties",
    "penalty_priors",
    "penalty_to_prior",
    "prior_to_penalty",
    "total_penalty",
]

PENALTIES = ("l2", "l1", "group_lasso")
"""Penalty kinds: ``sum w^2``, ``sum |w|`` and ``sum_g ||w_g||_2``."""


def _group_dims(weight: Tensor, groups: Groups) -> tuple[int, ...]:
    """Dims reduced inside one group (all but the group's own dim)."""
    if weight.dim() < 2 or groups is None:
        return ()
    keep = 1 if groups == "in" else 0
    return tuple(d for d in range(weight.dim()) if d != keep)


def _group_size(shape: Sequence[int], groups: Groups) -> int:
    """Weights per group: 1 without groups, ``prod(shape) / shape[dim]`` along a group dim."""
    if groups is None or len(shape) < 2:
        return 1
    return math.prod(shape) // shape[1 if groups == "in" else 0]


def _check_groups(groups: object) -> Groups:
    if groups not in (None, "in", "out"):
        raise ValueError(f"groups must be None, 'in' or 'out', got {groups!r}")
    return groups  # type: ignore[return-value]


@dataclass(frozen=True)
class Penalty:
    """``lam * r(w)``: ``kind`` picks ``r`` (see :data:`PENALTIES`); ``groups`` the lasso groups.

    >>> Penalty("group_lasso", 0.5, groups="out")(torch.tensor([[3.0, 4.0], [0.0, 0.0]])).item()
    2.5
    """

    kind: str
    lam: float
    groups: Groups = None

    def __post_init__(self) -> None:
        if self.kind not in PENALTIES:
            raise ValueError(f"kind must be one of {PENALTIES}, got {self.kind!r}")
        _positive("lam", self.lam)
        _check_groups(self.groups)
        if self.kind != "group_lasso" and self.groups is not None:
            raise ValueError(f"groups only applies to group_lasso, got groups={self.groups!r}")
        if self.kind == "group_lasso" and self.groups is None:
            raise ValueError("group_lasso needs groups='in' (columns) or 'out' (rows)")

    def __call__(self, weight: Tensor) -> Tensor:
        """``lam * r(weight)``."""
        if not isinstance(weight, Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if self.kind == "l2":
            return self.lam * weight.square().sum()
        if self.kind == "l1":
            return self.lam * weight.abs().sum()
        dims = _group_dims(weight, self.groups)
        norms = weight.square().sum(dim=dims).sqrt() if dims else weight.abs()
        return self.lam * norms.sum()


class GroupLaplace(Prior):
    """Group-lasso prior ``p(w_g) ∝ exp(-||w_g||_2 / scale)`` per group of ``d`` weights.

    A Gaussian scale mixture: ``w_g | v ~ Normal(0, v I_d)`` with ``v ~ Gamma((d+1)/2, rate)``,
    ``rate = 1 / (2 scale^2)`` (Kyung et al. 2010); then ``||w_g|| ~ Gamma(d, 1/scale)`` and each
    weight has variance ``(d + 1) scale^2``. The mixing site ``name_scale_power`` holds
    ``u = v^((d+1)/2)``: in that coordinate the non-centred joint MAP over ``(w_tilde, u)`` is
    exactly the group-lasso optimum (``min_v ||w||^2 / (2v) + v / (2 scale^2) = ||w|| / scale``),
    so ``fit(..., guide="map")`` solves the group lasso. ``groups=None`` (``d = 1``) is
    :class:`~pyro_sparse_bnn.priors.Laplace`.

    >>> import pyro
    >>> tr = pyro.poutine.trace(lambda: GroupLaplace(0.5, groups="out").sample("w", (3, 4)))
    >>> tr.get_trace().nodes["w_scale_power"]["value"].shape  # one group per row
    torch.Size([3, 1])
    """

    can_tie = False  # its law depends on each layer's group size

    def __init__(self, scale: float = 1.0, *, groups: Groups = "out", centered: bool = False):
        super().__init__(groups=_check_groups(groups), centered=centered)
        self.register_buffer("scale", torch.tensor(_positive("scale", scale)))

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        half = (_group_size(shape, self.groups) + 1) / 2
        gamma = dist.Gamma(self._const(half), 0.5 / self.scale**2)
        law = dist.TransformedDistribution(gamma, [PowerTransform(self._const(half))])
        group = self.group_shape(shape)
        power = pyro.sample(f"{name}_scale_power", law.expand(group).to_event(len(group)))
        return power.pow(0.5 / half)

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():g}, " + super().extra_repr()


def _check_n_data(n_data: int) -> int:
    if isinstance(n_data, bool) or not isinstance(n_data, int) or n_data < 1:
        raise ValueError(
            f"n_data must be a positive int (1 for the sum convention), got {n_data!r}"
        )
    return n_data


def penalty_to_prior(penalty: Penalty, *, n_data: int = 1, centered: bool = False) -> Prior:
    """The prior whose ``-log`` density is ``n_data * penalty(w)`` up to a constant.

    ``n_data`` is the training-set size ``N`` under the loss ``(1/N) sum NLL + lam r(w)``.
    ``centered`` applies to the scale mixtures (L1, group lasso); the L2 prior has no mixing site.

    >>> penalty_to_prior(Penalty("l2", 0.5), n_data=1)
    Normal(scale=1)
    """
    if not isinstance(penalty, Penalty):
        raise TypeError(f"penalty must be a Penalty, got {type(penalty).__name__}")
    kappa = _check_n_data(n_data) * penalty.lam
    if penalty.kind == "l2":
        return Normal(1.0 / math.sqrt(2.0 * kappa))
    if penalty.kind == "l1":
        return Laplace(1.0 / kappa, centered=centered)
    return GroupLaplace(1.0 / kappa, groups=penalty.groups, centered=centered)


def prior_to_penalty(prior: Prior, *, n_data: int = 1) -> Penalty:
    """The penalty (under ``(1/N) sum NLL + lam r(w)`` with ``N = n_data``) of a mapped prior.

    Accepts :class:`~pyro_sparse_bnn.priors.Normal`, an ungrouped
    :class:`~pyro_sparse_bnn.priors.Laplace` and :class:`GroupLaplace` (``groups=None`` gives L1).

    >>> prior_to_penalty(GroupLaplace(0.125, groups="in"), n_data=8)
    Penalty(kind='group_lasso', lam=1.0, groups='in')
    """
    n_data = _check_n_data(n_data)
    if isinstance(prior, GroupLaplace):
        kind = "l1" if prior.groups is None else "group_lasso"
        return Penalty(kind, 1.0 / (n_data * prior.scale.item()), prior.groups)
    if isinstance(prior, Laplace):
        if prior.groups is not None:
            raise ValueError(
                "a grouped Laplace shares one Exponential variance per group; its marginal is not "
                "a group-lasso prior: use GroupLaplace"
            )
        return Penalty("l1", 1.0 / (n_data * prior.scale.item()))
    if isinstance(prior, Normal):
        return Penalty("l2", 1.0 / (2.0 * n_data * prior.scale.item() ** 2))
    raise TypeError(
        "prior must be a Normal, Laplace or GroupLaplace to have a penalty, "
        f"got {type(prior).__name__}"
    )


def glorot_factor(kind: str, shape: Sequence[int], groups: Groups = None) -> float:
    """Per-layer factor ``c`` such that the prior of ``N lam r = c r`` (``lam = 1/N``) gives every
    weight of a layer of weight ``shape`` (``(n, P)`` or ``(out, in, *kernel)``) variance ``1/P``.

    ``P`` is the fan-in ``prod(shape[1:])``: L2 ``P/2``; L1 ``sqrt(2P)``; group lasso
    ``sqrt(P (d + 1))`` for groups of ``d`` weights (rows: ``d = P``; columns: ``d = n``).

    >>> glorot_factor("l2", (10, 64)), glorot_factor("l1", (10, 8))
    (32.0, 4.0)
    """
    if kind not in PENALTIES:
        raise ValueError(f"kind must be one of {PENALTIES}, got {kind!r}")
    shape = tuple(shape)
    if len(shape) < 2 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"shape must be a weight shape (n, P, ...) of positive ints, got {shape}")
    Penalty(kind, 1.0, _check_groups(groups))  # validates the kind/groups combination
    fan_in = math.prod(shape[1:])
    if kind == "l2":
        return fan_in / 2.0
    return math.sqrt(fan_in * (_group_size(shape, groups) + 1))


def _weight(layer: nn.Module) -> Tensor:
    return getattr(layer, weight_name(layer))


def _layers(net: nn.Module) -> dict[str, nn.Module]:
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    layers = {n: m for n, m in net.named_modules() if isinstance(m, BAYESIAN_LAYERS)}
    if not layers:
        raise ValueError("net must contain at least one Linear or Conv layer")
    return layers


def glorot_penalties(
    net: nn.Module, kind: str, *, lam: float, groups: Groups = None
) -> dict[str, Penalty]:
    """One penalty per Linear/Conv layer of ``net`` (keyed by module path, like
    :class:`~pyro_sparse_bnn.SparseBNN`'s prior mapping): ``lam * glorot_factor(layer)``.

    ``lam = 1/N`` is the Bayesian value; with :func:`penalty_priors` it gives Glorot-variance
    priors.

    >>> from pyro_sparse_bnn import mlp
    >>> {k: round(p.lam, 3) for k, p in glorot_penalties(mlp([8, 4, 2]), "l1", lam=0.5).items()}
    {'0': 2.0, '2': 1.414}
    """
    _positive("lam", lam)
    return {
        name: Penalty(kind, lam * glorot_factor(kind, tuple(_weight(m).shape), groups), groups)
        for name, m in _layers(net).items()
    }


def penalty_priors(
    penalties: Mapping[str, Penalty], *, n_data: int, centered: bool = False
) -> dict[str, Prior]:
    """:func:`penalty_to_prior` for each layer of a mapping (e.g. from :func:`glorot_penalties`).

    >>> from pyro_sparse_bnn import mlp
    >>> penalty_priors(glorot_penalties(mlp([8, 2]), "l2", lam=0.01), n_data=100)
    {'0': Normal(scale=0.353553)}
    """
    if not isinstance(penalties, Mapping):
        raise TypeError(f"penalties must be a mapping of layer to Penalty, got {penalties!r}")
    return {k: penalty_to_prior(p, n_data=n_data, centered=centered) for k, p in penalties.items()}


def total_penalty(net: nn.Module, penalties: Mapping[str, Penalty]) -> Tensor:
    """``sum_l penalty_l(weight_l)`` over the layers of ``net`` named in ``penalties``.

    >>> from pyro_sparse_bnn import mlp
    >>> net = mlp([2, 1])
    >>> bool(total_penalty(net, {"0": Penalty("l1", 1.0)}) == net[0].weight.abs().sum())
    True
    """
    if not isinstance(penalties, Mapping) or not penalties:
        raise ValueError(
            f"penalties must be a non-empty mapping of layer to Penalty, got {penalties!r}"
        )
    layers = _layers(net)
    unknown = set(penalties) - set(layers)
    if unknown:
        raise ValueError(f"penalties name layers {sorted(unknown)} that net does not have")
    return sum(p(_weight(layers[k])) for k, p in penalties.items())
