"""Stan's NUTS warm-up: the adaptation windows, dual averaging of the step size and Welford
estimates of the inverse mass matrix."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def adaptation_windows(num_warmup: int) -> list[tuple[int, int]]:
    """Stan's warm-up schedule: inclusive ``(start, end)`` iteration windows.

    The first window (a buffer) and the last (the end buffer) adapt only the step size; the
    windows between them, each twice as long as the one before, also estimate the mass matrix.

    >>> adaptation_windows(500)
    [(0, 74), (75, 99), (100, 149), (150, 249), (250, 449), (450, 499)]
    >>> adaptation_windows(10)
    [(0, 9)]
    """
    if num_warmup < 20:
        return [(0, num_warmup - 1)] if num_warmup else []
    start, end, first = 75, 50, 25
    if start + end + first > num_warmup:
        start, end = int(0.15 * num_warmup), int(0.1 * num_warmup)
        first = num_warmup - start - end
    windows = [(0, start - 1)]
    end_start, begin, size = num_warmup - end, start, first
    while begin < end_start:
        current = size
        if 3 * current <= end_start - begin:
            size = 2 * current
        else:
            current = end_start - begin
        windows.append((begin, begin + current - 1))
        begin += current
    windows.append((end_start, num_warmup - 1))
    return windows


class DualAveraging:
    """Nesterov dual averaging of ``log(step_size)``, one scheme per chain (Hoffman & Gelman)."""

    def __init__(
        self, step_size: Tensor, t0: float = 10.0, kappa: float = 0.75, gamma: float = 0.05
    ) -> None:
        self.t0, self.kappa, self.gamma = t0, kappa, gamma
        self.reset(step_size)

    def reset(self, step_size: Tensor) -> None:
        """Restart with the prox-centre ``log(10 * step_size)``."""
        self.center = torch.log(10 * step_size.double())
        self.t = 0
        self.g_avg = torch.zeros_like(self.center)
        self.x_avg = torch.zeros_like(self.center)
        self.x = torch.log(step_size.double())

    def step(self, accept_prob: Tensor, target: float) -> Tensor:
        """Update with the mean acceptance statistic; returns the next step size per chain."""
        self.t += 1
        weight = 1.0 / (self.t + self.t0)
        self.g_avg = (1 - weight) * self.g_avg + weight * (target - accept_prob.double())
        self.x = self.center - math.sqrt(self.t) / self.gamma * self.g_avg
        eta = self.t ** (-self.kappa)
        self.x_avg = (1 - eta) * self.x_avg + eta * self.x
        return self.x.exp()

    def final(self) -> Tensor:
        """The averaged step size used after warm-up."""
        return self.x_avg.exp()

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("center", "t", "g_avg", "x_avg", "x")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class Welford:
    """Running mean and (co)variance of each chain's draws ``(C, D)``."""

    def __init__(self, num_chains: int, dim: int, dense: bool, like: Tensor) -> None:
        self.dense = dense
        self.n = 0
        self.mean = like.new_zeros(num_chains, dim)
        shape = (num_chains, dim, dim) if dense else (num_chains, dim)
        self.m2 = like.new_zeros(shape)

    def update(self, z: Tensor) -> None:
        self.n += 1
        delta = z - self.mean
        self.mean = self.mean + delta / self.n
        after = z - self.mean
        self.m2 = self.m2 + (delta[:, :, None] * after[:, None, :] if self.dense else delta * after)

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.mean, self.m2 = state["n"], state["mean"], state["m2"]

    def covariance(self) -> Tensor:
        """Stan's regularised estimate ``n/(n+5) cov + 1e-3 * 5/(n+5) I``."""
        n = self.n
        cov = self.m2 / (n - 1) * (n / (n + 5.0))
        shrink = 1e-3 * 5.0 / (n + 5.0)
        if self.dense:
            return cov + shrink * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return cov + shrink
