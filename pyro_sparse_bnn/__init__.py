"""Sparse Bayesian neural networks on Pyro: shrinkage priors, posterior families, inference,
pruning and ArviZ results.

>>> import pyro_sparse_bnn as psb
>>> bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
"""

from . import (
    alrao,
    arviz,
    baselines,
    datasets,
    distributions,
    gates,
    guides,
    likelihoods,
    lrt,
    metrics,
    penalties,
    plots,
    priors,
    prune,
    scaling,
    sparse_guides,
    sparse_priors,
    sparsity,
)
from ._version import __version__
from .infer.fit import METHODS, fit
from .infer.result import FitResult
from .nn import SparseBNN, mlp

load = FitResult.load

__all__ = [
    "METHODS",
    "FitResult",
    "SparseBNN",
    "__version__",
    "alrao",
    "arviz",
    "baselines",
    "datasets",
    "distributions",
    "fit",
    "gates",
    "guides",
    "likelihoods",
    "load",
    "lrt",
    "metrics",
    "mlp",
    "penalties",
    "plots",
    "priors",
    "prune",
    "scaling",
    "sparse_guides",
    "sparse_priors",
    "sparsity",
]
