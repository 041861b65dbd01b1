"""IVON and IVON-ARD: the optimisers (wrapping ``ivon-opt``) and ``fit_ivon``.

>>> from pyro_sparse_bnn.infer.ivon import IVON, IVONARD
>>> issubclass(IVONARD, IVON)
True
"""

from .fit import fit_ivon
from .optimizer import IVON, IVONARD

__all__ = ["IVON", "IVONARD", "fit_ivon"]
