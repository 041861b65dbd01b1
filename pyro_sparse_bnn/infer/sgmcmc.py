"""Stochastic-gradient MCMC on plain tensors: SGLD, SGHMC and the SSGL prior with SA updates.

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
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..validation import check_number, check_positive

__all__ = [
    "EM_WEIGHTS",
    "SGHMC",
    "SGLD",
    "SSGL",
    "SSGL_SA_WEIGHTS",
    "SSGL_STEP_SIZE",
    "ConstantSchedule",
    "IntegratorState",
    "LangevinIntegrator",
    "MinibatchGradient",
    "PolynomialDecay",
    "RMSPreconditioner",
    "SparseRateSchedule",
    "inclusion_mask",
    "magnitude_mask",
    "run_sgmcmc",
    "sa_average",
    "ssgl_delta",
    "ssgl_grad_log_prior",
    "ssgl_inclusion_probability",
    "ssgl_log_slab",
    "ssgl_log_spike",
    "ssgl_penalties",
    "ssgl_sigma",
]

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


def _as_schedule(value: float | Schedule, name: str) -> Schedule:
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
        self.step_size = _as_schedule(step_size, "step_size")
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


# --------------------------------------------------------------------------------------------
# Gradient estimation and the sampler loop


class MinibatchGradient:
    """Minibatch estimate of the gradient of the log posterior.

    ``(N / n) * grad sum_{i in batch} log p(y_i | w) + grad log p(w)``, the batch drawn uniformly
    without replacement at each call, shared by all chains.

    Args:
        log_likelihood: ``(params, batch) -> log-likelihood summed over the batch``, a scalar or
            one value per chain; ``batch`` is a tuple of the ``data`` tensors' rows.
        data: tensors sharing their first (data) dimension, e.g. ``(X, y)``.
        batch_size: ``n``; ``None`` uses all ``N`` rows (no randomness).
        grad_log_prior: ``params -> grad log p(params)`` (same structure), or ``None`` (flat).

    >>> X, y = torch.randn(100, 2), torch.randn(100)
    >>> def loglik(w, batch):
    ...     x, t = batch
    ...     return -0.5 * ((t[:, None] - x @ w.T) ** 2).sum(0)
    >>> estimate = MinibatchGradient(loglik, (X, y), batch_size=10)
    >>> estimate(torch.zeros(3, 2), torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        log_likelihood: Callable[[Params, tuple[Tensor, ...]], Tensor],
        data: Sequence[Tensor],
        batch_size: int | None = None,
        grad_log_prior: Callable[[Params], Params] | None = None,
    ) -> None:
        self.data = tuple(_as_list(data, "data"))
        self.num_data = self.data[0].shape[0] if self.data[0].dim() > 0 else 0
        if self.num_data == 0 or any(
            t.dim() == 0 or t.shape[0] != self.num_data for t in self.data
        ):
            raise ValueError(
                "data tensors must share a non-empty first dimension, got shapes "
                f"{[tuple(t.shape) for t in self.data]}"
            )
        self.batch_size = self.num_data if batch_size is None else batch_size
        check_number(self.batch_size, "batch_size", integer=True, low=1)
        if self.batch_size > self.num_data:
            raise ValueError(f"batch_size must be <= {self.num_data} (the data size)")
        self.log_likelihood = log_likelihood
        self.grad_log_prior = grad_log_prior

    def __call__(self, params: Params, generator: torch.Generator | None = None) -> Params:
        leaves = [p.detach().requires_grad_(True) for p in _as_list(params, "params")]
        if self.batch_size == self.num_data:
            batch = self.data
        else:
            device = self.data[0].device
            index = torch.randperm(self.num_data, generator=generator, device=device)
            batch = tuple(t[index[: self.batch_size]] for t in self.data)
        with torch.enable_grad():
            total = self.log_likelihood(_restore(leaves, params), batch).sum()
            grads = torch.autograd.grad(total, leaves, allow_unused=True)
        scale = self.num_data / self.batch_size
        grads = [
            torch.zeros_like(p) if g is None else scale * g
            for p, g in zip(leaves, grads, strict=True)
        ]
        if self.grad_log_prior is not None:
            prior = _as_list(
                self.grad_log_prior(_restore([p.detach() for p in leaves], params)),
                "grad_log_prior output",
            )
            _check_like(prior, leaves, "grad_log_prior output")
            grads = [g + q for g, q in zip(grads, prior, strict=True)]
        return _restore(grads, params)


def run_sgmcmc(
    integrator: LangevinIntegrator,
    init: Params,
    grad_fn: GradFn,
    num_samples: int,
    *,
    warmup: int = 0,
    thin: int = 1,
    generator: torch.Generator | None = None,
    hook: Hook | None = None,
) -> Params:
    """Run ``warmup + num_samples * thin`` iterations and keep every ``thin``-th after warm-up.

    Each iteration ``k`` (from 1) computes ``grad_fn(params, generator)``, takes one integrator
    step, then calls ``hook(k, params)`` with the new position (SA updates go there); a hook may
    return replacement parameters (e.g. pruned ones). ``init`` has a leading chain dimension;
    each returned tensor has shape ``(chains, num_samples, *param_shape[1:])``.

    >>> draws = run_sgmcmc(SGLD(0.1), torch.zeros(4, 2), lambda w, g: -w, 10,
    ...                    warmup=5, generator=torch.Generator().manual_seed(0))
    >>> draws.shape
    torch.Size([4, 10, 2])
    """
    if not isinstance(integrator, LangevinIntegrator):
        raise TypeError("integrator must be a LangevinIntegrator (e.g. SGLD or SGHMC)")
    check_number(num_samples, "num_samples", integer=True, low=1)
    check_number(warmup, "warmup", integer=True, low=0)
    check_number(thin, "thin", integer=True, low=1)
    state = integrator.init(init)
    if any(p.dim() == 0 for p in state.params):
        raise ValueError("init tensors need a leading chain dimension (use shape (1, ...))")
    kept: list[list[Tensor]] = [[] for _ in state.params]
    for k in range(1, warmup + num_samples * thin + 1):
        state = integrator.step(state, grad_fn(_restore(state.params, init), generator), generator)
        if hook is not None:
            replaced = hook(k, _restore(state.params, init))
            if replaced is not None:
                new = [p.detach() for p in _as_list(replaced, "hook output")]
                _check_like(new, state.params, "hook output")
                state = replace(state, params=new)
        if k > warmup and (k - warmup) % thin == 0:
            for store, p in zip(kept, state.params, strict=True):
                store.append(p)
    return _restore([torch.stack(store, dim=1) for store in kept], init)


# --------------------------------------------------------------------------------------------
# Spike-and-slab Gaussian-Laplace (SSGL) prior and its stochastic-approximation updates.
# Weights are flat tensors of shape (..., p): the last dimension holds the p weights, leading
# dimensions (chains) are independent; delta and sigma have shape (...).


def _per_weight(value: Tensor | float, w: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=w.dtype, device=w.device).unsqueeze(-1)


def ssgl_log_spike(w: Tensor, sigma: Tensor | float, v0: float) -> Tensor:
    """Log density of the spike ``Laplace(0, sigma * v0)`` at ``w``."""
    scale = _per_weight(sigma, w) * v0
    return -torch.log(2.0 * scale) - w.abs() / scale


def ssgl_log_slab(w: Tensor, sigma: Tensor | float, v1: float) -> Tensor:
    """Log density of the slab ``Normal(0, sigma**2 * v1)`` at ``w``."""
    var = _per_weight(sigma, w) ** 2 * v1
    return -0.5 * torch.log(2.0 * torch.pi * var) - 0.5 * w * w / var


def _inclusion_logit(abs_w: Tensor, logit_delta: Tensor, sigma: Tensor, v0: float, v1: float):
    """``log(slab * delta) - log(spike * (1 - delta))``; ``sigma`` cancels from the constants.

    ``logit_delta`` and ``sigma`` broadcast against ``abs_w`` (trailing weight dim of size 1).
    """
    const = math.log(2.0 * v0) - 0.5 * math.log(2.0 * math.pi * v1)
    return (logit_delta + const) + abs_w * (1.0 / (sigma * v0) - abs_w / (2.0 * v1 * sigma * sigma))


def ssgl_inclusion_probability(
    w: Tensor, delta: Tensor | float, sigma: Tensor | float, v0: float, v1: float
) -> Tensor:
    """``rho = a / (a + b)``, ``a = slab(w) * delta``, ``b = spike(w) * (1 - delta)``, in log space.

    >>> ssgl_inclusion_probability(torch.tensor([0.0, 3.0]), 0.5, 1.0, 0.1, 10.0)
    tensor([0.0246, 1.0000])
    """
    d = _per_weight(delta, w)
    logit_delta = torch.log(d) - torch.log1p(-d)
    return torch.sigmoid(_inclusion_logit(w.abs(), logit_delta, _per_weight(sigma, w), v0, v1))


def ssgl_penalties(rho: Tensor, v0: float, v1: float) -> tuple[Tensor, Tensor]:
    """Adaptive penalties ``kappa0 = (1 - rho) / v0`` (Laplace) and ``kappa1 = rho / v1`` (L2)."""
    return (1.0 - rho) / v0, rho / v1


def ssgl_delta(rho: Tensor, a: float, b: float) -> Tensor:
    """Mode of the inclusion rate: ``(sum rho + a - 1) / (a + b + p - 2)`` over the last dim."""
    p = rho.shape[-1]
    return (rho.sum(-1) + a - 1.0) / (a + b + p - 2.0)


def _positive_root(r_a: Tensor | float, r_b: Tensor, r_c: Tensor) -> Tensor:
    """Positive root of ``r_a s**2 - r_b s - r_c = 0`` for ``r_a, r_c > 0``."""
    return (r_b + torch.sqrt(r_b * r_b + 4.0 * r_a * r_c)) / (2.0 * r_a)


def ssgl_sigma(
    w: Tensor,
    kappa0: Tensor,
    kappa1: Tensor,
    nu: float,
    lam: float,
    *,
    rss: Tensor | float | None = None,
    num_data: int | None = None,
) -> Tensor:
    """Positive root of ``A sigma**2 - B sigma - C = 0`` (REFERENCES s. 6).

    ``B = sum kappa0 |w|``; regression (``rss`` = sum of squared residuals and ``num_data`` = N
    given): ``A = N + p + nu``, ``C = rss + sum kappa1 w**2 + nu * lam``; classification (neither
    given): ``A = p + nu + 2``, ``C = sum kappa1 w**2 + nu * lam``.

    >>> w = torch.tensor([1.0, 0.0])
    >>> ssgl_sigma(w, torch.zeros(2), torch.ones(2), nu=1.0, lam=1.0)  # 5 s^2 = 2
    tensor(0.6325)
    """
    r_b = (kappa0 * w.abs()).sum(-1)
    r_c = (kappa1 * w * w).sum(-1)
    return _positive_root(*_sigma_coefficients(w.shape[-1], r_b, r_c, nu, lam, rss, num_data, w))


def _sigma_coefficients(
    p: int | Tensor,
    r_b: Tensor,
    ridge: Tensor,
    nu: float,
    lam: float,
    rss: Tensor | float | None,
    num_data: int | None,
    like: Tensor,
) -> tuple[float | Tensor, Tensor, Tensor]:
    if (rss is None) != (num_data is None):
        raise ValueError("give both rss and num_data (regression) or neither (classification)")
    r_c = ridge + nu * lam
    if rss is None:
        return p + nu + 2.0, r_b, r_c
    r_a = check_number(num_data, "num_data", integer=True, low=1) + p + nu
    return r_a, r_b, r_c + torch.as_tensor(rss, dtype=like.dtype, device=like.device)


def ssgl_grad_log_prior(w: Tensor, kappa0: Tensor, kappa1: Tensor, sigma: Tensor | float) -> Tensor:
    """``-kappa1 * w / sigma**2 - kappa0 * sign(w) / sigma`` (0 is used as sign(0))."""
    s = _per_weight(sigma, w)
    return -kappa1 * w / (s * s) - kappa0 * torch.sign(w) / s


def sa_average(old: Tensor, target: Tensor, omega: float) -> Tensor:
    """Stochastic-approximation step ``old + omega * (target - old)``; ``omega = 1`` is EM."""
    return torch.lerp(old, target, omega)


class SSGL:
    """SSGL prior on ``w`` of shape ``(..., p)`` with its stochastic-approximation state.

    Hierarchy: ``w_j ~ (1 - g_j) Laplace(0, sigma v0) + g_j Normal(0, sigma^2 v1)``,
    ``g_j ~ Bernoulli(delta)``, ``delta ~ Beta(a, b)``, ``sigma^2 ~ InvGamma(nu/2, nu lam/2)``.
    The state is the E-step's ``rho`` (and the penalties ``kappa0``, ``kappa1`` it implies)
    and the M-step's ``delta`` and ``sigma``, one per chain. :meth:`update` is one EM
    iteration from the current state at the new weights, averaged in with weight ``omega``.

    Args:
        w: initial weights; fixes shape, dtype and device. ``rho`` starts from them.
        v0, v1, nu, lam, a: hyperparameters (paper defaults); ``b=None`` uses ``p`` (per group).
        delta, sigma: initial inclusion rate and scale.
        groups: sizes of consecutive blocks of the last dimension (e.g. one per layer), each
            with its own inclusion rate ``delta`` (then of shape ``(..., len(groups))``); the
            scale ``sigma`` is shared, as in the SSGL reference code. ``None``: one block.

    >>> prior = SSGL(torch.tensor([[2.0, 0.01, -0.02]]))
    >>> prior.update(torch.tensor([[2.0, 0.01, -0.02]]), omega=1.0)
    >>> inclusion_mask(prior.rho)
    tensor([[ True, False, False]])
    >>> SSGL(torch.zeros(4, 5), groups=[2, 3]).delta.shape  # 4 chains, 2 blocks
    torch.Size([4, 2])
    """

    def __init__(
        self,
        w: Tensor,
        *,
        v0: float = 0.1,
        v1: float = 10.0,
        nu: float = 1.0,
        lam: float = 1.0,
        a: float = 1.0,
        b: float | None = None,
        delta: float = 0.5,
        sigma: float = 1.0,
        groups: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(w, Tensor) or w.dim() == 0 or not w.dtype.is_floating_point:
            raise TypeError("w must be a floating-point tensor of shape (..., p)")
        for name, value in (("v0", v0), ("v1", v1), ("nu", nu), ("lam", lam), ("sigma", sigma)):
            float(check_positive(value, name))
        if a < 1:
            raise ValueError(f"a must be >= 1 so that delta stays non-negative, got {a}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        p = w.shape[-1]
        sizes = (
            [p]
            if groups is None
            else [check_number(g, "groups", integer=True, low=1) for g in groups]
        )
        if sum(sizes) != p:
            raise ValueError(f"groups must sum to the number of weights {p}, got {sizes}")
        self.v0, self.v1, self.nu, self.lam, self.a = v0, v1, nu, lam, a
        self.b = None if b is None else float(check_positive(b, "b"))
        self.groups = None if groups is None else tuple(sizes)
        w = w.detach()
        opts = {"dtype": w.dtype, "device": w.device}
        self._size = torch.tensor(sizes, **opts)
        self._b = self._size if b is None else torch.full_like(self._size, self.b)
        groups_of = torch.arange(len(sizes), device=w.device)
        self._index = (
            None if len(sizes) == 1 else torch.repeat_interleave(groups_of, self._size.long())
        )
        self._delta = torch.full((*w.shape[:-1], len(sizes)), delta, **opts)
        self._sigma = torch.full(w.shape[:-1], sigma, **opts)
        self._rho = self._e_step(w.abs())
        self._refresh()

    @property
    def rho(self) -> Tensor:
        """Posterior inclusion probabilities ``P(g_j = 1 | w_j)``, SA-averaged; shape of ``w``."""
        return self._rho

    @property
    def delta(self) -> Tensor:
        """Inclusion rate per chain ``(...)``, or per chain and group ``(..., groups)``."""
        return self._delta if self.groups is not None else self._delta.squeeze(-1)

    @property
    def sigma(self) -> Tensor:
        """Scale per chain ``(...)``: the noise standard deviation in the regression form."""
        return self._sigma

    @property
    def kappa0(self) -> Tensor:
        """Laplace penalty weights ``(1 - rho) / v0``."""
        return ssgl_penalties(self._rho, self.v0, self.v1)[0]

    @property
    def kappa1(self) -> Tensor:
        """Gaussian penalty weights ``rho / v1``."""
        return ssgl_penalties(self._rho, self.v0, self.v1)[1]

    def _e_step(self, abs_w: Tensor) -> Tensor:
        logit_delta = torch.log(self._delta) - torch.log1p(-self._delta)
        if self._index is not None:
            logit_delta = logit_delta.index_select(-1, self._index)
        sigma = self._sigma.unsqueeze(-1)
        return torch.sigmoid(_inclusion_logit(abs_w, logit_delta, sigma, self.v0, self.v1))

    def _group_sums(self, values: Tensor) -> Tensor:
        if self._index is None:
            return values.sum(-1, keepdim=True)
        out = values.new_zeros((*values.shape[:-1], len(self.groups)))
        return out.index_add_(-1, self._index, values)

    def _refresh(self) -> None:
        """Cache the gradient coefficients ``kappa1 / sigma**2`` and ``kappa0 / sigma``."""
        s = self._sigma.unsqueeze(-1)
        self._ridge = self._rho / (self.v1 * s * s)
        self._lasso = (1.0 - self._rho) / (self.v0 * s)

    def grad_log_prior(self, w: Tensor) -> Tensor:
        """Gradient of the log prior at ``w`` under the current state."""
        return torch.addcmul(self._ridge * w, self._lasso, torch.sign(w)).neg_()

    def update(
        self,
        w: Tensor,
        omega: float,
        *,
        rss: Tensor | float | None = None,
        num_data: int | None = None,
        active: Tensor | None = None,
    ) -> None:
        """SA update at the new weights ``w``; ``rss``/``num_data`` select the regression form.

        Targets are one EM iteration from the current state: ``rho`` from the current ``delta``
        and ``sigma``, then ``kappa``, ``delta`` and ``sigma`` from that ``rho``; every quantity
        then moves by ``omega`` towards its target (``kappa`` is linear in ``rho``, so averaging
        ``rho`` averages it).

        ``active`` (boolean, shape of ``w``) marks the weights still in the model: pruned
        weights get ``rho = 0`` and leave the counts (``p`` in the ``delta`` and ``sigma``
        updates), so pruning 90 % of a layer does not shrink ``sigma`` tenfold.
        """
        if not 0 < omega <= 1:
            raise ValueError(f"omega must be in (0, 1], got {omega}")
        w = w.detach()
        if w.shape != self._rho.shape:
            raise ValueError(f"w must have shape {tuple(self._rho.shape)}, got {tuple(w.shape)}")
        abs_w = w.abs()
        rho = self._e_step(abs_w)
        size, count = self._size, w.shape[-1]
        if active is not None:
            if active.shape != w.shape:
                raise ValueError(f"active must have shape {tuple(w.shape)}")
            abs_w, rho = abs_w * active, rho * active
            size, count = self._group_sums(active.to(w.dtype)), active.sum(-1).to(w.dtype)
        delta = (self._group_sums(rho) + (self.a - 1.0)) / (self.a + self._b + size - 2.0)
        rho_abs = rho * abs_w
        lasso = (abs_w - rho_abs).sum(-1) / self.v0
        ridge = (rho_abs * abs_w).sum(-1) / self.v1
        coefficients = _sigma_coefficients(count, lasso, ridge, self.nu, self.lam, rss, num_data, w)
        sigma = _positive_root(*coefficients)
        self._rho = sa_average(self._rho, rho, omega)
        self._delta = sa_average(self._delta, delta, omega)
        self._sigma = sa_average(self._sigma, sigma, omega)
        self._refresh()

    def sa_hook(
        self,
        omega: Schedule = SSGL_SA_WEIGHTS,
        rss: Callable[[Tensor], Tensor] | None = None,
        num_data: int | None = None,
    ) -> Hook:
        """A :func:`run_sgmcmc` hook running :meth:`update` with weight ``omega(k)``.

        ``rss(w)`` gives the sum of squared residuals per chain (regression form).
        """

        def hook(k: int, w: Params) -> None:
            if not isinstance(w, Tensor):
                raise TypeError("the SSGL hook needs a single flat parameter tensor")
            self.update(w, omega(k), rss=None if rss is None else rss(w), num_data=num_data)

        return hook


# --------------------------------------------------------------------------------------------
# Pruning


def magnitude_mask(w: Tensor, sparsity: float) -> Tensor:
    """Keep-mask zeroing the ``round(sparsity * p)`` smallest ``|w|`` along the last dimension.

    >>> magnitude_mask(torch.tensor([0.5, -0.1, 2.0, 0.05]), 0.5)
    tensor([ True, False,  True, False])
    """
    if not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    num_pruned = round(sparsity * w.shape[-1])
    order = w.abs().argsort(dim=-1, stable=True)
    mask = torch.ones_like(w, dtype=torch.bool)
    return mask.scatter(-1, order[..., :num_pruned], False)


def inclusion_mask(rho: Tensor, threshold: float = 0.5) -> Tensor:
    """Keep-mask ``rho > threshold`` (median-probability model at the default 0.5)."""
    return rho > threshold
