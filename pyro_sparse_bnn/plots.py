"""Figures for sparse BNN results: weight relevance, pruning masks, Pareto fronts, calibration and
MCMC diagnostics.

Every function returns matplotlib objects (an ``Axes``, or a ``Figure`` when it draws one panel per
layer) and never calls ``plt.show``. The relevance plots read the ``posterior`` and ``relevance``
groups that :meth:`FitResult.to_arviz <pyro_sparse_bnn.FitResult.to_arviz>` writes for any
inference method; pass the ``FitResult`` itself and it is converted. ArviZ is only called through
:mod:`pyro_sparse_bnn.arviz`.

>>> import pyro_sparse_bnn as psb
>>> X, y = psb.datasets.load("iris")
>>> prior, likelihood = psb.priors.Horseshoe(0.1), psb.likelihoods.Categorical()
>>> bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), prior, likelihood)
>>> fit = psb.fit(bnn, X, y, epochs=50, num_posterior_samples=50, progress=False)
>>> idata = fit.to_arviz()
>>> ax = plot_relevance_forest(idata, n_top=5, n_bottom=5)
>>> len(ax.get_yticklabels())
10
>>> fig = plot_relevance_heatmap(idata, value="kept")  # one panel per layer
>>> [a.get_title().split(":")[0] for a in fig.axes if a.get_title()]
['0.weight', '2.weight']
>>> fig = plot_relevance_histogram(idata, kind="log_alpha")
>>> ax = plot_calibration(fit.predict(X)["probs"], y)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import arviz as psb_arviz
from . import metrics
from .sparsity import SNR_THRESHOLD
from .validation import (
    check_choice,
    check_nonnegative,
    check_number,
    check_positive,
    check_positive_int,
)

__all__ = [
    "RELEVANCE_FLOOR",
    "pareto_front",
    "plot_calibration",
    "plot_pareto",
    "plot_rank",
    "plot_relevance_forest",
    "plot_relevance_heatmap",
    "plot_relevance_histogram",
    "plot_trace",
]

RELEVANCE_FLOOR = 1e-6
"""Relevance drawn for weights whose draws are all exactly zero (relevance 0) on log scales."""

_KEPT, _PRUNED = sns.color_palette()[0], sns.color_palette()[7]


def _check_data(data: Any) -> None:
    if not hasattr(data, "to_arviz") and not callable(getattr(data, "groups", None)):
        raise TypeError(f"data must be a FitResult or InferenceData, got {type(data).__name__}")


def _inference_data(data: Any) -> Any:
    """``InferenceData`` with a ``relevance`` group, from itself or a ``FitResult``."""
    _check_data(data)
    if hasattr(data, "to_arviz"):
        data = data.to_arviz()
    if "relevance" not in data.groups():
        raise ValueError(
            "data has no 'relevance' group: pass a FitResult or the InferenceData of its to_arviz()"
        )
    return data


def _sites(idata: Any, sites: str | Sequence[str] | None) -> list[str]:
    """Weight sites of ``idata`` (those with a ``<site>_relevance`` array), or the chosen ones."""
    available = [
        str(name).removesuffix("_relevance")
        for name in idata.relevance.data_vars
        if str(name).endswith("_relevance")
    ]
    if sites is None:
        if not available:
            raise ValueError("data has no weight sites (no '<site>_relevance' arrays)")
        return available
    chosen = [sites] if isinstance(sites, str) else list(sites)
    unknown = [s for s in chosen if s not in available]
    if unknown or not chosen:
        raise ValueError(f"sites must name weight sites among {available}, got {sites!r}")
    return chosen


def _scores(idata: Any, site: str) -> tuple[np.ndarray, np.ndarray]:
    """Relevance and keep-mask arrays of one weight site."""
    group = idata.relevance
    return group[f"{site}_relevance"].values, group[f"{site}_kept"].values.astype(bool)


class _RankedWeights:
    """Every weight of the chosen sites, ordered from most to least relevant."""

    def __init__(self, idata: Any, sites: list[str]) -> None:
        self.idata = idata
        self.shapes: dict[str, tuple[int, ...]] = {}
        scores, kept, site_index, flat_index = [], [], [], []
        for i, site in enumerate(sites):
            relevance, keep = _scores(idata, site)
            self.shapes[site] = relevance.shape
            scores.append(relevance.ravel())
            kept.append(keep.ravel())
            site_index.append(np.full(relevance.size, i))
            flat_index.append(np.arange(relevance.size))
        order = np.argsort(-np.concatenate(scores), kind="stable")
        self.sites = sites
        self.scores = np.concatenate(scores)[order]
        self.kept = np.concatenate(kept)[order]
        self._site = np.concatenate(site_index)[order]
        self._flat = np.concatenate(flat_index)[order]

    def __len__(self) -> int:
        return len(self.scores)

    def label(self, i: int) -> str:
        site = self.sites[self._site[i]]
        index = np.unravel_index(self._flat[i], self.shapes[site])
        return f"{site}[{', '.join(str(int(j)) for j in index)}]"

    def draws(self, rows: Sequence[int]) -> np.ndarray:
        """Posterior draws of the chosen rows: ``(chain, draw, len(rows))``."""
        columns = []
        for i in rows:
            site = self.sites[self._site[i]]
            values = self.idata.posterior[site].values
            columns.append(values.reshape(*values.shape[:2], -1)[:, :, self._flat[i]])
        return np.stack(columns, axis=-1)


def plot_relevance_forest(
    data: Any,
    *,
    n_top: int = 10,
    n_bottom: int = 10,
    sites: str | Sequence[str] | None = None,
    hdi_prob: float = 0.94,
    ax: Axes | None = None,
) -> Axes:
    """Posterior mean and HDI of the ``n_top`` most and ``n_bottom`` least relevant weights.

    Relevance is the posterior signal-to-noise ``|mean| / sd`` (``sparsity.relevance``). Rows run
    from the most relevant weight at the top down to the least relevant at the bottom, labelled
    ``site[i, j] (relevance)``; weights that ``to_arviz`` marked as kept are drawn in blue, pruned
    ones in grey. A dotted line separates the two groups when weights in between are left out.

    Args:
        data: a ``FitResult`` or its ``to_arviz()`` ``InferenceData``.
        n_top, n_bottom: how many of the most and least relevant weights to show.
        sites: weight sites to rank (default: all of them, ranked together).
        hdi_prob: probability mass of the highest-density intervals.
        ax: axes to draw on (default: a new figure).
    """
    n_top, n_bottom = (
        check_nonnegative(n_top, "n_top", integer=True),
        check_nonnegative(n_bottom, "n_bottom", integer=True),
    )
    if n_top + n_bottom == 0:
        raise ValueError("n_top + n_bottom must be at least 1")
    hdi_prob = float(
        check_number(hdi_prob, "hdi_prob", low=0, high=1, low_open=True, high_open=True)
    )
    idata = _inference_data(data)
    ranked = _RankedWeights(idata, _sites(idata, sites))
    top = list(range(min(n_top, len(ranked))))
    bottom = list(range(max(len(top), len(ranked) - n_bottom), len(ranked)))
    rows = top + bottom
    draws = ranked.draws(rows)
    intervals = psb_arviz.hdi(draws, hdi_prob=hdi_prob)
    means = draws.mean(axis=(0, 1))
    colors = [_KEPT if ranked.kept[i] else _PRUNED for i in rows]
    y = np.arange(len(rows))[::-1]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 1.0 + 0.3 * len(rows)))
    ax.hlines(y, intervals[:, 0], intervals[:, 1], colors=colors, linewidth=2.0)
    ax.scatter(means, y, color=colors, zorder=3)
    ax.axvline(0.0, color="0.5", linestyle=":", linewidth=1.0)
    if top and bottom and bottom[0] > top[-1] + 1:
        ax.axhline(y[len(top)] + 0.5, color="0.5", linestyle=":", linewidth=1.0)
    ax.set_yticks(y, [f"{ranked.label(i)} ({ranked.scores[i]:.3g})" for i in rows])
    ax.set_xlabel(f"weight: posterior mean and {hdi_prob:.0%} HDI")
    ax.set_title(f"{len(top)} most and {len(bottom)} least relevant weights")
    ax.legend(
        handles=[
            Line2D([], [], color=_KEPT, marker="o", label="kept"),
            Line2D([], [], color=_PRUNED, marker="o", label="pruned"),
        ],
        loc="best",
    )
    return ax


def _matrix(values: np.ndarray, reduce: str) -> np.ndarray:
    """A weight array as (output neurons, input neurons); kernel dims reduced by mean or max."""
    if values.ndim == 1:
        return values[None, :]
    flat = values.reshape(*values.shape[:2], -1)
    return flat.mean(axis=-1) if reduce == "mean" else flat.max(axis=-1)


def _panels(n: int, width: float = 4.5, height: float = 3.5) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def plot_relevance_heatmap(
    data: Any, *, value: str = "relevance", sites: str | Sequence[str] | None = None
) -> Figure:
    """One heatmap per layer: rows are output neurons, columns input neurons.

    ``value="kept"`` shows the keep-mask of ``to_arviz``'s ``relevance`` group (1 kept, 0 pruned);
    ``value="relevance"`` shows ``log10`` of the relevance on a diverging scale centred at 0
    (relevance 1, the default threshold), so kept weights are red and pruned ones blue. Weights of
    relevance 0 are drawn at :data:`RELEVANCE_FLOOR`. Convolution kernels are summarised per
    (output, input) channel pair: the fraction kept, or the largest relevance.
    """
    check_choice(value, "value", ("relevance", "kept"))
    idata = _inference_data(data)
    chosen = _sites(idata, sites)
    fig, axes = _panels(len(chosen))
    for ax, site in zip(axes, chosen, strict=True):
        relevance, kept = _scores(idata, site)
        if value == "kept":
            sns.heatmap(
                _matrix(kept.astype(float), "mean"),
                ax=ax,
                vmin=0.0,
                vmax=1.0,
                cmap="Blues",
                cbar_kws={"label": "kept"},
            )
        else:
            log_relevance = np.log10(np.maximum(_matrix(relevance, "max"), RELEVANCE_FLOOR))
            sns.heatmap(
                log_relevance,
                ax=ax,
                center=0.0,
                cmap="RdBu_r",
                cbar_kws={"label": "log10 relevance"},
            )
        ax.set_title(f"{site}: {int(kept.sum())} of {kept.size} kept")
        ax.set_xlabel("input neuron")
        ax.set_ylabel("output neuron")
    fig.tight_layout()
    return fig


def plot_relevance_histogram(
    data: Any,
    *,
    kind: str = "relevance",
    sites: str | Sequence[str] | None = None,
    threshold: float = SNR_THRESHOLD,
    bins: int = 30,
) -> Figure:
    """One histogram per layer of the weights' relevance or ``log_alpha``, with the threshold.

    ``kind="relevance"`` bins ``|mean| / sd`` on a log axis; ``kind="log_alpha"`` bins sparse
    variational dropout's ``log_alpha = log(sd^2 / mean^2) = -2 log(relevance)``, whose threshold
    is ``-2 log(threshold)``. A sparse posterior typically shows two groups, one on each side of
    the line. Weights of relevance 0 are counted at :data:`RELEVANCE_FLOOR`.
    """
    check_choice(kind, "kind", ("relevance", "log_alpha"))
    check_positive(threshold, "threshold")
    bins = check_positive_int(bins, "bins")
    idata = _inference_data(data)
    chosen = _sites(idata, sites)
    fig, axes = _panels(len(chosen), height=3.0)
    for ax, site in zip(axes, chosen, strict=True):
        relevance = np.maximum(_scores(idata, site)[0].ravel(), RELEVANCE_FLOOR)
        if kind == "relevance":
            sns.histplot(x=relevance, bins=bins, log_scale=True, ax=ax)
            ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:g}")
            ax.set_xlabel("relevance |mean| / sd")
        else:
            sns.histplot(x=-2.0 * np.log(relevance), bins=bins, ax=ax)
            line = -2.0 * math.log(threshold)
            ax.axvline(line, color="k", linestyle="--", label=f"threshold {line:g}")
            ax.set_xlabel("log alpha = log(sd² / mean²)")
        kept = int((relevance > threshold).sum())
        ax.set_title(f"{site}: {kept} of {relevance.size} above {threshold:g}")
        ax.set_ylabel("weights")
        ax.legend(loc="best")
    fig.tight_layout()
    return fig


def _rows(results: Any) -> list[dict[str, Any]]:
    """Rows of a benchmark results file, its parsed ``{"meta", "rows"}`` dict, or a row list."""
    if isinstance(results, str | os.PathLike):
        with open(results) as f:
            results = json.load(f)
    if isinstance(results, Mapping):
        if "rows" not in results:
            raise ValueError("results must hold a 'rows' list (a benchmarks/results/*.json file)")
        results = results["rows"]
    if not isinstance(results, Sequence) or not all(isinstance(r, Mapping) for r in results):
        raise TypeError("results must be a path, a {'rows': [...]} dict or a list of row dicts")
    return [dict(r) for r in results]


def pareto_front(
    rows: Sequence[Mapping[str, Any]], *, x: str = "n_kept", y: str = "test_error"
) -> list[dict[str, Any]]:
    """The rows no other row beats on both ``x`` and ``y`` (smaller is better), sorted by ``x``.

    >>> rows = [{"n_kept": 10, "test_error": 0.2}, {"n_kept": 20, "test_error": 0.1},
    ...         {"n_kept": 30, "test_error": 0.15}, {"n_kept": 5, "test_error": 0.3}]
    >>> [r["n_kept"] for r in pareto_front(rows)]
    [5, 10, 20]
    """
    rows = _rows(rows)
    for key in (x, y):
        bad = [r for r in rows if not isinstance(r.get(key), int | float)]
        if bad:
            raise ValueError(f"every row needs a numeric {key!r}; this one does not: {bad[0]}")
    front, best = [], math.inf
    for row in sorted(rows, key=lambda r: (r[x], r[y])):
        if row[y] < best:
            front.append(row)
            best = row[y]
    return front


def plot_pareto(
    results: Any,
    *,
    x: str = "n_kept",
    y: str = "test_error",
    hue: str = "method",
    log_x: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Test error against kept parameters for every row of a benchmark, and their Pareto front.

    ``results`` is a ``benchmarks/results/*.json`` path, its parsed dict, or a list of rows; each
    row needs numeric ``x`` and ``y`` and a ``hue`` label (the method, or any other column such as
    ``"prior"``). The front is drawn as a staircase through the non-dominated rows.
    """
    rows = _rows(results)
    if not rows:
        raise ValueError("results has no rows")
    missing = [r for r in rows if hue not in r]
    if missing:
        raise ValueError(f"every row needs a {hue!r} label; this one does not: {missing[0]}")
    front = pareto_front(rows, x=x, y=y)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 4.0))
    sns.scatterplot(
        x=[r[x] for r in rows], y=[r[y] for r in rows], hue=[str(r[hue]) for r in rows], s=60, ax=ax
    )
    ax.plot(
        [r[x] for r in front],
        [r[y] for r in front],
        drawstyle="steps-post",
        color="k",
        linewidth=1.0,
        label="Pareto front",
    )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(f"{y.replace('_', ' ')} against {x.replace('_', ' ')}")
    ax.legend(loc="best")
    return ax


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
    """``data`` itself when variables are named, else the ``n_weights`` most relevant weights,
    one scalar variable each (with the sampler statistics, so divergences are marked)."""
    _check_data(data)
    n_weights = check_positive_int(n_weights, "n_weights")
    if var_names is not None:
        return data.to_arviz() if hasattr(data, "to_arviz") else data
    idata = _inference_data(data)
    ranked = _RankedWeights(idata, _sites(idata, None))
    rows = list(range(min(n_weights, len(ranked))))
    draws = ranked.draws(rows)
    stats = idata.sample_stats.data_vars if "sample_stats" in idata.groups() else {}
    return psb_arviz.to_inference_data(
        posterior={ranked.label(i): draws[..., k] for k, i in enumerate(rows)},
        sample_stats={k: v.values for k, v in stats.items()},
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
