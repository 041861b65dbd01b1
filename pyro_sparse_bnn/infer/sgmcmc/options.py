"""The options of ``fit_sgmcmc`` that only make sense together, as small checked objects.

* :class:`SSGLPrior` - the spike-and-slab group lasso prior on the weight sites, its
  hyperparameters, its SA or EM update and the noise site it drives;
* :class:`MagnitudePruning` - the seed's schedule that zeroes a growing fraction of the smallest
  weights;
* :class:`InclusionPruning` - zero, from the end of warm-up, the weights no chain includes
  (needs an :class:`SSGLPrior`).

Each checks its values when built, so a bad combination fails before any sampling.

>>> SSGLPrior(update="em", v0=0.05).hyperparameters()["v0"]
0.05
>>> SSGLPrior(update="em", sa_weights=0.1)
Traceback (most recent call last):
ValueError: sa_weights belong to update='sa' (EM updates with weight 1)
>>> MagnitudePruning(sparsity=0.8).period_for(warmup=100) > 0
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ...validation import check_choice, check_number, check_positive
from .kernels import EM_WEIGHTS, SSGL_SA_WEIGHTS, as_schedule

__all__ = ["InclusionPruning", "MagnitudePruning", "SSGLPrior"]

Schedule = Callable[[int], float]
UPDATES = ("sa", "em")


@dataclass(frozen=True)
class SSGLPrior:
    """The SSGL prior on the weight sites (Deng et al. 2019), adapted while the chains run.

    Args:
        update: ``"sa"`` (stochastic approximation with weights ``sa_weights``, default
            ``min(0.1, 1000 / (100 + k) ** 0.7)``) or ``"em"`` (weight 1).
        v0, v1: spike and slab Laplace scales; ``nu``, ``lam``: the inverse-gamma prior of
            ``sigma``; ``a``, ``b``: the beta prior of the inclusion rate ``delta`` (``b``
            default: the number of weights of each site); ``delta``, ``sigma``: starting values.
        noise_site: the latent site of the Gaussian noise standard deviation, set to ``sigma``
            (the regression form); ``"auto"`` picks ``"noise"`` when the model has it and a
            Normal observation model; ``None`` is the classification form.
    """

    update: str = "sa"
    sa_weights: float | Schedule | None = None
    v0: float = 0.1
    v1: float = 10.0
    nu: float = 1.0
    lam: float = 1.0
    a: float = 1.0
    b: float | None = None
    delta: float = 0.5
    sigma: float = 1.0
    noise_site: str | None = "auto"

    def __post_init__(self) -> None:
        check_choice(self.update, "update", UPDATES)
        if self.sa_weights is not None:
            if self.update != "sa":
                raise ValueError("sa_weights belong to update='sa' (EM updates with weight 1)")
            as_schedule(self.sa_weights, "sa_weights")
        for name in ("v0", "v1", "nu", "lam", "a", "sigma"):
            check_positive(getattr(self, name), name)
        if self.b is not None:
            check_positive(self.b, "b")
        check_number(self.delta, "delta", low=0, high=1, low_open=True, high_open=True)
        if self.noise_site is not None and not isinstance(self.noise_site, str):
            raise TypeError(
                f"noise_site must be a site name, 'auto' or None, got {self.noise_site!r}"
            )

    def weights(self) -> Schedule:
        """The weight ``omega_k`` of update ``k``."""
        if self.sa_weights is not None:
            return as_schedule(self.sa_weights, "sa_weights")
        return SSGL_SA_WEIGHTS if self.update == "sa" else EM_WEIGHTS

    def hyperparameters(self) -> dict[str, float]:
        """The keyword arguments of :class:`~pyro_sparse_bnn.infer.sgmcmc.SSGL`."""
        fields = asdict(self)
        return {k: fields[k] for k in ("v0", "v1", "nu", "lam", "a", "b", "delta", "sigma")}


@dataclass(frozen=True)
class MagnitudePruning:
    """Zero the ``s_k`` smallest weights of each weight site (per chain), where
    ``s_k = sparsity * (1 - damping ** (k / period))`` is refreshed every ``every`` iterations;
    the default ``period`` makes ``s_k`` reach 99 % of ``sparsity`` at the end of warm-up."""

    sparsity: float = 0.9
    damping: float = 0.99
    period: float | None = None
    every: int = 10

    def __post_init__(self) -> None:
        check_number(self.sparsity, "sparsity", low=0.0, high=1.0, high_open=True)
        check_number(self.damping, "damping", low=0, high=1, low_open=True, high_open=True)
        if self.period is not None:
            check_positive(self.period, "period")
        check_number(self.every, "every", integer=True, low=1)

    def period_for(self, warmup: int) -> float:
        """``period``, or the one that brings ``s_k`` to 99 % of ``sparsity`` at ``warmup``."""
        if self.period is not None:
            return self.period
        return max(warmup, 1) * math.log(self.damping) / math.log(0.01)


@dataclass(frozen=True)
class InclusionPruning:
    """From the end of warm-up, zero in every chain the weights whose SSGL inclusion
    probability ``rho`` is at most ``threshold`` in every chain (a weight any chain includes
    stays), unless their inclusion is undecided: in the regression form a weight whose late
    warm-up states stay away from zero (``|mean| > sd``) stays; in the classification form as
    many stay as keep the PSIS-LOO predictive of the last quarter of warm-up within the default
    budget of ``FitResult.masks``."""

    threshold: float = 0.5

    def __post_init__(self) -> None:
        check_number(self.threshold, "threshold", low=0.0, high=1.0, high_open=True)
