"""The spike-and-slab Gaussian-Laplace (SSGL) prior, its stochastic-approximation updates and
the pruning masks of the SSGL samplers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ...validation import (
    check_number,
    check_positive,
)
from .kernels import SSGL_SA_WEIGHTS, Hook, Params, Schedule

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
        denominator = self.a + self._b + size - 2.0
        delta = (self._group_sums(rho) + (self.a - 1.0)) / denominator.clamp_min(1e-12)
        delta = torch.where(size > 0, delta, self._delta)  # a group pruned whole keeps its rate
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
