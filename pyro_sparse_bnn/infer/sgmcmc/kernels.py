"""SG-MCMC kernels on plain tensors: schedules, the SGLD/SGHMC integrator, RMSprop
preconditioning.

Conventions used throughout:

* Parameters are a tensor or a list of tensors whose **leading dimension indexes independent
  chains**; every update is elementwise, so ``C`` chains run as one vectorised chain.
* ``temperature`` ``T`` targets ``p(w | data) ** (1 / T)``: the Langevin noise has variance
  ``2 * eps * T``. The SSGL paper's ``invT`` is ``1 / T``.
* Iterations are counted from ``k = 1``; schedules (step sizes, SA weights, sparse rates) are
  callables of ``k``.
* Randomness comes only from the ``torch.Generator`` passed in (``None`` uses torch's global
  generator); the generator must live on the parameters' device.

SGLD and SGHMC are one integrator, damped Langevin dynamics in momentum form (Chen et al., 2014),
with an optional diagonal RMSprop preconditioner ``P`` (pSGLD, Li et al., 2016)::

    v <- (1 - friction) * v + eps * P * g + N(0, 2 * eps * P * (friction - eps * P * V / 2) * T)
    w <- w + v

where ``g`` estimates the gradient of the log posterior and ``V`` the variance of that estimate
(0 when unknown). ``friction = 1`` keeps no momentum and is SGLD.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ...validation import (
    check_number,
    check_positive,
)

Params = Tensor | Sequence[Tensor]
Schedule = Callable[[int], float]
GradFn = Callable[[Params, torch.Generator | None], Params]
Hook = Callable[[int, Params], Params | None]


def _as_list(params: Params, name: str) -> list[Tensor]:
    tensors = [params] if isinstance(params, Tensor) else list(params)
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError(f"{name} must be a tensor or a non-empty sequence of tensors")
    return tensors


def _restore(tensors: list[Tensor], like: Params) -> Params:
    return tensors[0] if isinstance(like, Tensor) else tensors


def _check_like(tensors: list[Tensor], reference: list[Tensor], name: str) -> None:
    if len(tensors) != len(reference) or any(
        t.shape != r.shape for t, r in zip(tensors, reference, strict=True)
    ):
        raise ValueError(
            f"{name} must match the parameters' shapes {[tuple(r.shape) for r in reference]}, "
            f"got {[tuple(t.shape) for t in tensors]}"
        )


# --------------------------------------------------------------------------------------------
# Schedules


@dataclass(frozen=True)
class ConstantSchedule:
    """The same value at every iteration.

    >>> ConstantSchedule(1e-3)(10)
    0.001
    """

    value: float

    def __post_init__(self) -> None:
        float(check_positive(self.value, "value"))

    def __call__(self, k: int) -> float:
        return self.value


@dataclass(frozen=True)
class PolynomialDecay:
    """``scale * (offset + k) ** (-power)``, capped at ``maximum`` when given.

    >>> PolynomialDecay(1e-3, power=1 / 3)(8)  # the SSGL paper's SGLD step size
    0.0005
    >>> PolynomialDecay(1000.0, offset=100.0, power=0.7, maximum=0.1)(1)  # SA weights
    0.1
    """

    scale: float
    offset: float = 0.0
    power: float = 0.5
    maximum: float | None = None

    def __post_init__(self) -> None:
        float(check_positive(self.scale, "scale"))
        if self.offset <= -1:
            raise ValueError(f"offset must be > -1 so that offset + k > 0, got {self.offset}")
        if self.power < 0:
            raise ValueError(f"power must be >= 0, got {self.power}")
        if self.maximum is not None:
            float(check_positive(self.maximum, "maximum"))

    def __call__(self, k: int) -> float:
        value = self.scale * (self.offset + k) ** (-self.power)
        return value if self.maximum is None else min(self.maximum, value)


SSGL_STEP_SIZE = PolynomialDecay(1e-3, offset=0.0, power=1 / 3)
"""The SSGL paper's SGLD step size ``1e-3 * k ** (-1/3)``."""
SSGL_SA_WEIGHTS = PolynomialDecay(1000.0, offset=100.0, power=0.7, maximum=0.1)
"""The SSGL paper's SA weights ``min(0.1, 1000 / (100 + k) ** 0.7)`` (0.1 until k ~ 5.2e5)."""
EM_WEIGHTS = ConstantSchedule(1.0)
"""SA weight 1: each update replaces the state, the paper's EM variant."""


def as_schedule(value: float | Schedule, name: str) -> Schedule:
    if callable(value):
        return value
    return ConstantSchedule(float(check_positive(value, name)))


@dataclass(frozen=True)
class SparseRateSchedule:
    """Sparse rate ``s_k = target * (1 - damping ** (k / period))`` for gradual magnitude pruning.

    ``target`` is the final fraction of weights pruned, ``damping`` in (0, 1) sets how fast the
    rate approaches it and ``period`` is the number of iterations per factor of ``damping``. The
    defaults (0.99, 50) are those of the SSGL reference code, where ``k`` counts SA iterations.

    >>> round(SparseRateSchedule(0.9)(50), 6)
    0.009
    """

    target: float
    damping: float = 0.99
    period: float = 50.0

    def __post_init__(self) -> None:
        if not 0 <= self.target < 1:
            raise ValueError(f"target must be in [0, 1), got {self.target}")
        if not 0 < self.damping < 1:
            raise ValueError(f"damping must be in (0, 1), got {self.damping}")
        float(check_positive(self.period, "period"))

    def __call__(self, k: int) -> float:
        return self.target * (1.0 - self.damping ** (k / self.period))


# --------------------------------------------------------------------------------------------
# Integrators


@dataclass(frozen=True)
class RMSPreconditioner:
    """Diagonal pSGLD preconditioner ``P = 1 / (epsilon + sqrt(V))``, ``V`` an EMA of ``g**2``.

    ``V`` starts at the first squared gradient, so start away from a stationary point
    (``P <= 1 / epsilon``). As in pSGLD the drift correction for a position-dependent ``P`` is
    dropped. That bias is not small when ``V`` follows the chain (a window ``1 / (1 - decay)``
    shorter than the chain's autocorrelation time): on a 5-d Gaussian it inflated variances by
    10 % to 2x, more at smaller steps. ``adapt_until=k`` freezes ``V`` after iteration ``k``
    (e.g. the warm-up); the chain is then Langevin with a constant metric, whose bias vanishes
    with the step size (there: within 5 % after 3000 adapting iterations).
    """

    decay: float = 0.99
    epsilon: float = 1e-5
    adapt_until: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        float(check_positive(self.epsilon, "epsilon"))
        if self.adapt_until is not None:
            check_number(self.adapt_until, "adapt_until", integer=True, low=1)

    def update(
        self, sq_grad_avg: Tensor | None, grad: Tensor, iteration: int
    ) -> tuple[Tensor, Tensor]:
        """Return the new ``V`` and the preconditioner ``P`` at ``iteration`` (from 1)."""
        if sq_grad_avg is None:
            sq = grad * grad
        elif self.adapt_until is not None and iteration > self.adapt_until:
            sq = sq_grad_avg
        else:
            sq = self.decay * sq_grad_avg + (1.0 - self.decay) * grad * grad
        return sq, 1.0 / (self.epsilon + sq.sqrt())


@dataclass(frozen=True)
class IntegratorState:
    """Position, momentum (``None`` without friction < 1), preconditioner EMA and iteration."""

    params: list[Tensor]
    momentum: list[Tensor] | None = None
    sq_grad_avg: list[Tensor] | None = None
    iteration: int = 0


class LangevinIntegrator:
    """Damped Langevin dynamics in momentum form; see the module docstring for the update.

    Args:
        step_size: ``eps``, a positive number or a schedule ``k -> eps``.
        friction: ``alpha`` in (0, 1]; 1 is SGLD, ``1 - friction`` is the momentum decay.
        temperature: ``T > 0``; the chain targets ``posterior ** (1 / T)``.
        gradient_noise: estimated per-coordinate variance ``V`` of the gradient estimate; the
            injected noise is reduced by it (and clipped at 0).
        preconditioner: optional :class:`RMSPreconditioner`.

    >>> sgld = LangevinIntegrator(step_size=0.1, friction=1.0)
    >>> state = sgld.init(torch.zeros(4, 2))
    >>> state = sgld.step(state, -state.params[0], torch.Generator().manual_seed(0))
    >>> state.params[0].shape, state.iteration
    (torch.Size([4, 2]), 1)
    """

    def __init__(
        self,
        step_size: float | Schedule,
        friction: float,
        temperature: float = 1.0,
        gradient_noise: float = 0.0,
        preconditioner: RMSPreconditioner | None = None,
    ) -> None:
        self.step_size = as_schedule(step_size, "step_size")
        if not 0 < friction <= 1:
            raise ValueError(f"friction must be in (0, 1], got {friction}")
        self.friction = float(friction)
        self.temperature = float(check_positive(temperature, "temperature"))
        if gradient_noise < 0:
            raise ValueError(f"gradient_noise must be >= 0, got {gradient_noise}")
        self.gradient_noise = float(gradient_noise)
        if preconditioner is not None and not isinstance(preconditioner, RMSPreconditioner):
            raise TypeError("preconditioner must be an RMSPreconditioner or None")
        self.preconditioner = preconditioner

    def init(self, params: Params) -> IntegratorState:
        """Start at ``params`` (momentum zero)."""
        tensors = [p.detach() for p in _as_list(params, "params")]
        for p in tensors:
            if not p.dtype.is_floating_point:
                raise TypeError(f"params must be floating point, got {p.dtype}")
        momentum = None if self.friction == 1.0 else [torch.zeros_like(p) for p in tensors]
        return IntegratorState(params=tensors, momentum=momentum)

    def step(
        self, state: IntegratorState, grads: Params, generator: torch.Generator | None = None
    ) -> IntegratorState:
        """One move given ``grads``, the gradient estimate of the log posterior at ``state``."""
        grads = [g.detach() for g in _as_list(grads, "grads")]
        _check_like(grads, state.params, "grads")
        k = state.iteration + 1
        eps = self.step_size(k)
        new_params, new_momentum, new_sq = [], [], []
        for i, (w, g) in enumerate(zip(state.params, grads, strict=True)):
            noise = torch.randn(w.shape, generator=generator, dtype=w.dtype, device=w.device)
            if self.preconditioner is None:  # scalar step: fewest tensor ops (tiny-tensor loops)
                variance = 2.0 * eps * (self.friction - 0.5 * eps * self.gradient_noise)
                velocity = noise.mul_(math.sqrt(max(variance * self.temperature, 0.0)))
                velocity = velocity.add_(g, alpha=eps)
            else:
                previous = None if state.sq_grad_avg is None else state.sq_grad_avg[i]
                sq, precond = self.preconditioner.update(previous, g, k)
                new_sq.append(sq)
                scale = eps * precond
                variance = 2.0 * scale * (self.friction - 0.5 * scale * self.gradient_noise)
                velocity = scale * g + (variance * self.temperature).clamp(min=0.0).sqrt() * noise
            if state.momentum is not None:
                velocity = (1.0 - self.friction) * state.momentum[i] + velocity
                new_momentum.append(velocity)
            new_params.append(w + velocity)
        return IntegratorState(
            params=new_params,
            momentum=new_momentum if state.momentum is not None else None,
            sq_grad_avg=new_sq if self.preconditioner is not None else None,
            iteration=k,
        )


class SGLD(LangevinIntegrator):
    """Stochastic-gradient Langevin dynamics: ``w += eps * P * g + N(0, 2 * eps * P * T)``.

    >>> sgld = SGLD(step_size=SSGL_STEP_SIZE)
    >>> sgld.step(sgld.init(torch.zeros(3)), torch.ones(3)).iteration
    1
    """

    def __init__(
        self,
        step_size: float | Schedule,
        temperature: float = 1.0,
        preconditioner: RMSPreconditioner | None = None,
    ) -> None:
        super().__init__(step_size, 1.0, temperature, 0.0, preconditioner)


class SGHMC(LangevinIntegrator):
    """Stochastic-gradient HMC in SGD-with-momentum form (Chen et al., 2014, s. 3.3).

    ``step_size`` is the learning rate ``eta`` (``eps**2`` of the Hamiltonian form) and
    ``friction`` is ``1 - momentum``; for small steps the chain moves like SGLD with step
    ``eta / friction``. On a Gaussian with precision ``A`` its stationary covariance is
    ``(A - eta A^2 / (2 (2 - friction)))^-1`` (SGLD's ``(A - eps A^2 / 2)^-1`` at friction 1).

    >>> sghmc = SGHMC(step_size=1e-3, friction=0.1)
    >>> sghmc.init(torch.zeros(2, 5)).momentum[0].abs().sum().item()
    0.0
    """

    def __init__(
        self,
        step_size: float | Schedule,
        friction: float = 0.1,
        temperature: float = 1.0,
        gradient_noise: float = 0.0,
        preconditioner: RMSPreconditioner | None = None,
    ) -> None:
        super().__init__(step_size, friction, temperature, gradient_noise, preconditioner)
