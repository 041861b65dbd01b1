"""Weight-relevance figures: forest, per-layer heatmap and histogram (arguments and relevance
rules: :mod:`pyro_sparse_bnn.plots`). Titles count the weights kept under the rule they name.

>>> import pyro_sparse_bnn as psb
>>> X, y = psb.datasets.load("iris")
>>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
>>> fit = psb.fit(bnn, X, y, epochs=20, progress=False)
>>> fig = plot_relevance_histogram(fit, threshold=1.0)
>>> kept = int((fit.relevance()["0.weight"] > 1.0).sum())
>>> fig.axes[0].get_title() == f"0.weight: {kept} of 12 kept (SNR > 1)"
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .. import arviz as psb_arviz
from ..validation import (
    check_choice,
    check_nonnegative,
    check_number,
    check_positive_int,
)
from .sources import (
    _KEPT,
    _KINDS,
    _PRUNED,
    _RULES,
    _SCALES,
    _check_axes,
    _check_feature_names,
    _check_threshold,
    _RankedWeights,
    _Relevance,
    _Rule,
    _Scale,
)


def _kept_legend(rule: _Rule, threshold: float | None) -> list[Line2D]:
    kept, pruned = "kept", "pruned"
    if threshold is not None:
        kept, pruned = (f"kept ({rule.symbol} > {threshold:.3g})",
                        f"pruned ({rule.symbol} ≤ {threshold:.3g})")  # fmt: skip
    return [
        Line2D([], [], color=_KEPT, marker="o", label=kept),
        Line2D([], [], color=_PRUNED, marker="o", label=pruned),
    ]


def plot_relevance_forest(
    data: Any,
    *,
    n_top: int = 10,
    n_bottom: int = 10,
    sites: str | Sequence[str] | None = None,
    hdi_prob: float = 0.94,
    ax: Axes | None = None,
    threshold: float | None = None,
    by: str = "snr",
    feature_names: Sequence[str] | None = None,
) -> Axes:
    """Posterior mean and HDI of the ``n_top`` most and ``n_bottom`` least relevant weights.

    Rows run from the most relevant weight (``result.relevance(by)``) at the top down to the least
    relevant at the bottom, labelled ``site[i, j] (relevance)`` (``j`` by its name from
    ``feature_names`` for the first weight site); kept weights are drawn in blue, pruned ones in
    grey. A dotted line separates the two groups when weights in between are left out.

    Args:
        data: a ``FitResult`` or its ``to_arviz()`` ``InferenceData``.
        n_top, n_bottom: how many of the most and least relevant weights to show.
        sites: weight sites to rank (default: all of them, ranked together).
        hdi_prob: probability mass of the highest-density intervals.
        ax: axes to draw on (default: a new figure).
        threshold: keep relevance above it (default: the data's keep-masks).
        by: relevance rule, ``"snr"`` or ``"ard"`` (a VADAM-ARD ``FitResult``).
        feature_names: names of the first weight site's inputs.
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
    threshold = _check_threshold(threshold)
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {ax!r}")
    source = _Relevance(data, by)
    chosen = source.select(sites)
    names = _check_feature_names(feature_names, source, chosen)
    ranked = _RankedWeights(source, chosen, source.kept(threshold), names)
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
    ax.legend(handles=_kept_legend(source.rule, threshold), loc="best")
    return ax


def _matrix(values: np.ndarray, reduce: str) -> np.ndarray:
    """A weight array as (output neurons, input neurons); kernel dims reduced by mean or max."""
    if values.ndim == 1:
        return values[None, :]
    flat = values.reshape(*values.shape[:2], -1)
    return flat.mean(axis=-1) if reduce == "mean" else flat.max(axis=-1)


def _panels(
    axes: list[Axes] | None, n: int, width: float = 4.5, height: float = 3.5
) -> tuple[Figure, list[Axes]]:
    """The given axes and their figure, or a new figure of ``n`` panels side by side."""
    if axes is not None:
        return axes[0].figure, axes
    fig, new = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(new[0])


def _title(site: str, kept: np.ndarray, rule: str | None) -> str:
    return f"{site}: {int(kept.sum())} of {kept.size} kept" + (f" ({rule})" if rule else "")


def _heatmap(values: np.ndarray, **options: Any) -> None:
    """``seaborn.heatmap`` without its matplotlib deprecation notice (``Colormap.set_bad``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module="seaborn")
        sns.heatmap(values, **options)


def plot_relevance_heatmap(
    data: Any,
    *,
    value: str = "relevance",
    sites: str | Sequence[str] | None = None,
    threshold: float | None = None,
    by: str = "snr",
    feature_names: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """One heatmap per layer: rows are output neurons, columns input neurons.

    ``value="kept"`` shows the keep-mask (1 kept, 0 pruned): relevance above ``threshold``, or by
    default the data's (``result.masks(by=by)``). ``value="relevance"`` shows ``log10`` of the
    relevance on a diverging scale centred at the threshold (default: the fixed rule's,
    ``SNR_THRESHOLD`` or ``ARD_THRESHOLD``; its colorbar says which), red above and blue below;
    relevance outside the rule's drawable range (:data:`RELEVANCE_FLOOR`) is drawn at its ends.
    Convolution kernels are summarised per (output, input) channel pair: the fraction kept, or
    the largest relevance. Titles count the kept weights. ``feature_names`` label the first
    weight site's columns; ``ax`` takes one axes per weight site drawn. Returns the figure.
    """
    check_choice(value, "value", ("relevance", "kept"))
    threshold = _check_threshold(threshold)
    source = _Relevance(data, by)
    chosen = source.select(sites)
    names = _check_feature_names(feature_names, source, chosen)
    axes = _check_axes(ax, len(chosen), chosen)
    kept = source.kept(threshold)
    rule = source.rule
    centre = rule.default if threshold is None else threshold
    colorbar = (
        f"log10 {rule.symbol}; centre {math.log10(centre) + 0.0:.3g} ({rule.symbol} = {centre:.3g})"
    )
    fig, axes = _panels(axes, len(chosen))
    for panel, site in zip(axes, chosen, strict=True):
        named = names is not None and site == source.sites[0]
        labels: Any = names if named else "auto"
        if value == "kept":
            _heatmap(
                _matrix(kept[site].astype(float), "mean"),
                ax=panel,
                vmin=0.0,
                vmax=1.0,
                cmap="Blues",
                xticklabels=labels,
                cbar_kws={"label": "kept"},
            )
        else:
            _heatmap(
                np.log10(_matrix(source.drawn(site), "max")),
                ax=panel,
                center=math.log10(centre),
                cmap="RdBu_r",
                xticklabels=labels,
                cbar_kws={"label": colorbar},
            )
        if named:
            plt.setp(panel.get_xticklabels(), rotation=45, ha="right")
        panel.set_xlabel("input feature" if named else "input neuron")
        by_threshold = None if threshold is None else f"{rule.symbol} > {threshold:.3g}"
        panel.set_title(_title(site, kept[site], by_threshold))
        panel.set_ylabel("output neuron")
    if ax is None:
        fig.tight_layout()
    return fig


def plot_relevance_histogram(
    data: Any,
    *,
    kind: str = "relevance",
    sites: str | Sequence[str] | None = None,
    threshold: float | None = None,
    bins: int = 30,
    by: str = "snr",
    feature_names: Sequence[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """One histogram per layer of the weights' relevance, kept weights stacked under pruned ones.

    ``kind`` picks the x axis: ``"relevance"`` (the rule ``by`` itself on a log axis: SNR
    ``|mean| / sd``, or the ARD prior variance ``1 / E[psi]``), ``"log_alpha"`` (``by="snr"``:
    sparse variational dropout's ``log_alpha = log(sd^2 / mean^2) = -2 log(SNR)``, kept weights
    on the left) or ``"precision"`` (``by="ard"``: ``E[psi]`` on a log axis, kept weights on the
    left). ``threshold`` is given on the relevance scale, as for ``result.masks(threshold, by)``
    (SparseVD's ``log_alpha < 3`` is ``threshold=math.exp(-1.5)``); it is drawn as a dashed
    line on the plotted scale and the title names the kept side, e.g. ``w: 12 of 32 kept
    (log alpha < 3)``. Without one, the colours follow the data's keep-masks. Relevance outside the
    rule's drawable range (:data:`RELEVANCE_FLOOR`) is counted at its ends. ``feature_names``
    marks each input of the first weight site on its panel at its most relevant outgoing weight
    (coloured kept if any of them is kept); ``ax`` takes one axes per weight site drawn.
    """
    check_choice(kind, "kind", _KINDS)
    bins = check_positive_int(bins, "bins")
    threshold = _check_threshold(threshold)
    check_choice(by, "by", tuple(_RULES))
    if (by, kind) not in _SCALES:
        needs = {"log_alpha": "snr", "precision": "ard"}[kind]
        raise ValueError(f"kind={kind!r} is a scale of by={needs!r}, got by={by!r}")
    source = _Relevance(data, by)
    chosen = source.select(sites)
    names = _check_feature_names(feature_names, source, chosen)
    axes = _check_axes(ax, len(chosen), chosen)
    scale = _SCALES[by, kind]
    kept = source.kept(threshold)
    fig, axes = _panels(axes, len(chosen), height=3.0)
    for panel, site in zip(axes, chosen, strict=True):
        values = scale.transform(source.drawn(site).ravel())
        keep = kept[site].ravel()
        edges = np.histogram_bin_edges(np.log10(values) if scale.log_axis else values, bins)
        if scale.log_axis:  # exact ends: 10 ** log10(v) may miss v, and hist drops what is out
            edges = np.concatenate([[values.min()], 10 ** edges[1:-1], [values.max()]])
        panel.hist(
            [values[keep], values[~keep]],
            bins=edges,
            stacked=True,
            color=[_KEPT, _PRUNED],
        )
        if scale.log_axis:
            panel.set_xscale("log")
        handles: list[Any] = [
            Patch(color=_KEPT, label="kept"),
            Patch(color=_PRUNED, label="pruned"),
        ]
        rule = None
        if threshold is not None:
            line = float(scale.transform(threshold))
            label = f"threshold {scale.symbol} = {line:.3g}"
            handles.append(panel.axvline(line, color="k", linestyle="--", label=label))
            rule = scale.kept_rule(line)
        if names is not None and site == source.sites[0]:
            _mark_features(panel, source, site, kept[site], scale, names)
        panel.set_title(_title(site, kept[site], rule))
        panel.set_xlabel(scale.label)
        panel.set_ylabel("weights")
        panel.legend(handles=handles, loc="best")
    if ax is None:
        fig.tight_layout()
    return fig


def _mark_features(
    ax: Axes, source: _Relevance, site: str, kept: np.ndarray, scale: _Scale, names: list[str]
) -> None:
    """Each input's name at its most relevant outgoing weight, coloured kept if any one is."""
    others = tuple(d for d in range(kept.ndim) if d != 1)
    where = scale.transform(source.drawn(site).max(axis=others))
    any_kept = kept.any(axis=others)
    ax.plot(where, np.zeros(len(names)), "|", color="k", markersize=12,
            transform=ax.get_xaxis_transform(), gid="features")  # fmt: skip
    for x, name, keep in zip(where, names, any_kept, strict=True):
        ax.text(x, 0.97, name, rotation=90, ha="center", va="top", fontsize="x-small",
                color=_KEPT if keep else _PRUNED, transform=ax.get_xaxis_transform())  # fmt: skip
