"""Sparse Bayesian neural networks on Pyro: shrinkage priors, posterior families, inference,
pruning and ArviZ results.

>>> import pyro_sparse_bnn as psb
>>> bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
"""

import pyro

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

# Models and guides own their parameters (Pyro's module-local mode): two fits never share state
# through the global param store, and torch optimisers and torch.save see every parameter.
pyro.settings.set(module_local_params=True)

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
