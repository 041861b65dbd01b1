"""The scale-mixture template every prior builds on: ``w | s ~ Normal(0, s)``, centred or not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from torch import Tensor, nn

from ..validation import check_positive

__all__ = ["WEIGHT_TAG", "Groups", "Prior", "weight_deterministic"]

Groups = Literal["in", "out"] | None

WEIGHT_TAG = "psb_weight"
"""Key in a site's ``infer`` dict that marks it as a prunable weight for masks and compression."""


def weight_deterministic(name: str, value: Tensor, event_dim: int) -> Tensor:
    """``pyro.deterministic`` for a weight, tagged with :data:`WEIGHT_TAG`."""
    delta = dist.Delta(value, event_dim=event_dim).mask(False)
    return pyro.sample(name, delta, obs=value, infer={"_deterministic": True, WEIGHT_TAG: True})


def _positive(name: str, value: float) -> float:
    return float(check_positive(value, name))


def _right_pad(t: Tensor, ndim: int) -> Tensor:
    """Append ``ndim`` singleton dims so a per-draw scalar broadcasts against an event tensor."""
    return t.reshape(t.shape + (1,) * ndim)


class Prior(nn.Module):
    """Base class: a Gaussian scale mixture ``w | s ~ Normal(0, s)``.

    Subclasses implement :meth:`mixing_scale`, which emits the hierarchical sites and returns the
    standard deviation ``s`` (the group shape, plus any batch dims from enclosing plates).
    Hyperparameters are buffers, so ``prior.to(device)`` moves them.
    """

    def __init__(self, *, groups: Groups = None, centered: bool = False) -> None:
        super().__init__()
        if groups not in (None, "in", "out"):
            raise ValueError(f"groups must be None, 'in' or 'out', got {groups!r}")
        if not isinstance(centered, bool):
            raise TypeError(f"centered must be a bool, got {type(centered).__name__}")
        self.groups = groups
        self.centered = centered
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def group_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the mixing variables for a weight of ``shape`` (broadcastable to it)."""
        if self.groups is None or len(shape) < 2:
            return shape
        dim = 1 if self.groups == "in" else 0
        return tuple(n if i == dim else 1 for i, n in enumerate(shape))

    def _const(self, value: float | Tensor) -> Tensor:
        return torch.as_tensor(value, dtype=self._zero.dtype, device=self._zero.device)

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """Emit the mixing sites of weight ``name`` and return its prior standard deviation."""
        raise NotImplementedError

    def sample(self, name: str, shape: Sequence[int]) -> Tensor:
        """Emit the hierarchy for a weight tensor ``name`` of ``shape`` and return the weight.

        >>> import pyro
        >>> from pyro_sparse_bnn.priors import Laplace
        >>> w = pyro.poutine.trace(lambda: Laplace(0.5).sample("w", (4,))).get_trace()
        >>> sorted(w.stochastic_nodes)  # non-centred: w = w_decentered * sqrt(w_variance)
        ['w_decentered', 'w_variance']
        """
        shape = _check_shape(shape)
        scale = self.mixing_scale(name, shape)
        event = len(shape)
        batch_shape = torch.broadcast_shapes(scale.shape, shape)
        if self.centered:
            normal = dist.Normal(self._zero, scale).expand(batch_shape).to_event(event)
            return pyro.sample(name, normal, infer={WEIGHT_TAG: True})
        std = dist.Normal(self._zero, self._zero + 1).expand(shape).to_event(event)
        z = pyro.sample(f"{name}_decentered", std)
        return weight_deterministic(name, z * scale, event)

    def init_values(self, name: str, weight: Tensor) -> dict[str, Tensor]:
        """Site values that start a guide at ``weight``: the weight itself when centred, else the
        decentred draw ``weight / s`` (clipped to [-1, 1]) with the mixing scale ``s`` at its prior
        median. The clip keeps the start inside the prior's bulk: a weight that starts far out
        with the wrong sign can get trapped at zero by a strongly shrinking prior.

        >>> from pyro_sparse_bnn.priors import Horseshoe, Normal
        >>> w = torch.ones(2)
        >>> list(Horseshoe().init_values("w", w)), list(Normal().init_values("w", w))
        (['w_decentered'], ['w'])
        """
        if self.centered:
            return {name: weight}
        with poutine.block(), InitMessenger(init_to_median(num_samples=31)):
            scale = self.mixing_scale(name, tuple(weight.shape))
        return {f"{name}_decentered": (weight / scale).clamp(-1.0, 1.0)}

    def extra_repr(self) -> str:
        return f"groups={self.groups!r}, centered={self.centered}"


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ValueError(f"shape must contain positive ints, got {shape!r}")
    return shape


def _mixing_site(name: str, d: dist.TorchDistribution, shape: tuple[int, ...]) -> Tensor:
    return pyro.sample(name, d.expand(shape).to_event(len(shape)))
