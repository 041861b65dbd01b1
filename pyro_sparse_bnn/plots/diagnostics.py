"""Calibration and MCMC diagnostic figures (trace and rank plots through ArviZ)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from .. import arviz as psb_arviz
from .. import metrics
from ..infer.result import FitResult
from ..validation import (
    check_positive_int,
)
from .sources import (
    _check_data,
    _RankedWeights,
    _Relevance,
)


def plot_calibration(
    probs: Any, y: Any, *, n_bins: int = 15, label: str | None = None, ax: Axes | None = None
) -> Axes:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration.

    Bars stand on the non-empty bins of :func:`metrics.reliability_curve` (equal-width bins of
    the max-class probability); the title gives the expected calibration error. ``probs`` are the
    predictive class probabilities ``(n, C)``, e.g. ``result.predict(x)["probs"]``.

    >>> import torch
    >>> probs, y = torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0])
    >>> ax = plot_calibration(probs, y, n_bins=2)
    >>> [float(p.get_height()) for p in ax.patches]
    [0.5]
    """
    curve = metrics.reliability_curve(probs, y, n_bins)
    ece = metrics.expected_calibration_error(probs, y, n_bins)
    filled = curve["bin_count"] > 0
    edges = curve["bin_edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(
        centres[filled],
        curve["bin_accuracy"][filled],
        width=1.0 / n_bins,
        edgecolor="k",
        alpha=0.7,
        label=label or "accuracy per bin",
    )
    ax.plot([0.0, 1.0], [0.0, 1.0], color="0.4", linestyle="--", label="perfect calibration")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("confidence (largest class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    return ax


def _diagnostic_data(data: Any, var_names: Sequence[str] | None, n_weights: int) -> Any:
    """``data``'s posterior when variables are named, else the ``n_weights`` most relevant
    weights, one scalar variable each (with the sampler statistics, so divergences are marked).
    A ``FitResult`` gives its draws only (no posterior predictive)."""
    _check_data(data)
    n_weights = check_positive_int(n_weights, "n_weights")
    if var_names is not None:
        return _posterior_data(data) if isinstance(data, FitResult) else data
    source = _Relevance(data, "snr")
    ranked = _RankedWeights(source, source.sites)
    rows = list(range(min(n_weights, len(ranked))))
    draws = ranked.draws(rows)
    return psb_arviz.to_inference_data(
        posterior={ranked.label(i): draws[..., k] for k, i in enumerate(rows)},
        sample_stats=source.sample_stats(),
    )


def _posterior_data(result: FitResult) -> Any:
    """``InferenceData`` of a result's draws and sampler statistics, with ``to_arviz``'s dims."""
    dims, coords = psb_arviz.weight_dims(result.samples, result.weight_sites)
    return psb_arviz.to_inference_data(
        posterior={k: v.detach().cpu().numpy() for k, v in result.samples.items()},
        sample_stats={k: v.detach().cpu().numpy() for k, v in result.sample_stats.items()},
        coords=coords,
        dims=dims,
    )


def plot_trace(
    data: Any, var_names: Sequence[str] | None = None, *, n_weights: int = 4, **kwargs: Any
) -> np.ndarray:
    """ArviZ trace plot (per variable: density per chain, and draws against iteration).

    Without ``var_names`` it shows the ``n_weights`` most relevant weights; with them, those
    posterior variables (``kwargs`` such as ``coords`` or ``compact`` go to ``az.plot_trace``).
    Returns the ``(variables, 2)`` array of axes.
    """
    return psb_arviz.plot_trace(
        _diagnostic_data(data, var_names, n_weights), var_names=var_names, **kwargs
    )


def plot_rank(
    data: Any, var_names: Sequence[str] | None = None, *, n_weights: int = 4, **kwargs: Any
) -> np.ndarray:
    """ArviZ rank plot: per chain, the histogram of its draws' ranks among all chains' draws.

    Chains that sample the same distribution give flat histograms. Needs at least two chains.
    Without ``var_names`` it shows the ``n_weights`` most relevant weights. Returns the axes.
    """
    _check_data(data)
    chains = data.num_chains if hasattr(data, "num_chains") else data.posterior.sizes["chain"]
    if chains < 2:
        raise ValueError(f"rank plots compare chains: data has {chains} chain, it needs at least 2")
    idata = _diagnostic_data(data, var_names, n_weights)
    return psb_arviz.plot_rank(idata, var_names=var_names, **kwargs)
