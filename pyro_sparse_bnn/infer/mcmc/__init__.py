"""NUTS and HMC: the batched sampler and ``fit_mcmc``.

>>> from pyro_sparse_bnn.infer import mcmc
>>> mcmc.KERNELS, mcmc.adaptation_windows(200)  # Stan's buffers around doubling windows
(('nuts', 'hmc'), [(0, 74), (75, 99), (100, 149), (150, 199)])
"""

from .adaptation import adaptation_windows
from .fit import BACKENDS, INITS, fit_mcmc
from .run import sample
from .sampler import KERNELS, Draws, Sampler

__all__ = [
    "BACKENDS",
    "INITS",
    "KERNELS",
    "Draws",
    "Sampler",
    "adaptation_windows",
    "fit_mcmc",
    "sample",
]
