"""Stochastic-gradient MCMC: the SGLD/SGHMC kernels, the SSGL prior and ``fit_sgmcmc``.

>>> from pyro_sparse_bnn.infer import sgmcmc
>>> sgmcmc.SGMCMC_METHODS["sgld_sa"]  # what ``fit(method="sgld_sa")`` fixes
{'sampler': 'sgld', 'prior': 'ssgl', 'sa': 'sa'}
"""

from .fit import SGMCMC_METHODS, fit_sgmcmc
from .kernels import (
    EM_WEIGHTS,
    SGHMC,
    SGLD,
    SSGL_SA_WEIGHTS,
    SSGL_STEP_SIZE,
    ConstantSchedule,
    IntegratorState,
    LangevinIntegrator,
    PolynomialDecay,
    RMSPreconditioner,
    SparseRateSchedule,
)
from .model import PRIORS, PRUNING, SA_MODES, SAMPLERS
from .ssgl import (
    SSGL,
    inclusion_mask,
    magnitude_mask,
    sa_average,
    ssgl_delta,
    ssgl_grad_log_prior,
    ssgl_inclusion_probability,
    ssgl_log_slab,
    ssgl_log_spike,
    ssgl_penalties,
    ssgl_sigma,
)

__all__ = [
    "EM_WEIGHTS",
    "PRIORS",
    "PRUNING",
    "SAMPLERS",
    "SA_MODES",
    "SGHMC",
    "SGLD",
    "SGMCMC_METHODS",
    "SSGL",
    "SSGL_SA_WEIGHTS",
    "SSGL_STEP_SIZE",
    "ConstantSchedule",
    "IntegratorState",
    "LangevinIntegrator",
    "PolynomialDecay",
    "RMSPreconditioner",
    "SparseRateSchedule",
    "fit_sgmcmc",
    "inclusion_mask",
    "magnitude_mask",
    "sa_average",
    "ssgl_delta",
    "ssgl_grad_log_prior",
    "ssgl_inclusion_probability",
    "ssgl_log_slab",
    "ssgl_log_spike",
    "ssgl_penalties",
    "ssgl_sigma",
]
