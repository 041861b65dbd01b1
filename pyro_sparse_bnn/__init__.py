"""Sparse Bayesian neural networks on Pyro: shrinkage priors, posterior families, inference,
pruning and ArviZ results.

>>> import pyro_sparse_bnn as psb
>>> bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
"""

# isort: off
from . import progress  # noqa: F401  first: it silences tqdm's notebook warning before Pyro imports tqdm.auto

# isort: on
import importlib
from types import ModuleType

from . import (
    alrao,
    arviz,
    baselines,
    distributions,
    elbo,
    gates,
    guides,
    infer,
    likelihoods,
    lrt,
    metrics,
    nn,
    penalties,
    priors,
    prune,
    recurrent,
    sparsity,
)
from ._version import __version__
from .infer.fit import METHODS, fit
from .infer.result import FitResult
from .nn import SparseBNN, mlp
from .report import CompressionReport, compression_report

load = FitResult.load

_LAZY_MODULES = ("datasets", "lightning", "mil", "plots")
"""Submodules imported on first attribute access: they load scikit-learn, Lightning, matplotlib
and seaborn, which a fit does not need (``python -X importtime -c "import pyro_sparse_bnn"``)."""


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METHODS",
    "CompressionReport",
    "FitResult",
    "SparseBNN",
    "__version__",
    "alrao",
    "arviz",
    "baselines",
    "compression_report",
    "datasets",
    "distributions",
    "elbo",
    "fit",
    "gates",
    "guides",
    "infer",
    "lightning",
    "likelihoods",
    "load",
    "lrt",
    "metrics",
    "mil",
    "mlp",
    "nn",
    "penalties",
    "plots",
    "priors",
    "prune",
    "recurrent",
    "sparsity",
]
