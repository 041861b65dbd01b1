"""``fit``: one entry point that dispatches to each inference method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..isolation import isolated
from .mcmc import MCMC_METHODS
from .penalized import fit_l0, fit_l1
from .result import FitResult
from .sgmcmc_fit import SGMCMC_METHODS
from .svi import fit_svi
from .vadam_fit import fit_vadam

__all__ = ["METHODS", "fit"]

METHODS: dict[str, Callable[..., FitResult]] = {
    "svi": fit_svi,
    "vadam": fit_vadam,
    "l0": fit_l0,
    "l1": fit_l1,
    **SGMCMC_METHODS,
    **MCMC_METHODS,
}


@isolated
def fit(model: Callable, X: Tensor, y: Tensor, *, method: str = "svi", **options: Any) -> FitResult:
    """Fit a :class:`~pyro_sparse_bnn.SparseBNN` or any Pyro model ``model(x, y=None)``.

    ``method`` picks the inference method; ``options`` go to it (see :func:`fit_svi`).

    >>> import pyro_sparse_bnn as psb
    >>> X, y = psb.datasets.load("iris")
    >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    >>> result = psb.fit(bnn, X, y, epochs=5, progress=False)
    >>> result.method
    'svi'
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method](model, X, y, **options)
