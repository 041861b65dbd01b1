"""Posterior families (guides) for sparse BNNs: mean-field Gaussian and MAP (from Pyro's
autoguides) and the SparseVD family, by name in :data:`GUIDES` (``fit(..., guide=name)``).

>>> import torch
>>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
>>> bnn = SparseBNN(mlp([4, 3]), priors.Horseshoe(), likelihoods.Categorical())
>>> guide = make_guide("mean_field", bnn)
>>> sorted(guide(torch.randn(2, 4), torch.tensor([0, 2])))
['0.weight_decentered', '0.weight_global_scale', '0.weight_local_scale']
>>> sorted(GUIDES)
['map', 'mean_field', 'sparse_vd']
"""

from .families import GUIDES, MAPGuide, MeanFieldGuide, draw, make_guide, map_estimate, mean_field
from .sparse_vd import DEFAULT_LOG_SIGMA2, SparseVDGuide, sparse_vd, weight_moments

__all__ = [
    "DEFAULT_LOG_SIGMA2",
    "GUIDES",
    "MAPGuide",
    "MeanFieldGuide",
    "SparseVDGuide",
    "draw",
    "make_guide",
    "map_estimate",
    "mean_field",
    "sparse_vd",
    "weight_moments",
]
