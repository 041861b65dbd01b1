"""Improper priors of the sparse variational families, fitted with a guide (SVI), never sampled.

* :class:`LogUniform` - ``p(w) ∝ 1/|w|``, the prior of sparse variational dropout;
* :class:`ProfiledARD` - ``Normal(0, 1/tau)`` per weight with ``tau`` at its optimum for the
  posterior (the analytic KL is ``0.5 * log1p(1 / alpha)``);
* :class:`GroupLogUniform` - Bayesian compression's group normal-Jeffreys prior: one
  multiplicative variable ``z`` per input neuron (or output neuron / channel) with
  ``p(z) ∝ 1/|z|``, and ``w = z * w_tilde`` with ``w_tilde ~ Normal(0, 1)`` (non-centred).

>>> import pyro, torch
>>> from pyro_sparse_bnn import SparseBNN, mlp, likelihoods
>>> bnn = SparseBNN(mlp([4, 3]), GroupLogUniform(), likelihoods.Categorical())
>>> values = {"0.weight_local_scale": torch.ones(1, 4), "0.weight_decentered": torch.ones(3, 4)}
>>> tr = pyro.poutine.trace(pyro.poutine.condition(bnn, values)).get_trace(torch.randn(2, 4))
>>> [n for n in tr.nodes if n.startswith("0.")]
['0.weight_local_scale', '0.weight_decentered', '0.weight']
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
from torch import Tensor

from .. import distributions
from .base import WEIGHT_TAG, Groups, Prior, _check_shape, weight_deterministic

__all__ = ["GroupLogUniform", "LogUniform", "ProfiledARD", "StructuredLogUniform"]


class LogUniform(Prior):
    """The improper log-uniform prior ``p(w) ∝ 1/|w|`` of sparse variational dropout.

    It is the scale mixture with ``p(s) ∝ 1/s`` integrated out, so it emits the single site
    ``name``. It has no draws: fit it with a guide (SVI), never with MCMC or prior predictive runs.

    >>> LogUniform()
    LogUniform(groups=None, centered=True)
    """

    learns_centring = False

    def __init__(self) -> None:
        super().__init__(centered=True)

    def sample(self, name: str, shape: Sequence[int]) -> Tensor:
        shape = _check_shape(shape)
        law = distributions.LogUniform(shape, device=self._zero.device, dtype=self._zero.dtype)
        return pyro.sample(name, law.to_event(len(shape)), infer={WEIGHT_TAG: True})


class ProfiledARD(Prior):
    """ARD with the precision profiled out: ``w ~ Normal(0, 1/sqrt(tau*))``, one site per weight.

    ``tau* = 1 / (theta^2 + sigma^2)`` is the precision that best fits the Normal posterior, so
    ``KL(q || p) = 0.5 * log1p(theta^2 / sigma^2)`` in closed form
    (:class:`~pyro_sparse_bnn.distributions.ARDNormal`). Improper: fit it with a Normal guide and an
    ELBO that uses analytic KLs (``fit(..., guide="sparse_vd", elbo="mean_field")``).

    >>> import pyro, torch
    >>> w = torch.ones(2)
    >>> tr = pyro.poutine.trace(pyro.poutine.condition(ProfiledARD().sample, {"w": w})).get_trace(
    ...     "w", (2,))
    >>> type(tr.nodes["w"]["fn"].base_dist).__name__
    'ARDNormal'
    """

    learns_centring = False

    def __init__(self) -> None:
        super().__init__(centered=True)

    def sample(self, name: str, shape: Sequence[int]) -> Tensor:
        shape = _check_shape(shape)
        law = distributions.ARDNormal(shape, device=self._zero.device, dtype=self._zero.dtype)
        return pyro.sample(name, law.to_event(len(shape)), infer={WEIGHT_TAG: True})


class GroupLogUniform(Prior):
    """Group normal-Jeffreys prior: ``z ~ LogUniform`` per group, ``w = z * w_tilde``.

    Sites for a weight ``name``: ``name_local_scale`` (``z``, one per input neuron or channel with
    ``groups="in"``, per output neuron with ``groups="out"``; signed, ``p(z) ∝ 1/|z|``),
    ``name_decentered`` (``w_tilde ~ Normal(0, 1)``) and the deterministic weight ``name``.
    Marginally ``w | z ~ Normal(0, z^2)``, the scale mixture of Louizos, Ullrich & Welling (2017).
    With a Normal guide on ``z`` its KL is the SparseVD approximation of ``log_alpha_z``; a neuron
    whose ``log_alpha_z`` is large is pruned.

    >>> GroupLogUniform(groups="out")
    GroupLogUniform(groups='out', centered=False)
    """

    learns_centring = False  # improper: its own sampler and starting values

    def __init__(self, *, groups: Groups = "in") -> None:
        if groups is None:
            raise ValueError("groups must be 'in' or 'out' for a group prior, got None")
        super().__init__(groups=groups, centered=False)

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        law = distributions.LogUniform((), device=self._zero.device, dtype=self._zero.dtype)
        return self._group_site(name, "local_scale", law, shape)

    def init_values(self, name: str, weight: Tensor) -> dict[str, Tensor]:
        """Start at ``z = 1`` and ``w_tilde = weight`` (the prior has no median to start from).

        >>> import torch
        >>> sorted(GroupLogUniform().init_values("w", torch.ones(3, 2)))
        ['w_decentered', 'w_local_scale']
        """
        shape = self.group_site_shape(name, tuple(weight.shape))
        return {f"{name}_decentered": weight,
                self.group_site(name, "local_scale"): weight.new_ones(shape)}  # fmt: skip

    def extra_repr(self) -> str:
        return f"groups={self.groups!r}, centered=False"


class StructuredLogUniform(Prior):
    """Log-uniform factors per weight, per input and per output: ``w = theta * z_in * z_out``.

    The structured SparseVD prior of Lobacheva, Chirkova & Vetrov (2018): ``theta`` (site
    ``name_decentered``, one per weight), ``z_in`` (``name_in_scale``, one per input neuron or
    channel) and ``z_out`` (``name_out_scale``, one per output neuron) are each log-uniform, and
    with a Normal guide each KL is the SparseVD approximation. Weights go one by one, whole inputs
    when ``z_in`` goes, whole outputs when ``z_out`` goes. On a fused recurrent layer's weight
    (:mod:`pyro_sparse_bnn.recurrent`) the inputs are the input features and the hidden neurons,
    the outputs the gate preactivations: a pruned ``z_out`` makes a gate constant, a pruned
    hidden ``z_in`` removes the neuron from the recurrence. Fit with the ``"sparse_vd"`` guide.

    >>> import torch
    >>> start = StructuredLogUniform().init_values("w", torch.ones(3, 2))
    >>> {site: tuple(value.shape) for site, value in start.items()}
    {'w_decentered': (3, 2), 'w_in_scale': (1, 2), 'w_out_scale': (3, 1)}
    """

    learns_centring = False  # improper: its own sampler and starting values

    def __init__(self) -> None:
        super().__init__(centered=False)

    def _factor(self, name: str, shape: tuple[int, ...]) -> Tensor:
        law = distributions.LogUniform(shape, device=self._zero.device, dtype=self._zero.dtype)
        return pyro.sample(name, law.to_event(len(shape)))

    def _group_shapes(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        if len(shape) < 2:
            return {"out": shape}
        return {g: tuple(n if i == d else 1 for i, n in enumerate(shape))
                for g, d in (("in", 1), ("out", 0))}  # fmt: skip

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        scale = self._zero + 1
        for group, group_shape in self._group_shapes(shape).items():
            scale = scale * self._factor(f"{name}_{group}_scale", group_shape)
        return scale

    def sample(self, name: str, shape: Sequence[int]) -> Tensor:
        shape = _check_shape(shape)
        scale = self.mixing_scale(name, shape)
        theta = self._factor(f"{name}_decentered", shape)
        return weight_deterministic(name, theta * scale, len(shape))

    def init_values(self, name: str, weight: Tensor) -> dict[str, Tensor]:
        """Start at ``theta = weight`` and every group factor at 1."""
        shapes = self._group_shapes(tuple(weight.shape))
        ones = {f"{name}_{g}_scale": weight.new_ones(s) for g, s in shapes.items()}
        return {f"{name}_decentered": weight, **ones}

    def extra_repr(self) -> str:
        return ""
