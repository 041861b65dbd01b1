"""Stochastic-gradient MCMC: the SGLD/SGHMC kernels, the SSGL prior and ``fit_sgmcmc``.

>>> from pyro_sparse_bnn.infer import sgmcmc
>>> sgmcmc.SGMCMC_METHODS["sgld_em"]  # what ``fit(method="sgld_em")`` fixes
{'sampler': 'sgld', 'prior': SSGLPrior(update='em', ...)}
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
from .model import SAMPLERS
from .options import InclusionPruning, MagnitudePruning, SSGLPrior
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
    "SAMPLERS",
    "SGHMC",
    "SGLD",
    "SGMCMC_METHODS",
    "SSGL",
    "SSGL_SA_WEIGHTS",
    "SSGL_STEP_SIZE",
    "ConstantSchedule",
    "InclusionPruning",
    "IntegratorState",
    "LangevinIntegrator",
    "MagnitudePruning",
    "PolynomialDecay",
    "RMSPreconditioner",
    "SSGLPrior",
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
