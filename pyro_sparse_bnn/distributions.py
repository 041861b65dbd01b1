"""Distributions Pyro lacks and the KL divergences that make them usable under SVI.

* :class:`LogUniform` — the improper log-uniform prior ``p(w) ∝ 1/|w|`` of sparse variational
  dropout (SparseVD). ``KL(Normal || LogUniform)`` is registered as the Molchanov et al. (2017)
  approximation, so :class:`pyro.infer.TraceMeanField_ELBO` uses it analytically.
* :class:`ARDNormal` — the ARD prior ``Normal(0, 1/tau)`` with its precision ``tau`` set to the
  optimum for the posterior; ``KL(Normal || ARDNormal)`` is the closed form :func:`ard_kl`.
* :class:`HardConcrete` — the stretched and clamped binary-concrete gate of L0 regularisation
  (Louizos et al. 2018), with :func:`expected_l0`.

The posterior family for both priors is an ordinary :class:`pyro.distributions.Normal`; the
SparseVD quantities are functions of its ``loc`` and ``scale`` (:func:`log_alpha`,
:func:`sparse_vd_kl`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Self

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch.distributions import Normal, constraints, register_kl

__all__ = [
    "HARD_CONCRETE_BETA",
    "HARD_CONCRETE_GAMMA",
    "HARD_CONCRETE_ZETA",
    "LOG_ALPHA_CLIP",
    "SPARSE_VD_K1",
    "SPARSE_VD_K2",
    "SPARSE_VD_K3",
    "ARDNormal",
    "HardConcrete",
    "LogUniform",
    "ard_kl",
    "expected_l0",
    "log_alpha",
    "sparse_vd_kl",
]

LOG_ALPHA_CLIP: tuple[float, float] = (-8.0, 8.0)
"""Range that :func:`log_alpha` clips to (Molchanov et al. 2017 use [-8, 8]; some codes +-10)."""
LOG_ALPHA_EPS: float = 1e-8
"""Added to ``theta^2`` in :func:`log_alpha` so that a zero mean gives a large, finite value."""
SPARSE_VD_K1: float = 0.63576
SPARSE_VD_K2: float = 1.87320
SPARSE_VD_K3: float = 1.48695

HARD_CONCRETE_BETA: float = 2.0 / 3.0
HARD_CONCRETE_GAMMA: float = -0.1
HARD_CONCRETE_ZETA: float = 1.1
HARD_CONCRETE_U_EPS: float = 1e-6
"""The uniform noise of :meth:`HardConcrete.rsample` is drawn from ``U(eps, 1 - eps)``."""


def _as_batch_shape(shape: int | Sequence[int] | torch.Size) -> torch.Size:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in shape
    ):
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}")
    if any(n < 0 for n in shape):
        raise ValueError(f"shape must have non-negative sizes, got {tuple(shape)}")
    return torch.Size(shape)


def log_alpha(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """SparseVD dropout log-rate of ``Normal(loc, scale)``, clipped to :data:`LOG_ALPHA_CLIP`.

    ``log_alpha = clip(log sigma^2 - log(theta^2 + 1e-8), -8, 8)`` with ``theta = loc`` and
    ``sigma = scale``.

    >>> log_alpha(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    tensor([0., 8.])
    """
    log_sigma2 = 2.0 * torch.log(scale)
    raw = log_sigma2 - torch.log(loc.square() + LOG_ALPHA_EPS)
    return raw.clamp(*LOG_ALPHA_CLIP)


def sparse_vd_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(Normal(loc, scale) || LogUniform)``, Molchanov et al. (2017) approximation.

    ``KL ~ k1 - k1 * sigmoid(k2 + k3 * log_alpha) + 0.5 * softplus(-log_alpha)`` with
    ``log_alpha`` clipped from above only (at 8, where the KL is flat): below -8 the KL keeps its
    ``-0.5 log_alpha`` slope, so a weight or group scale that starts far below the clip (a group
    scale at mean 1 and ``log sigma^2 = -10`` has ``log_alpha = -10``) is still pushed towards
    pruning. The true KL against the improper prior is defined only up to an additive constant;
    this one is fixed so that ``KL -> 0`` as ``log_alpha -> +inf``. Max error about 0.01 over
    ``log_alpha`` in [-8, 8].

    >>> sparse_vd_kl(torch.tensor([1.0]), torch.tensor([1.0]))
    tensor([0.4312])
    """
    log_sigma2 = 2.0 * torch.log(scale)
    la = (log_sigma2 - torch.log(loc.square() + LOG_ALPHA_EPS)).clamp(max=LOG_ALPHA_CLIP[1])
    k1, k2, k3 = SPARSE_VD_K1, SPARSE_VD_K2, SPARSE_VD_K3
    return k1 - k1 * torch.sigmoid(k2 + k3 * la) + 0.5 * F.softplus(-la)


def ard_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise ``min over tau of KL(Normal(loc, scale) || Normal(0, 1/sqrt(tau)))``.

    Derivation: ``KL = 0.5 * (tau * (theta^2 + sigma^2) - 1 - log(tau * sigma^2))`` is minimised
    at ``tau* = 1 / (theta^2 + sigma^2)``, where it equals ``0.5 * log((theta^2 + sigma^2) /
    sigma^2) = 0.5 * log1p(1 / alpha) = 0.5 * softplus(-log alpha)`` with
    ``alpha = sigma^2 / theta^2``. Exact: no clipping and no epsilon (``loc = 0`` gives 0).

    >>> ard_kl(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    tensor([0.3466, 0.0000])
    """
    return 0.5 * torch.log1p((loc / scale).square())


class _ImproperPrior(TorchDistribution):
    """Parameter-free improper prior on the real line: a batch shape, a device and a dtype."""

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.real

    def __init__(
        self,
        shape: int | Sequence[int] | torch.Size = (),
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self._zero = torch.zeros((), device=device, dtype=dtype)
        super().__init__(_as_batch_shape(shape), validate_args=validate_args)

    @property
    def device(self) -> torch.device:
        """Device of the prior's (constant) tensors."""
        return self._zero.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the prior's (constant) tensors."""
        return self._zero.dtype

    def expand(self, batch_shape: Sequence[int], _instance: Self | None = None) -> Self:
        batch_shape = torch.Size(batch_shape)
        try:
            compatible = torch.broadcast_shapes(self.batch_shape, batch_shape) == batch_shape
        except RuntimeError:
            compatible = False
        if not compatible:
            raise ValueError(
                f"cannot expand batch_shape {tuple(self.batch_shape)} to {tuple(batch_shape)}"
            )
        new = self._get_checked_instance(type(self), _instance)
        new._zero = self._zero
        super(_ImproperPrior, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} is an improper prior and cannot be sampled; use it only as "
            "the prior of a latent site whose value a guide provides (e.g. SVI with "
            "TraceMeanField_ELBO and a Normal guide)"
        )

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        return self.sample(sample_shape)

    def _neg_log_abs(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        out = -torch.log(value.abs())
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))


class LogUniform(_ImproperPrior):
    """Improper log-uniform prior ``p(w) ∝ 1/|w|`` on the real line (the SparseVD prior).

    ``batch_shape = shape``, ``event_shape = ()``, ``log_prob(w) = -log|w|``. It cannot be
    sampled. ``KL(Normal || LogUniform)`` is registered as :func:`sparse_vd_kl`, so under
    :class:`~pyro.infer.TraceMeanField_ELBO` with a Normal guide the KL term is analytic, also
    through ``.to_event(...)`` and ``pyro.plate`` (``expand`` returns a ``LogUniform``). A
    sampling ELBO (``Trace_ELBO``) instead estimates ``E_q[log q(w) + log|w|]``: the exact KL
    (which the approximation matches to about 0.01) shifted by the constant
    ``-0.5 * log(2 pi e) - (euler_gamma + log 2) / 2 ~ -2.0541`` per weight, so loss values differ
    between the two ELBOs while the objective is the same.

    >>> import pyro, pyro.distributions as dist
    >>> from pyro.infer import TraceMeanField_ELBO
    >>> def model():
    ...     pyro.sample("w", LogUniform((3,)).to_event(1))
    >>> def guide():
    ...     loc = pyro.param("loc", torch.ones(3))
    ...     pyro.sample("w", dist.Normal(loc, 0.5).to_event(1))
    >>> pyro.clear_param_store()
    >>> kl = sparse_vd_kl(torch.ones(3), torch.full((3,), 0.5)).sum().item()
    >>> abs(TraceMeanField_ELBO().loss(model, guide) - kl) < 1e-5
    True
    >>> LogUniform(2).log_prob(torch.tensor([1.0, -0.5]))
    tensor([-0.0000, 0.6931])
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._neg_log_abs(value)


class ARDNormal(_ImproperPrior):
    """ARD prior ``Normal(0, 1/tau)`` per weight with ``tau`` profiled out (empirical Bayes).

    The precision is the one that best fits the posterior, ``tau* = 1 / (theta^2 + sigma^2)``,
    so ``KL(Normal(theta, sigma) || ARDNormal)`` is registered as the closed form :func:`ard_kl`.
    ``log_prob(w)`` is the profiled density ``max over tau of log Normal(w; 0, 1/sqrt(tau))
    = -log|w| - 0.5 * log(2 pi) - 0.5`` (attained at ``tau = 1/w^2``): improper, so it cannot be
    sampled. Shapes, ``expand`` and plates behave as for :class:`LogUniform`. Use it with
    :class:`~pyro.infer.TraceMeanField_ELBO`: a sampling ELBO would profile ``tau`` per sample,
    which is the log-uniform objective (:class:`LogUniform`) rather than ARD.

    >>> ARDNormal().log_prob(torch.tensor(1.0))
    tensor(-1.4189)
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._neg_log_abs(value) - 0.5 * (math.log(2.0 * math.pi) + 1.0)


def _broadcast_kl(kl: torch.Tensor, q: TorchDistribution) -> torch.Tensor:
    return kl.expand(torch.broadcast_shapes(kl.shape, q.batch_shape))


@register_kl(Normal, LogUniform)
def _kl_normal_log_uniform(p: Normal, q: LogUniform) -> torch.Tensor:
    return _broadcast_kl(sparse_vd_kl(p.loc, p.scale), q)


@register_kl(Normal, ARDNormal)
def _kl_normal_ard_normal(p: Normal, q: ARDNormal) -> torch.Tensor:
    return _broadcast_kl(ard_kl(p.loc, p.scale), q)


def _check_hard_concrete_constants(beta: float, gamma: float, zeta: float) -> None:
    for name, value in (("beta", beta), ("gamma", gamma), ("zeta", zeta)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if beta <= 0:
        raise ValueError(f"beta (temperature) must be > 0, got {beta}")
    if gamma >= 0:
        raise ValueError(f"gamma (lower stretch limit) must be < 0, got {gamma}")
    if zeta <= 1:
        raise ValueError(f"zeta (upper stretch limit) must be > 1, got {zeta}")


class HardConcrete(TorchDistribution):
    """Hard-concrete gate on [0, 1] (Louizos et al. 2018), reparameterised.

    ``u ~ U(1e-6, 1 - 1e-6)``, ``s = sigmoid((logit(u) + log_alpha) / beta)``,
    ``z = clamp(s * (zeta - gamma) + gamma, 0, 1)``. ``batch_shape = log_alpha.shape``.

    ``log_prob`` is implemented exactly, as a density with respect to
    ``delta_0 + delta_1 + Lebesgue on (0, 1)``: at ``z = 0`` it is ``log P(z = 0)
    = logsigmoid(beta * log(-gamma / zeta) - log_alpha)``, at ``z = 1`` it is ``log P(z = 1)
    = logsigmoid(log_alpha - beta * log((1 - gamma) / (zeta - 1)))``, and inside it is the
    stretched binary-concrete density. (The clipping of ``u`` is ignored: it moves mass of order
    1e-6.) Raises ``ValueError`` for a non-finite ``log_alpha`` while argument validation is on
    (Pyro's and torch's default), and for ``beta <= 0``, ``gamma >= 0`` or ``zeta <= 1``.

    >>> gate = HardConcrete(torch.zeros(2))
    >>> gate.rsample((5,)).shape
    torch.Size([5, 2])
    >>> gate.prob_nonzero()
    tensor([0.8318, 0.8318])
    >>> gate.deterministic_gate()
    tensor([0.5000, 0.5000])
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {"log_alpha": constraints.real}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(
        self,
        log_alpha: torch.Tensor | float,
        beta: float = HARD_CONCRETE_BETA,
        gamma: float = HARD_CONCRETE_GAMMA,
        zeta: float = HARD_CONCRETE_ZETA,
        *,
        validate_args: bool | None = None,
    ) -> None:
        _check_hard_concrete_constants(beta, gamma, zeta)
        if not torch.is_tensor(log_alpha):
            log_alpha = torch.as_tensor(log_alpha, dtype=torch.get_default_dtype())
        if not log_alpha.is_floating_point():
            raise TypeError(f"log_alpha must be a floating-point tensor, got {log_alpha.dtype}")
        validate = self._validate_args if validate_args is None else validate_args
        if validate and not bool(torch.isfinite(log_alpha).all()):
            raise ValueError("log_alpha must be finite (no nan or inf)")
        self.log_alpha = log_alpha
        self.beta, self.gamma, self.zeta = float(beta), float(gamma), float(zeta)
        super().__init__(log_alpha.shape, validate_args=validate_args)

    def expand(self, batch_shape: Sequence[int], _instance: Self | None = None) -> Self:
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(HardConcrete, _instance)
        new.log_alpha = self.log_alpha.expand(batch_shape)
        new.beta, new.gamma, new.zeta = self.beta, self.gamma, self.zeta
        super(HardConcrete, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        la = self.log_alpha
        u = torch.empty(shape, dtype=la.dtype, device=la.device)
        u.uniform_(HARD_CONCRETE_U_EPS, 1.0 - HARD_CONCRETE_U_EPS)
        s = torch.sigmoid((torch.logit(u) + la) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        la, beta, gamma, zeta = self.log_alpha, self.beta, self.gamma, self.zeta
        log_p0 = F.logsigmoid(beta * math.log(-gamma / zeta) - la)
        log_p1 = F.logsigmoid(la - beta * math.log((1.0 - gamma) / (zeta - 1.0)))
        # Inside (0, 1): s = (z - gamma) / (zeta - gamma), logit(s) = (L + log_alpha) / beta with L
        # standard logistic, so q(s) = beta * sigmoid(L) * sigmoid(-L) / (s * (1 - s)).
        s = (value - gamma) / (zeta - gamma)
        L = beta * torch.logit(s) - la
        log_inside = (
            math.log(beta / (zeta - gamma))
            + F.logsigmoid(L)
            + F.logsigmoid(-L)
            - torch.log(s)
            - torch.log1p(-s)
        )
        return torch.where(value <= 0, log_p0, torch.where(value >= 1, log_p1, log_inside))

    def prob_nonzero(self) -> torch.Tensor:
        """``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))`` per gate."""
        return torch.sigmoid(self.log_alpha - self.beta * math.log(-self.gamma / self.zeta))

    def deterministic_gate(self) -> torch.Tensor:
        """Test-time gate ``clamp(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``."""
        s = torch.sigmoid(self.log_alpha)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)


def expected_l0(
    log_alpha: torch.Tensor,
    beta: float = HARD_CONCRETE_BETA,
    gamma: float = HARD_CONCRETE_GAMMA,
    zeta: float = HARD_CONCRETE_ZETA,
) -> torch.Tensor:
    """Expected number of non-zero hard-concrete gates, ``sum of P(z != 0)`` (a scalar tensor).

    >>> expected_l0(torch.zeros(3))
    tensor(2.4955)
    """
    return HardConcrete(log_alpha, beta, gamma, zeta).prob_nonzero().sum()
