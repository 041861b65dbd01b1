"""Every ArviZ call of the toolkit lives here, so a port to ArviZ 1.x touches one module.

>>> import numpy as np
>>> idata = to_inference_data(posterior={"w": np.zeros((2, 10, 3))})
>>> idata.posterior["w"].shape
(2, 10, 3)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .io import atomic_path

if TYPE_CHECKING:
    import arviz as az

__all__ = [
    "bfmi",
    "from_netcdf",
    "hdi",
    "loo",
    "plot_rank",
    "plot_trace",
    "psis_log_weights",
    "summary",
    "to_inference_data",
    "to_netcdf",
]

Arrays = Mapping[str, np.ndarray]


def _az() -> Any:
    """ArviZ, imported on first use: it loads xarray, pandas, scipy and matplotlib (about 1.3 s)."""
    import arviz

    return arviz


def to_inference_data(
    *,
    posterior: Arrays,
    posterior_predictive: Arrays | None = None,
    log_likelihood: Arrays | None = None,
    observed_data: Arrays | None = None,
    sample_stats: Arrays | None = None,
    extra_groups: Mapping[str, Arrays] | None = None,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, list[str]] | None = None,
) -> az.InferenceData:
    """Build ``InferenceData`` from ``(chain, draw, ...)`` arrays; ``extra_groups`` hold arrays
    without chain/draw dims (e.g. pruning masks)."""
    idata = _az().from_dict(
        posterior=dict(posterior),
        posterior_predictive=dict(posterior_predictive or {}) or None,
        log_likelihood=dict(log_likelihood or {}) or None,
        observed_data=dict(observed_data or {}) or None,
        sample_stats=dict(sample_stats or {}) or None,
        coords=dict(coords or {}),
        dims=dict(dims or {}),
    )
    for group, arrays in (extra_groups or {}).items():
        idata.add_groups(
            {group: _az().dict_to_dataset(dict(arrays), coords=coords, dims=dims, default_dims=[])}
        )
    return idata


def summary(idata: az.InferenceData, **kwargs: Any) -> Any:
    """``az.summary`` (rank-normalised R-hat, bulk/tail ESS, HDI) as a pandas DataFrame."""
    return _az().summary(idata, **kwargs)


def bfmi(idata: az.InferenceData) -> np.ndarray:
    """Energy Bayesian fraction of missing information per chain (``az.bfmi``; needs the
    ``energy`` sample statistic that NUTS/HMC results carry). Below 0.3 the momentum resampling
    moves the chain too slowly across energy levels."""
    return np.asarray(_az().bfmi(idata))


def loo(idata: az.InferenceData, **kwargs: Any) -> Any:
    """Pareto-smoothed importance-sampling LOO (``az.loo``)."""
    return _az().loo(idata, **kwargs)


def psis_log_weights(log_lik: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out importance weights ``1 / p(y_i | draw)``, Pareto-smoothed (``az.psislw``).

    ``log_lik`` is ``(draws, n)``; returns the normalised log-weights ``(draws, n)`` and the Pareto
    shape ``k`` of each row ``(n,)`` (above 0.7 the estimate for that row is unreliable).

    >>> lw, k = psis_log_weights(np.zeros((100, 3)))
    >>> np.allclose(np.exp(lw).sum(0), 1.0)
    True
    """
    log_lik = np.asarray(log_lik, dtype=np.float64)
    if log_lik.ndim != 2:
        raise ValueError(f"log_lik must have shape (draws, n), got {log_lik.shape}")
    with warnings.catch_warnings():  # the caller gets k and decides; no warning per call
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        lw, k = _az().psislw(-log_lik.T)
    return np.asarray(lw).T, np.asarray(k)


def to_netcdf(idata: az.InferenceData, path: str) -> str:
    """Write ``idata`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        idata.to_netcdf(str(tmp))
    return path


def from_netcdf(path: str) -> az.InferenceData:
    """Read an ``InferenceData`` written by :func:`to_netcdf`."""
    return _az().from_netcdf(path)


def hdi(draws: np.ndarray, hdi_prob: float = 0.94) -> np.ndarray:
    """Highest-density intervals of ``(chain, draw, *shape)`` draws: an array ``(*shape, 2)``.

    >>> hdi(np.arange(11.0).reshape(1, 11, 1), hdi_prob=0.8).tolist()
    [[0.0, 8.0]]
    """
    draws = np.asarray(draws)
    if draws.ndim < 3:
        raise ValueError(f"draws must have shape (chain, draw, *shape), got {draws.shape}")
    return _az().hdi(draws, hdi_prob=hdi_prob)


def plot_trace(idata: az.InferenceData, **kwargs: Any) -> np.ndarray:
    """``az.plot_trace`` with matplotlib, never shown: the ``(variables, 2)`` array of axes."""
    return _az().plot_trace(idata, backend="matplotlib", show=False, **kwargs)


def plot_rank(idata: az.InferenceData, **kwargs: Any) -> Any:
    """``az.plot_rank`` with matplotlib, never shown: its axes (one per variable element)."""
    return _az().plot_rank(idata, backend="matplotlib", show=False, **kwargs)
