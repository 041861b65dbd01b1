"""IVON (Shen et al., ICML 2024) from ``ivon-opt``, and IVON-ARD: one learned prior precision per
weight.

:class:`IVON` is ``ivon.IVON`` (the ``ivon-opt`` package, the authors' implementation) with what a
toolkit optimiser needs on top: arguments checked with errors that name them, the means restored
when an exception escapes a sampled block, the step count in ``state_dict`` (``ivon-opt`` keeps
it outside, so a reloaded optimiser restarted its bias correction) and the per-weight posterior
``N(m, 1 / (ess (h + delta)))`` as :meth:`IVON.posterior_scale` and :meth:`IVON.relevance`.
The update itself is ``ivon-opt``'s, untouched.

One training step, as with ``ivon-opt``: draw weights in a sampled block, backpropagate the mean
minibatch NLL there, then ``step()``. Several sampled blocks before one ``step()`` average their
gradients (Monte Carlo samples); several ``backward()`` calls inside one block accumulate, so
scale each by ``1 / micro-batches`` for gradient accumulation. IVON reads the gradients when the
block closes, so with float16 and a ``GradScaler`` call ``scaler.unscale_(opt)`` inside the block
and ``scaler.step(opt)`` after it. The scaler skips a step whose gradients overflowed; the next
sampled block drops that step's samples (``ivon-opt`` would average the infinities into the
next step).

>>> import torch
>>> net = torch.nn.Linear(3, 1)
>>> opt = IVON(net.parameters(), lr=0.1, ess=100)
>>> x, y = torch.randn(16, 3), torch.randn(16, 1)
>>> with opt.sampled_params(train=True):
...     opt.zero_grad()
...     torch.nn.functional.mse_loss(net(x), y).backward()
>>> opt.step()
>>> [s.shape for s in opt.posterior_scale()]
[torch.Size([1, 3]), torch.Size([1])]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import ivon
import torch
from torch import Tensor

from ...validation import check_choice, check_nonnegative, check_number, check_positive


def _groups(params: Iterable[Any]) -> list[Any]:
    """The parameter groups of ``params`` (tensors make one group)."""
    params = list(params)
    return params if params and isinstance(params[0], dict) else [params]


def _check_options(options: dict[str, Any]) -> None:
    check_nonnegative(options["lr"], "lr")
    check_positive(options["ess"], "ess")
    check_positive(options["hess_init"], "hess_init")
    for name in ("beta1", "beta2"):
        check_number(options[name], name, low=0.0, high=1.0)
    check_nonnegative(options["weight_decay"], "weight_decay")
    check_positive(options["mc_samples"], "mc_samples", integer=True)
    check_choice(options["hess_approx"], "hess_approx", ivon.IVON.hessian_approx_methods)
    if options["clip_radius"] != math.inf:
        check_positive(options["clip_radius"], "clip_radius")


class IVON(ivon.IVON):
    """Improved Variational Online Newton: ``ivon.IVON`` with checks, safe sampled blocks and a
    complete ``state_dict`` (module docstring).

    Each weight's posterior is ``N(m, 1 / (ess (h + weight_decay)))``: ``ess`` is the data size
    (divide it by a tempering factor to weigh the prior more), ``weight_decay`` the Gaussian
    prior's precision divided by ``ess`` and ``h`` the running Hessian estimate, started at
    ``hess_init``. Arguments as ``ivon.IVON``; all keywords but ``params``.

    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> IVON([w], lr=0.1, ess=10, hess_init=1.5, weight_decay=0.1).posterior_scale()[0]
    tensor([0.2500, 0.2500])
    >>> IVON([w], lr=0.1, ess=-1)
    Traceback (most recent call last):
    ValueError: ess must be positive, got -1
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99999,
        weight_decay: float = 1e-4,
        mc_samples: int = 1,
        hess_approx: str = "price",
        clip_radius: float = math.inf,
        sync: bool = False,
        debias: bool = True,
        rescale_lr: bool = True,
    ) -> None:
        options = {
            "lr": lr,
            "ess": ess,
            "hess_init": hess_init,
            "beta1": beta1,
            "beta2": beta2,
            "weight_decay": weight_decay,
            "mc_samples": mc_samples,
            "hess_approx": hess_approx,
            "clip_radius": clip_radius,
        }
        _check_options(options)
        params = [  # groups' tensor iterables listed once, so that checking them keeps them
            {**g, "params": [g["params"]] if isinstance(g["params"], Tensor) else list(g["params"])}
            if isinstance(g, dict)
            else g
            for g in params
        ]
        if not params:
            raise ValueError("params must not be empty")
        for group in _groups(params):
            for p in group["params"] if isinstance(group, dict) else group:
                if not isinstance(p, Tensor) or not p.dtype.is_floating_point:
                    raise TypeError(f"params must be floating-point tensors, got {p!r:.60}")
        super().__init__(params, **options, sync=sync, debias=debias, rescale_lr=rescale_lr)

    @contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[None]:
        """Within the block every parameter holds one posterior draw; the means return after,
        also when an exception escapes (then no gradient is recorded). With ``train=True`` the
        block's gradients (in ``.grad``) feed the next :meth:`step`. Samples left by a step
        that a ``GradScaler`` skipped for overflow (non-finite gradients) are dropped first."""
        if self.state["count"] and not bool(torch.isfinite(self.state["avg_grad"]).all()):
            self._reset_samples()
        means, noise = self._sample_params()
        try:
            yield
        except BaseException:
            self._restore_param_average(False, means, noise)
            raise
        self._restore_param_average(train, means, noise)

    def _nothing_to_update(self, closure: Any) -> bool:
        return closure is None and self.state["count"] == 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:  # type: ignore[override]
        """``ivon.IVON.step``; without a sample since the last step it changes nothing."""
        if self._nothing_to_update(closure):
            return None
        return super().step(closure)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict`` plus the step count (bias correction)."""
        return {**super().state_dict(), "current_step": self.current_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`, step count included."""
        state_dict = dict(state_dict)
        step = state_dict.pop("current_step", 0)
        super().load_state_dict(state_dict)
        self.current_step = step

    # -- the posterior --------------------------------------------------------------------------

    def _per_param(self, flat: Iterator[tuple[dict[str, Any], Tensor]]) -> list[Tensor]:
        out = []
        for group, values in flat:
            offset = 0
            for p in group["params"]:
                out.append(values[offset : offset + p.numel()].view_as(p).clone())
                offset += p.numel()
        return out

    @torch.no_grad()
    def posterior_scale(self) -> list[Tensor]:
        """Posterior standard deviations ``1 / sqrt(ess (h + weight_decay))``, one tensor per
        parameter in the order of ``param_groups``."""
        return self._per_param(
            (g, (g["ess"] * (g["hess"] + g["weight_decay"])).rsqrt()) for g in self.param_groups
        )

    @torch.no_grad()
    def relevance(self) -> list[Tensor]:
        """Signal-to-noise ratios ``|m| / sigma``, one tensor per parameter."""
        params = [p for g in self.param_groups for p in g["params"]]
        return [p.detach().abs() / s for p, s in zip(params, self.posterior_scale(), strict=True)]


class IVONARD(IVON):
    """IVON with automatic relevance determination: one prior precision ``psi_j`` per weight.

    Each weight has the prior ``N(0, 1 / psi_j)`` with ``psi_j ~ Gamma(a0, b0)``. After every
    :meth:`step` the mean-field optimum of ``q(psi_j)`` is recomputed in closed form from IVON's
    posterior (the update of VADAM-ARD, on IVON's Hessian estimate)::

        sigma_j**2 = 1 / (ess (h_j + delta_j))
        psi_j      = E[psi_j] = (a0 + 1/2) / (b0 + (m_j**2 + sigma_j**2) / 2)
        delta_j    = psi_j / ess

    clamped to ``[psi_min, psi_max]``; ``delta_j`` is the weight decay of the next step (a tensor
    per parameter group). IVON keeps ``h + delta`` positive but lets ``h`` go negative; since
    ``delta`` now changes between steps, ``h`` is floored at 0 after each update. Each group's
    ``lr`` becomes ``lr (hess_init + delta_0)`` with its initial ``delta_0 = prior_precision /
    ess``, fixed from then on: ``ivon-opt`` would rescale the step by each weight's current
    ``delta_j``, which diverges once ``lr delta_j > 2``. Prune by :meth:`relevance`.

    Args:
        params, lr, ess, options: as :class:`IVON` (keywords; no ``weight_decay`` or
            ``rescale_lr``).
        prior_precision: initial ``psi_j`` for every weight; a parameter group may set its own.
        a0, b0: shape and rate of the Gamma prior on each ``psi_j`` (0, 0: the ARD limit).
        psi_min, psi_max: clamp for ``psi_j``.
        warmup_steps: plain IVON steps (``psi_j`` held at ``prior_precision``) before the
            first update. Started from a random network, an over-parameterised net's weights
            all look irrelevant and are pruned together; a warm-up lets the data speak first.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 3, generator=g)
    >>> y = 2 * x[:, :1] + 0.1 * torch.randn(200, 1, generator=g)
    >>> _ = torch.manual_seed(0)  # the initial weights and IVON's weight noise
    >>> net = torch.nn.Linear(3, 1, bias=False)
    >>> opt = IVONARD(net.parameters(), lr=0.1, ess=200 * 100, beta2=0.99)  # 1 / noise var = 100
    >>> for _ in range(500):
    ...     with opt.sampled_params(train=True):
    ...         opt.zero_grad()
    ...         (0.5 * (net(x) - y).pow(2).mean()).backward()
    ...     opt.step()
    >>> (opt.relevance()[0] > 3).tolist()
    [[True, False, False]]
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float,
        ess: float,
        prior_precision: float = 1.0,
        a0: float = 0.0,
        b0: float = 0.0,
        psi_min: float = 1e-8,
        psi_max: float = 1e8,
        warmup_steps: int = 0,
        **options: Any,
    ) -> None:
        for name in ("weight_decay", "rescale_lr"):
            if name in options:
                raise TypeError(f"IVONARD learns its weight decay: drop {name}")
        check_nonnegative(a0, "a0")
        check_nonnegative(b0, "b0")
        check_positive(psi_min, "psi_min")
        check_positive(psi_max, "psi_max")
        if psi_max <= psi_min:
            raise ValueError(f"psi_max must exceed psi_min ({psi_min}), got {psi_max!r}")
        check_nonnegative(warmup_steps, "warmup_steps", integer=True)
        params = [
            dict(group) if isinstance(group, dict) else {"params": group}
            for group in _groups(params)
        ]
        for group in params:
            check_positive(group.setdefault("prior_precision", prior_precision), "prior_precision")
        super().__init__(params, lr=lr, ess=ess, weight_decay=0.0, rescale_lr=False, **options)
        self.ard = {"a0": a0, "b0": b0, "psi_min": psi_min, "psi_max": psi_max}
        self.warmup_steps = warmup_steps
        for group in self.param_groups:
            delta = group["prior_precision"] / group["ess"]
            group["lr"] *= group["hess_init"] + delta
            group["weight_decay"] = group["hess"].new_full(group["hess"].shape, delta)

    @torch.no_grad()
    def precision(self) -> list[Tensor]:
        """The learned prior precisions ``psi_j = ess delta_j``, one tensor per parameter."""
        return self._per_param((g, g["ess"] * g["weight_decay"]) for g in self.param_groups)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:  # type: ignore[override]
        """An IVON step, then (after ``warmup_steps``) the closed-form update of every
        ``psi_j``."""
        if self._nothing_to_update(closure):
            return None
        loss = super().step(closure)
        if self.current_step <= self.warmup_steps:
            return loss
        a0, b0 = self.ard["a0"], self.ard["b0"]
        for group in self.param_groups:
            ess, delta = group["ess"], group["weight_decay"]
            mean = torch.cat([p.detach().reshape(-1) for p in group["params"]])
            variance = (ess * (group["hess"] + delta)).reciprocal()
            psi = (a0 + 0.5) / (b0 + 0.5 * (mean * mean + variance))
            group["weight_decay"] = psi.clamp_(self.ard["psi_min"], self.ard["psi_max"]) / ess
            # IVON keeps h + delta > 0, not h > 0: a smaller new delta could flip the sign
            group["hess"] = group["hess"].clamp(min=0.0)
        return loss
