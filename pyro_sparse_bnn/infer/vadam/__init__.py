"""VADAM, VOGN and VADAM-ARD: the optimisers and ``fit_vadam``.

>>> from pyro_sparse_bnn.infer import vadam
>>> vadam.VARIANTS  # the VADAM-ARD updates
('gamma', 'thesis')
"""

from .fit import VARIANTS, ARDOptions, fit_vadam
from .optimizer import Vadam
from .variants import VOGN, VadamARD

__all__ = ["VARIANTS", "VOGN", "ARDOptions", "Vadam", "VadamARD", "fit_vadam"]
