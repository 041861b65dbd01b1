"""Figures for sparse BNN results: weight relevance, pruning masks, Pareto fronts, calibration and
MCMC diagnostics.

Every function returns matplotlib objects (an ``Axes``, or a ``Figure`` when it draws one panel per
layer) and never calls ``plt.show``. The relevance plots (forest, heatmap, histogram) take a
``FitResult`` and read only what they draw: ``result.relevance(by)``, the keep-masks
``result.masks(by=by)`` (or ``relevance > threshold``) and, for the forest, the weight draws; no
posterior predictive is computed. The ``InferenceData`` of ``result.to_arviz()`` works too (its
``posterior`` and ``relevance`` groups). Each of them also takes

* ``threshold=``: keep the weights whose relevance is above it, as ``result.masks(threshold, by)``
  does (default: the data's own keep-masks); always given on the relevance scale of ``by``, and
  shown on the scale the plot draws;
* ``feature_names=``: names of the first weight site's inputs, used as its input-axis labels;
* ``ax=``: the axes to draw into (a sequence of them, one per weight site, for the plots that draw
  one panel per layer).

Relevance rules (``by``): ``"snr"``, the posterior signal-to-noise ``|mean| / sd`` (any method;
sparse variational dropout's ``log_alpha = -2 log(SNR)``); ``"ard"`` (``fit(method="vadam",
ard=True)``), the learned ARD prior variance ``1 / E[psi]`` (its precision is ``E[psi]``).
ArviZ is only called through :mod:`pyro_sparse_bnn.arviz`.

>>> import math
>>> import pyro_sparse_bnn as psb
>>> X, y = psb.datasets.load("iris")
>>> prior, likelihood = psb.priors.Horseshoe(0.1), psb.likelihoods.Categorical()
>>> bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), prior, likelihood)
>>> fit = psb.fit(bnn, X, y, epochs=50, num_posterior_samples=50, progress=False)
>>> ax = plot_relevance_forest(fit, n_top=5, n_bottom=5)  # kept: fit.masks()
>>> len(ax.get_yticklabels())
10
>>> names = ["sepal length", "sepal width", "petal length", "petal width"]
>>> fig = plot_relevance_heatmap(fit, value="kept", threshold=1.0, feature_names=names)
>>> [a.get_title().split(":")[0] for a in fig.axes if a.get_title()]
['0.weight', '2.weight']
>>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
['sepal length', 'sepal width', 'petal length', 'petal width']
>>> fig = plot_relevance_histogram(fit, kind="log_alpha", threshold=math.exp(-1.5))
>>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
['kept', 'pruned', 'threshold log alpha = 3']
>>> fig.axes[0].get_title().split(": ")[1]  # doctest: +ELLIPSIS
'... of 32 kept (log alpha < 3)'
>>> ax = plot_calibration(fit.predict(X)["probs"], y)
"""

from .diagnostics import plot_calibration, plot_rank, plot_trace
from .pareto import ParetoFronts, pareto_front, pareto_fronts, plot_pareto
from .relevance import plot_relevance_forest, plot_relevance_heatmap, plot_relevance_histogram
from .sources import RELEVANCE_FLOOR

__all__ = [
    "RELEVANCE_FLOOR",
    "ParetoFronts",
    "pareto_front",
    "pareto_fronts",
    "plot_calibration",
    "plot_pareto",
    "plot_rank",
    "plot_relevance_forest",
    "plot_relevance_heatmap",
    "plot_relevance_histogram",
    "plot_trace",
]
