"""Proper shrinkage priors: Normal, Laplace, Student-t, ARD, horseshoes and spike-and-slab."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ..validation import check_number
from .base import Centring, Groups, Prior, _positive, _right_pad

__all__ = [
    "ARD",
    "Horseshoe",
    "Laplace",
    "Normal",
    "RegularizedHorseshoe",
    "SpikeAndSlab",
    "StudentT",
]


class Normal(Prior):
    """Fixed-scale Gaussian prior ``w ~ Normal(0, scale)``: the non-sparse baseline.

    >>> Normal(2.0).mixing_scale("w", (3,)).tolist()
    [2.0, 2.0, 2.0]
    """

    learns_centring = False

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(centered=True)
        self.register_buffer("scale", torch.tensor(_positive("scale", scale)))

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        return self.scale.expand(shape)

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():g}"


class Laplace(Prior):
    """Bayesian-lasso prior: ``s^2 ~ Exponential(1 / (2 scale^2))`` gives ``w ~ Laplace(0, scale)``.

    >>> Laplace(0.5)
    Laplace(scale=0.5, groups=None, centered=False)
    """

    def __init__(self, scale: float = 1.0, *, groups: Groups = None, centered: Centring = False):
        super().__init__(groups=groups, centered=centered)
        self.register_buffer("scale", torch.tensor(_positive("scale", scale)))

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        rate = 0.5 / self.scale**2
        variance = self._group_site(name, "variance", dist.Exponential(rate), shape)
        return variance.sqrt()

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():g}, " + super().extra_repr()


class StudentT(Prior):
    """Student-t prior: ``s^2 ~ InverseGamma(df/2, df scale^2/2)`` gives ``w ~ scale * t(df)``.

    >>> StudentT(df=3.0, scale=0.1).df.item()
    3.0
    """

    def __init__(
        self,
        df: float = 1.0,
        scale: float = 1.0,
        *,
        groups: Groups = None,
        centered: Centring = False,
    ) -> None:
        super().__init__(groups=groups, centered=centered)
        self.register_buffer("df", torch.tensor(_positive("df", df)))
        self.register_buffer("scale", torch.tensor(_positive("scale", scale)))

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        law = dist.InverseGamma(self.df / 2, self.df * self.scale**2 / 2)
        return self._group_site(name, "variance", law, shape).sqrt()

    def extra_repr(self) -> str:
        return f"df={self.df.item():g}, scale={self.scale.item():g}, " + super().extra_repr()


class ARD(Prior):
    """Automatic relevance determination: precision ``psi ~ Gamma(a0, b0)``, ``w ~ N(0, 1/psi)``.

    The marginal is a Student-t with ``2 a0`` degrees of freedom and scale ``sqrt(b0 / a0)``.

    >>> ARD(a0=1.0, b0=1.0).sample("w", (2,)).shape
    torch.Size([2])
    """

    def __init__(
        self, a0: float = 1.0, b0: float = 1.0, *, groups: Groups = None, centered: Centring = False
    ) -> None:
        super().__init__(groups=groups, centered=centered)
        self.register_buffer("a0", torch.tensor(_positive("a0", a0)))
        self.register_buffer("b0", torch.tensor(_positive("b0", b0)))

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        law = dist.Gamma(self.a0, self.b0)
        return self._group_site(name, "precision", law, shape).rsqrt()

    def extra_repr(self) -> str:
        return f"a0={self.a0.item():g}, b0={self.b0.item():g}, " + super().extra_repr()


class Horseshoe(Prior):
    """Horseshoe: ``lambda ~ HalfCauchy(1)`` per weight or group, global ``tau ~ HalfCauchy(tau0)``.

    ``tau0`` is ``global_scale``; Piironen & Vehtari suggest ``p0 / (D - p0) * sigma / sqrt(n)`` for
    ``p0`` expected relevant weights out of ``D``. The default 1 shrinks little: it is a
    placeholder, not a tuned value (the demo's networks use 0.1; a sparse regression should use
    the formula, which SVI with the default KL warm-up and NUTS both handle).

    >>> Horseshoe(global_scale=0.1).global_scale.item()
    0.10000000149011612
    """

    def __init__(
        self, global_scale: float = 1.0, *, groups: Groups = None, centered: Centring = False
    ) -> None:
        super().__init__(groups=groups, centered=centered)
        self.register_buffer("global_scale", torch.tensor(_positive("global_scale", global_scale)))

    def _local_and_global(self, name: str, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        tau = pyro.sample(f"{name}_global_scale", dist.HalfCauchy(self.global_scale))
        local = self._group_site(name, "local_scale", dist.HalfCauchy(self._const(1.0)), shape)
        return local, _right_pad(tau, len(shape))

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        local, tau = self._local_and_global(name, shape)
        return local * tau

    def extra_repr(self) -> str:
        return f"global_scale={self.global_scale.item():g}, " + super().extra_repr()


class RegularizedHorseshoe(Horseshoe):
    """Piironen & Vehtari's slab-limited horseshoe.

    ``lambda_tilde^2 = c^2 lambda^2 / (c^2 + tau^2 lambda^2)`` with the slab variance
    ``c^2 ~ InverseGamma(slab_df / 2, slab_df * slab_scale^2 / 2)``; ``w ~ N(0, tau lambda_tilde)``.
    Far from zero the prior behaves like ``Normal(0, c)``, which keeps large weights finite.

    >>> RegularizedHorseshoe(global_scale=0.1).slab_df.item()
    4.0
    """

    def __init__(
        self,
        global_scale: float = 1.0,
        slab_df: float = 4.0,
        slab_scale: float = 2.0,
        *,
        groups: Groups = None,
        centered: Centring = False,
    ) -> None:
        super().__init__(global_scale, groups=groups, centered=centered)
        self.register_buffer("slab_df", torch.tensor(_positive("slab_df", slab_df)))
        self.register_buffer("slab_scale", torch.tensor(_positive("slab_scale", slab_scale)))

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        law = dist.InverseGamma(self.slab_df / 2, self.slab_df * self.slab_scale**2 / 2)
        c2 = _right_pad(pyro.sample(f"{name}_slab_variance", law), len(shape))
        local, tau = self._local_and_global(name, shape)
        lam2 = local**2
        return tau * (c2 * lam2 / (c2 + tau**2 * lam2)).sqrt()

    def extra_repr(self) -> str:
        return (
            f"slab_df={self.slab_df.item():g}, slab_scale={self.slab_scale.item():g}, "
            + super().extra_repr()
        )


class SpikeAndSlab(Prior):
    """Continuous spike-and-slab: ``w ~ N(0, spike + g (slab - spike))`` with a relaxed gate ``g``.

    The gate ``g ~ RelaxedBernoulli(temperature, probs=inclusion_prob)`` (binary Concrete) is
    reparameterisable, so SVI can differentiate through it; as ``temperature -> 0`` the marginal
    tends to ``(1 - pi) N(0, spike) + pi N(0, slab)``.

    >>> SpikeAndSlab(inclusion_prob=0.2).inclusion_prob.item()
    0.20000000298023224
    """

    def __init__(
        self,
        inclusion_prob: float = 0.5,
        spike_scale: float = 0.01,
        slab_scale: float = 1.0,
        temperature: float = 0.1,
        *,
        groups: Groups = None,
        centered: Centring = False,
    ) -> None:
        super().__init__(groups=groups, centered=centered)
        inclusion_prob = check_number(
            inclusion_prob, "inclusion_prob", low=0, high=1, low_open=True, high_open=True
        )
        spike, slab = _positive("spike_scale", spike_scale), _positive("slab_scale", slab_scale)
        if spike >= slab:
            raise ValueError(f"spike_scale ({spike}) must be smaller than slab_scale ({slab})")
        self.register_buffer("inclusion_prob", torch.tensor(float(inclusion_prob)))
        self.register_buffer("spike_scale", torch.tensor(spike))
        self.register_buffer("slab_scale", torch.tensor(slab))
        self.register_buffer("temperature", torch.tensor(_positive("temperature", temperature)))

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        law = dist.RelaxedBernoulli(self.temperature, probs=self.inclusion_prob)
        gate = self._group_site(name, "gate", law, shape)
        return self.spike_scale + gate * (self.slab_scale - self.spike_scale)

    def extra_repr(self) -> str:
        return f"inclusion_prob={self.inclusion_prob.item():g}, " + super().extra_repr()
