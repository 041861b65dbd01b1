"""Every ArviZ call of the toolkit lives here, so a port to ArviZ 1.x touches one module.

The wrappers keep ArviZ quiet where its messages do not apply (R-hat of a one-chain variational
result) and say what to do where they do (:func:`loo` with high Pareto k).

>>> import numpy as np
>>> idata = to_inference_data(posterior={"w": np.zeros((2, 10, 3))})
>>> idata.posterior["w"].shape
(2, 10, 3)
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
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
    "loo_advice",
    "plot_rank",
    "plot_trace",
    "psis_log_weights",
    "summary",
    "to_inference_data",
    "to_netcdf",
    "weight_dims",
]

Arrays = Mapping[str, np.ndarray]

VARIATIONAL_METHODS = ("svi", "vadam", "ivon")
"""``FitResult.method`` values whose draws come from an approximate (variational) posterior."""


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


def weight_dims(
    samples: Mapping[str, Any], sites: Sequence[str]
) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """Dims and coords of the weight ``sites`` of ``(chain, draw, ...)`` draws: ``<site>_out``,
    ``<site>_in``, then ``<site>_k0``, ``<site>_k1``... for kernels.

    >>> weight_dims({"w": np.zeros((1, 5, 3, 2))}, ["w"])
    ({'w': ['w_out', 'w_in']}, {'w_out': [0, 1, 2], 'w_in': [0, 1]})
    """
    dims, coords = {}, {}
    for site in sites:
        shape = tuple(samples[site].shape[2:])
        names = ["out", "in", *(f"k{i}" for i in range(len(shape) - 2))][: len(shape)]
        dims[site] = [f"{site}_{n}" for n in names]
        coords |= {d: list(range(n)) for d, n in zip(dims[site], shape, strict=True)}
    return dims, coords


class _DropShapeWarnings(logging.Filter):
    """Drops ArviZ's ``Shape validation failed`` records; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Shape validation failed")


@contextlib.contextmanager
def _quiet_shape_validation() -> Iterator[None]:
    """Silence ArviZ's ``Shape validation failed`` log message for the ``with`` block only.

    ArviZ logs it when an array has fewer than 2 chains (or 4 draws): rank R-hat compares chains,
    so for a one-chain variational result it is NaN, and the message says nothing more. Other
    messages pass. The filter is on ArviZ's logger while the block runs (other threads' ArviZ
    calls too), and removed afterwards: level, handlers and filters are as before.
    """
    az_module = _az()
    log = getattr(az_module, "_log", None) or logging.getLogger("arviz")
    drop = _DropShapeWarnings()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def summary(idata: az.InferenceData, **kwargs: Any) -> Any:
    """``az.summary`` (rank-normalised R-hat, bulk/tail ESS, HDI) as a pandas DataFrame.

    R-hat compares chains: for one chain (a variational result) it is NaN, without ArviZ's
    ``Shape validation failed`` log message.

    >>> draws = np.random.default_rng(0).normal(size=(1, 100))
    >>> table = summary(to_inference_data(posterior={"w": draws}))
    >>> bool(np.isnan(table.loc["w", "r_hat"])), bool(table.loc["w", "ess_bulk"] > 50)
    (True, True)
    """
    with _quiet_shape_validation():
        return _az().summary(idata, **kwargs)


def bfmi(idata: az.InferenceData) -> np.ndarray:
    """Energy Bayesian fraction of missing information per chain (``az.bfmi``; needs the
    ``energy`` sample statistic that NUTS/HMC results carry). Below 0.3 the momentum resampling
    moves the chain too slowly across energy levels."""
    return np.asarray(_az().bfmi(idata))


def loo(data: Any, *, pointwise: bool | None = None, **kwargs: Any) -> Any:
    """Pareto-smoothed importance-sampling LOO (``az.loo``) of an ``InferenceData`` or of a
    ``FitResult`` (its ``to_arviz()``).

    Where some observations' Pareto ``k`` exceed ArviZ's threshold (``good_k``: 0.7 from 2,200
    draws on, lower with fewer), one warning replaces ArviZ's: how many, and what to do
    (:func:`loo_advice`). The result is ``az.loo``'s, ``pointwise`` included.

    >>> rng = np.random.default_rng(0)
    >>> log_lik = -rng.exponential(0.1, size=(4, 500, 10))  # light-tailed importance weights
    >>> idata = to_inference_data(posterior={"w": rng.normal(size=(4, 500))},
    ...                           log_likelihood={"y": log_lik})
    >>> result = loo(idata)
    >>> int(result.n_data_points), bool(result.warning)
    (10, False)
    """
    method = getattr(data, "method", None)
    idata = data.to_arviz() if callable(getattr(data, "to_arviz", None)) else data
    az_module = _az()
    if pointwise is None:
        pointwise = bool(az_module.rcParams["stats.ic_pointwise"])
    with warnings.catch_warnings():  # replaced by the advice below
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        if not pointwise:
            warnings.filterwarnings("ignore", message="The point-wise LOO is the same")
        result = az_module.loo(idata, pointwise=True, **kwargs)
    if method is None:
        method = _guess_method(idata)
    advice = loo_advice(
        np.asarray(result["pareto_k"]), float(result["good_k"]), int(result["n_samples"]), method
    )
    if advice is not None:
        warnings.warn(advice, UserWarning, stacklevel=2)
    if pointwise:
        return result
    index = ["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "scale", "good_k"]
    return type(result)(data=[result[k] for k in index], index=index)


def _guess_method(idata: Any) -> str | None:
    """``"variational"`` for one chain without sampler statistics (what SVI and VADAM results
    look like), else ``None``."""
    groups = idata.groups() if callable(getattr(idata, "groups", None)) else []
    posterior = getattr(idata, "posterior", None)
    chains = posterior.sizes.get("chain", 1) if posterior is not None else 1
    return "variational" if chains == 1 and "sample_stats" not in groups else None


def loo_advice(
    pareto_k: np.ndarray, good_k: float, n_samples: int, method: str | None = None
) -> str | None:
    """What to do when PSIS-LOO is unreliable: ``None`` when every Pareto ``k <= good_k``, else
    how many observations exceed it and the remedies (more draws; for variational draws
    (``method`` ``"svi"``, ``"vadam"`` or ``"variational"``) the importance sampling starts from
    an approximate posterior; K-fold cross-validation).

    >>> print(loo_advice(np.array([0.2, 0.9, 1.3]), 0.7, 4000, "nuts"))  # doctest: +ELLIPSIS
    PSIS-LOO is unreliable: 2 of 3 observations have Pareto k > 0.7 (ArviZ's threshold for 4000
    draws; 1 above 1), ...
    """
    k = np.asarray(pareto_k, dtype=float).ravel()
    bad = int((k > good_k).sum())
    if bad == 0:
        return None
    counts = [f"{int((k > 0.7).sum())} above 0.7"] if good_k < 0.7 else []
    counts.append(f"{int((k > 1).sum())} above 1")
    text = (
        f"PSIS-LOO is unreliable: {bad} of {k.size} observations have Pareto k > {good_k:.2g} "
        f"(ArviZ's threshold for {n_samples} draws; {', '.join(counts)}), so elpd_loo and p_loo "
        "are not to be trusted. "
    )
    if method in (*VARIATIONAL_METHODS, "variational"):
        how = f"method {method!r}" if method != "variational" else "one chain, no sampler stats"
        text += (
            f"These draws look variational ({how}): the importance sampling starts from an "
            "approximate posterior, and more draws (fit(..., num_posterior_samples=2000)) sharpen "
            "k but do not fix the approximation. "
        )
    else:
        text += (
            "Draw more: the threshold rises to 0.7 at 2,200 draws, and the estimates of k "
            "sharpen. If k stays high, those observations are highly influential (a more robust "
            "likelihood may help). "
        )
    return text + (
        "Use K-fold cross-validation instead: refit on K-1 folds and score each held-out fold "
        "with fit.evaluate(X_fold, y_fold) (K = 10, or 5 for a slow fit)."
    )


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
