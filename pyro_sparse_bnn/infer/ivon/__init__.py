"""IVON and IVON-ARD: the optimisers (wrapping ``ivon-opt``), ``fit_ivon`` and its default step
size.

>>> from pyro_sparse_bnn.infer.ivon import IVON, IVONARD
>>> issubclass(IVONARD, IVON)
True
"""

from .fit import fit_ivon
from .optimizer import IVON, IVONARD
from .step_size import stable_lr, top_curvature

__all__ = ["IVON", "IVONARD", "fit_ivon", "stable_lr", "top_curvature"]
