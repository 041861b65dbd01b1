"""The Vadam variants: VOGN (per-example squared gradients) and VadamARD (one learned prior
precision per weight, automatic relevance determination)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from ...validation import (
    check_nonnegative,
    check_positive,
)
from .optimizer import Vadam


class VOGN(Vadam):
    """Variational Online Gauss-Newton: :class:`Vadam` with per-example squared gradients.

    Same arguments as :class:`Vadam`, with ``per_example_grads`` always on: call
    ``opt.step(closure, batch)`` where ``closure(params, *example)`` returns one example's NLL
    (module docstring).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(8, 2, generator=g)
        >>> y = x @ torch.tensor([1.0, -1.0])
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = VOGN([w], num_data=8, lr=0.05, generator=g)
        >>> def nll(params, xi, yi):
        ...     return 0.5 * (yi - xi @ params[0]) ** 2
        >>> loss = opt.step(nll, (x, y))
        >>> opt.posterior_scale()[0].shape
        torch.Size([2])
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], **options: Any) -> None:
        if "per_example_grads" in options:
            raise TypeError("VOGN always uses per-example gradients: drop per_example_grads")
        super().__init__(params, **options, per_example_grads=True)


class VadamARD(Vadam):
    """Vadam with automatic relevance determination: one learned prior precision per weight.

    Each weight ``w_j`` has its own prior ``N(0, 1 / psi_j)`` with ``psi_j ~ Gamma(a0, b0)``.
    After every step the mean-field optimum of ``q(psi_j)`` gives::

        sigma_j**2 = 1 / (N s_j + lam_j)
        lam_j      = E[psi_j] = (a0 + 1/2) / (b0 + (mu_j**2 + sigma_j**2) / 2)

    clamped to ``[psi_min, psi_max]``; ``lam_j`` is the prior precision of the next Vadam step.
    With ``a0 = b0 = 0``, ``lam_j = 1 / (mu_j**2 + sigma_j**2)``. For a weight the data do not
    support, ``mu_j -> 0`` and ``lam_j`` grows by about ``N s_j`` per step until ``psi_max``;
    prune it by its signal-to-noise ratio :meth:`relevance` (``|mu| / sigma``), e.g. keep > 3.
    A capped weight has relevance about ``N s_j |mu_ols| / sqrt(psi_max)``, so raise
    ``psi_max`` for large ``N``.

    ``variant="gamma"`` (the default) is the update above: the learned precision enters the
    posterior, the natural-gradient step and the weight noise, so it is the coordinate-ascent
    optimum of the mean-field ELBO and pruned weights are driven to zero. ``variant="thesis"``
    follows the Julia thesis code as we read it: plain Adam on ``mu`` (the gradient includes the
    prior term ``(lam_j / N) mu_j``, the denominator is ``sqrt(s_hat) + eps``) and
    ``sigma_j = 1 / sqrt(N s_j)`` from Adam's raw second moment ``s`` (floored at ``psi_min`` to
    stay finite), used both for the weight noise and for ``lam_j`` (same formula, same ``a0``,
    ``b0``). There ``sigma_j`` ignores the prior, so ``lam_j`` saturates near ``N s_j`` instead of
    diverging; pruning by relevance still works.

    Args:
        params, num_data, lr, betas, num_particles, eps, per_example_grads, generator: as
            :class:`Vadam` (keywords).
        prior_precision: initial ``lam_j`` for every weight.
        prec_init: initial posterior precision (default ``prior_precision``).
        a0, b0: shape and rate of the Gamma prior on each ``psi_j`` (0, 0: the ARD limit).
        psi_min, psi_max: clamp for ``lam_j``.
        variant: ``"gamma"`` or ``"thesis"``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 3, generator=g)
        >>> y = 2 * x[:, 0] + 0.1 * torch.randn(64, generator=g)
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> opt = VadamARD([w], num_data=64, lr=0.05, per_example_grads=True, generator=g)
        >>> def nll(params, xi, yi):
        ...     return (yi - xi @ params[0]) ** 2 / (2 * 0.1**2)
        >>> for _ in range(300):
        ...     loss = opt.step(nll, (x, y))
        >>> (opt.relevance()[0] > 3).tolist()
        [True, False, False]
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        a0: float = 0.0,
        b0: float = 0.0,
        psi_min: float = 1e-8,
        psi_max: float = 1e8,
        variant: str = "gamma",
        **options: Any,
    ) -> None:
        if variant not in ("gamma", "thesis"):
            raise ValueError(f"variant must be 'gamma' or 'thesis', got {variant!r}")
        self.variant = variant
        self._ard_defaults = {"a0": a0, "b0": b0, "psi_min": psi_min, "psi_max": psi_max}
        super().__init__(params, **options)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; ``a0``, ``b0``, ``psi_min`` and ``psi_max`` may be set per group."""
        for key, value in self._ard_defaults.items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_nonnegative(group["a0"], "a0")
        check_nonnegative(group["b0"], "b0")
        check_positive(group["psi_min"], "psi_min")
        check_positive(group["psi_max"], "psi_max")
        if group["psi_max"] <= group["psi_min"]:
            raise ValueError(
                f"psi_max must exceed psi_min ({group['psi_min']}), got {group['psi_max']!r}"
            )

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = super()._init_state(p, group)
        lam = min(max(group["prior_precision"], group["psi_min"]), group["psi_max"])
        state["prior_precision"] = torch.full_like(p, lam)
        if self.variant == "thesis":
            prec0 = group["prior_precision"] if group["prec_init"] is None else group["prec_init"]
            state["exp_avg_sq"].fill_(prec0 / self.num_data)
        return state

    def _prior_precision(self, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return state["prior_precision"]

    def _posterior_precision(self, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        if self.variant == "thesis":
            return (state["exp_avg_sq"] * self.num_data).clamp_(min=group["psi_min"])
        return super()._posterior_precision(group, state)

    def _preconditioner_shift(self, group: dict[str, Any], state: dict[str, Any]) -> float | Tensor:
        if self.variant == "thesis":
            return 0.0
        return super()._preconditioner_shift(group, state)

    @torch.no_grad()
    def precision(self) -> list[Tensor]:
        """The learned prior precisions ``lam_j = E[psi_j]``, one tensor per parameter.

        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> VadamARD([w], num_data=10, prior_precision=3.0).precision()[0]
        tensor([3., 3.])
        """
        return [self._state(p, group)["prior_precision"].clone() for p, group in self._pairs()]

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[..., Tensor], batch: Sequence[Tensor] | None = None
    ) -> Tensor:
        """A :meth:`Vadam.step`, then the closed-form update of every ``lam_j``."""
        loss = super().step(closure, batch)
        for p, group in self._pairs():
            state = self._state(p, group)
            variance = self._posterior_precision(group, state).reciprocal_()
            rate = (p * p + variance).mul_(0.5).add_(group["b0"])
            lam = (group["a0"] + 0.5) / rate
            state["prior_precision"].copy_(lam.clamp_(group["psi_min"], group["psi_max"]))
        return loss
