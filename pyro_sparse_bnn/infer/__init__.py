"""Inference methods; each returns a :class:`~pyro_sparse_bnn.infer.result.FitResult`.

:func:`~pyro_sparse_bnn.fit` dispatches to them by name (``METHODS``); call one directly for its
own signature and help.

>>> from pyro_sparse_bnn import infer
>>> infer.METHODS["nuts"].function is infer.fit_mcmc, infer.METHODS["nuts"].fixed
(True, {'kernel': 'nuts'})
"""

from . import ivon, loop, mcmc, posterior, result, sgmcmc, vadam
from .fit import METHODS, Method
from .ivon import fit_ivon
from .mcmc import fit_mcmc
from .penalized import fit_l0, fit_l1
from .result import FitResult
from .sgmcmc import fit_sgmcmc
from .streaming import fit_svi_loader
from .svi import fit_svi
from .vadam import fit_vadam

__all__ = [
    "METHODS",
    "FitResult",
    "Method",
    "fit_ivon",
    "fit_l0",
    "fit_l1",
    "fit_mcmc",
    "fit_sgmcmc",
    "fit_svi",
    "fit_svi_loader",
    "fit_vadam",
    "ivon",
    "loop",
    "mcmc",
    "posterior",
    "result",
    "sgmcmc",
    "vadam",
]
