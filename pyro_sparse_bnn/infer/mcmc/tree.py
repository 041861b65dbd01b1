"""The pieces of a NUTS trajectory for a batch of chains: subtrees, kinetic energy, the
generalised U-turn check and per-chain selection.

>>> import torch
>>> _kinetic(torch.ones(1, 2), torch.tensor([[1.0, 2.0]]))  # r^T M^-1 r / 2, one chain
tensor([2.5000])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

MAX_ENERGY_ERROR = 1000.0


"""A leaf whose energy exceeds the starting energy by more than this diverges (as in Pyro, Stan)."""


_DIRECTION_THRESHOLD = math.log(0.8)


class Subtree(NamedTuple):
    """State of the subtree being grown, per chain (``C`` leading).

    The edge (``z``, ``r``, ``grad``, ``pe``), the weight and the momentum sum matter only for
    chains that finish the subtree without stopping, so they are updated unmasked; the statistics
    and the stop flags only count leaves of chains that were still active.
    """

    z: Tensor
    r: Tensor
    grad: Tensor
    pe: Tensor
    log_weight: Tensor
    r_sum: Tensor
    prop_z: Tensor
    prop_r: Tensor
    prop_grad: Tensor
    prop_pe: Tensor
    accept_sum: Tensor
    num_leaves: Tensor
    active: Tensor
    turning: Tensor
    diverging: Tensor


def _velocity(inverse_mass: Tensor, r: Tensor) -> Tensor:
    """``M^-1 r`` for each chain; ``r`` may carry extra leading dims before the chain dim."""
    if inverse_mass.dim() == 2:
        return inverse_mass * r
    return torch.einsum("cij,...cj->...ci", inverse_mass, r)


def _kinetic(inverse_mass: Tensor, r: Tensor) -> Tensor:
    return 0.5 * (r * _velocity(inverse_mass, r)).sum(-1)


def _momentum_factor(inverse_mass: Tensor) -> Tensor:
    """``S`` with ``S S^T = M``: momenta ``S eps`` with ``eps ~ N(0, I)`` have covariance ``M``."""
    if inverse_mass.dim() == 2:
        return inverse_mass.rsqrt()
    lower = torch.linalg.cholesky(inverse_mass)
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device).expand_as(lower)
    return torch.linalg.solve_triangular(lower.mT, eye, upper=True)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _is_turning(inverse_mass: Tensor, r_left: Tensor, r_right: Tensor, r_sum: Tensor) -> Tensor:
    """Generalised U-turn criterion with the end points' half-weights removed from ``r_sum``."""
    rho = r_sum - 0.5 * (r_left + r_right)
    left = (_velocity(inverse_mass, r_left) * rho).sum(-1)
    right = (_velocity(inverse_mass, r_right) * rho).sum(-1)
    return (left <= 0) | (right <= 0)


def _select(mask: Tensor, new: tuple[Tensor, ...], old: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Per chain, ``new`` where ``mask`` else ``old``, for tuples of ``(C,)``/``(C, D)`` tensors."""
    col = mask[:, None]
    return tuple(
        torch.where(col if a.dim() > 1 else mask, a, b) for a, b in zip(new, old, strict=True)
    )
