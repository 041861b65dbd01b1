"""VADAM, VOGN and VADAM-ARD: the optimisers and ``fit_vadam``.

>>> from pyro_sparse_bnn.infer import vadam
>>> vadam.VARIANTS  # the VADAM-ARD updates
('gamma', 'thesis')
"""

from .fit import VARIANTS, fit_vadam
from .optimizer import Vadam
from .variants import VOGN, VadamARD

__all__ = ["VARIANTS", "VOGN", "Vadam", "VadamARD", "fit_vadam"]
