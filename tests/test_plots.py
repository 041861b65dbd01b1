"""Plots render headless (Agg, set in conftest) and draw the numbers they claim to draw.

The fixture is a ``FitResult`` of a small hand-written model whose draws are built so that every
weight's posterior mean, sd and hence relevance ``|mean| / sd`` is known exactly.
"""

import itertools
import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection, QuadMesh
from matplotlib.colors import to_rgba

import pyro_sparse_bnn as psb
from pyro_sparse_bnn import plots
from pyro_sparse_bnn.infer.posterior import ARDPosterior

# Posterior means and sds of the two weight sites; relevance = |mean| / sd.
W_MEAN = torch.tensor([[4.0, -3.0, 0.2], [0.0, 1.5, -0.5]])
W_SD = torch.ones(2, 3)
U_MEAN = torch.tensor([2.0, 0.1, -6.0])
U_SD = torch.tensor([1.0, 1.0, 2.5])
W_SNR = (W_MEAN.abs() / W_SD).numpy()
U_SNR = (U_MEAN.abs() / U_SD).numpy()
# Every weight, most relevant first: (label, relevance).
RANKED = [
    ("w[0, 0]", 4.0),
    ("w[0, 1]", 3.0),
    ("u[2]", 2.4),
    ("u[0]", 2.0),
    ("w[1, 1]", 1.5),
    ("w[1, 2]", 0.5),
    ("w[0, 2]", 0.2),
    ("u[1]", 0.1),
    ("w[1, 0]", 0.0),
]
HDI_94 = 1.8808  # half-width of the 94% HDI of a standard normal: Phi^-1(0.97)
SPARSE_VD = math.exp(-1.5)  # SNR threshold of SparseVD's log_alpha < 3
# Learned ARD prior variances 1 / E[psi] of a VADAM-ARD-like result.
W_VAR = torch.tensor([[1.0, 1e-6, 3e-4], [5e-5, 2.0, 1e-9]])
U_VAR = torch.tensor([0.5, 1e-5, 1e-3])
FEATURES = ["age", "dose", "weight"]  # the inputs of the first weight site, w: (2, 3)


def model(x, y=None):
    w = psb.priors.Normal(1.0).sample("w", (2, 3))
    u = psb.priors.Normal(1.0).sample("u", (3,))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal((x * (w.sum(-2) + u)).sum(-1), 1.0), obs=y)


def exact_draws(mean, sd, chains, draws, generator):
    """Standard normal quantiles at (k + 1/2) / n, shuffled per weight, then scaled so that the
    sample mean and (unbiased) sd are exactly ``mean`` and ``sd``: HDIs match theory closely."""
    n = chains * draws
    grid = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(n) + 0.5) / n).double()
    z = torch.stack([grid[torch.randperm(n, generator=generator)] for _ in range(mean.numel())], -1)
    z = (z - z.mean(0)) / z.std(0)
    return (mean + sd * z.reshape(n, *mean.shape)).reshape(chains, draws, *mean.shape).float()


@pytest.fixture(scope="module")
def result():
    gen = torch.Generator().manual_seed(0)
    samples = {
        "w": exact_draws(W_MEAN, W_SD, 2, 300, gen),
        "u": exact_draws(U_MEAN, U_SD, 2, 300, gen),
    }
    x = torch.randn(10, 3, generator=gen)
    stats = {"diverging": torch.zeros(2, 300, dtype=torch.bool)}
    return psb.FitResult(model, samples, method="test", x=x, y=torch.zeros(10), sample_stats=stats)


@pytest.fixture(scope="module")
def ard_result(result):
    return psb.FitResult(
        model,
        result.samples,
        method="test_ard",
        x=result.x,
        y=result.y,
        posterior=ARDPosterior({"w": W_VAR, "u": U_VAR}),
    )


@pytest.fixture(scope="module")
def idata(result):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test one-thread pin
    try:
        return result.to_arviz(masks=result.masks(1.0))  # kept: posterior SNR > 1
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_show_and_close(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("plots must never call plt.show")

    monkeypatch.setattr(plt, "show", forbidden)
    yield
    plt.close("all")


@pytest.fixture
def no_predictive(monkeypatch):
    """A FitResult can neither convert itself to InferenceData nor run its predictive."""

    def forbidden(*args, **kwargs):
        raise AssertionError("relevance plots must not run to_arviz or the posterior predictive")

    monkeypatch.setattr(psb.FitResult, "to_arviz", forbidden)
    monkeypatch.setattr(psb.FitResult, "_summaries", forbidden)


def tick_names(ax):
    return [t.get_text().rsplit(" (", 1)[0] for t in ax.get_yticklabels()]


def titled(fig):
    """The panels of a figure (its colorbars have no title)."""
    return [ax for ax in fig.axes if ax.get_title()]


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


# Relevance forest


def test_forest_shows_the_most_and_least_relevant_weights_with_normal_hdis(idata):
    ax = plots.plot_relevance_forest(idata, n_top=3, n_bottom=2)
    assert tick_names(ax) == [name for name, _ in RANKED[:3] + RANKED[-2:]]
    shown_relevance = [float(t.get_text().rsplit("(", 1)[1][:-1]) for t in ax.get_yticklabels()]
    assert shown_relevance == pytest.approx([r for _, r in RANKED[:3] + RANKED[-2:]], abs=1e-3)
    means = {"w[0, 0]": 4.0, "w[0, 1]": -3.0, "u[2]": -6.0, "u[1]": 0.1, "w[1, 0]": 0.0}
    sds = {"w[0, 0]": 1.0, "w[0, 1]": 1.0, "u[2]": 2.5, "u[1]": 1.0, "w[1, 0]": 1.0}
    (segments,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    # Rows run top (y = 4) to bottom (y = 0); HDI ends within 0.02 sd of the normal's.
    rows = zip(tick_names(ax), segments.get_segments(), points.get_offsets(), strict=True)
    for name, segment, point in rows:
        mu, sd = means[name], sds[name]
        assert point[0] == pytest.approx(mu, abs=1e-5)
        assert segment[0, 0] == pytest.approx(mu - HDI_94 * sd, abs=0.02 * sd)
        assert segment[1, 0] == pytest.approx(mu + HDI_94 * sd, abs=0.02 * sd)
        assert segment[0, 1] == point[1]
    kept = [tuple(c) for c in segments.get_colors()]
    assert kept[:3] == [kept[0]] * 3 and kept[3:] == [kept[3]] * 2 and kept[0] != kept[3]
    separators = [line for line in ax.get_lines() if line.get_ydata()[0] == 1.5]
    assert len(separators) == 1  # between the 3 shown at the top and the 2 at the bottom
    assert ax.get_title() == "3 most and 2 least relevant weights"
    assert "94% HDI" in ax.get_xlabel()
    assert legend_texts(ax) == ["kept", "pruned"]


def test_forest_never_repeats_a_weight_and_can_rank_one_site(result, idata):
    ax = plots.plot_relevance_forest(result, n_top=8, n_bottom=8)  # a FitResult works too
    assert tick_names(ax) == [name for name, _ in RANKED]
    assert not [line for line in ax.get_lines() if line.get_ydata()[0] % 1 == 0.5]
    ax = plots.plot_relevance_forest(idata, n_top=1, n_bottom=1, sites="u")
    assert tick_names(ax) == ["u[2]", "u[1]"]


def test_forest_threshold_feature_names_and_axes(result, no_predictive):
    _, ax = plt.subplots()
    drawn = plots.plot_relevance_forest(
        result, n_top=9, n_bottom=0, threshold=np.float32(1.8), feature_names=FEATURES, ax=ax
    )
    assert drawn is ax and plt.get_fignums() == [ax.figure.number]
    names = [n.replace("[0, 0]", "[0, age]").replace("[0, 1]", "[0, dose]") for n, _ in RANKED]
    names = [n.replace("[1, 1]", "[1, dose]").replace("[1, 2]", "[1, weight]") for n in names]
    names = [n.replace("[0, 2]", "[0, weight]").replace("[1, 0]", "[1, age]") for n in names]
    assert tick_names(ax) == names  # u, not the first weight site, keeps its indices
    (segments,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    colors = [tuple(c) for c in segments.get_colors()]
    kept = [relevance > 1.8 for _, relevance in RANKED]  # 4, 3, 2.4, 2.0 kept
    assert [c == colors[0] for c in colors] == kept
    assert legend_texts(ax) == ["kept (SNR > 1.8)", "pruned (SNR ≤ 1.8)"]


# Relevance heatmap


def red_cells(ax):
    """Per cell of a heatmap, whether its colour is red (more red than blue)."""
    mesh = ax.collections[0]
    colors = mesh.cmap(mesh.norm(np.ravel(mesh.get_array())))
    return (colors[:, 0] > colors[:, 2]).tolist()


def test_heatmap_cells_are_the_keep_mask_and_log_relevance(idata):
    fig = plots.plot_relevance_heatmap(idata, value="kept")
    panels = titled(fig)
    assert [ax.get_title() for ax in panels] == ["w: 3 of 6 kept", "u: 2 of 3 kept"]
    w_cells, u_cells = (ax.collections[0] for ax in panels)
    assert isinstance(w_cells, QuadMesh)
    assert np.array_equal(w_cells.get_array(), [[1, 1, 0], [0, 1, 0]])
    assert np.array_equal(u_cells.get_array(), [[1, 0, 1]])  # a 1-D weight is one row
    assert panels[0].get_xlabel() == "input neuron" and panels[0].get_ylabel() == "output neuron"

    fig = plots.plot_relevance_heatmap(idata, value="relevance", sites=["w"])
    (panel,) = titled(fig)
    expected = np.log10(np.maximum(W_SNR, plots.RELEVANCE_FLOOR))
    assert np.allclose(panel.collections[0].get_array(), expected, atol=1e-4)
    assert red_cells(panel) == (W_SNR > 1).ravel().tolist()  # the scale is centred at SNR 1
    (colorbar,) = [ax for ax in fig.axes if not ax.get_title()]
    assert colorbar.get_ylabel() == "log10 SNR; centre 0 (SNR = 1)"


def test_heatmap_threshold_feature_names_and_given_axes(result, no_predictive):
    fig, axes = plt.subplots(1, 2)
    drawn = plots.plot_relevance_heatmap(
        result, value="kept", threshold=np.float32(1.0), feature_names=FEATURES, ax=axes
    )
    assert drawn is fig and plt.get_fignums() == [fig.number]
    assert [ax.get_title() for ax in axes] == [
        "w: 3 of 6 kept (SNR > 1)",
        "u: 2 of 3 kept (SNR > 1)",
    ]
    assert np.array_equal(axes[0].collections[0].get_array(), [[1, 1, 0], [0, 1, 0]])
    assert [t.get_text() for t in axes[0].get_xticklabels()] == FEATURES
    assert axes[0].get_xlabel() == "input feature"
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["0", "1", "2"]

    # The diverging scale is centred at the threshold: red above it, blue below.
    _, ax = plt.subplots()
    plots.plot_relevance_heatmap(result, sites="u", threshold=2.2, ax=ax)
    assert red_cells(ax) == [False, False, True]
    assert ax.figure.axes[1].get_ylabel() == "log10 SNR; centre 0.342 (SNR = 2.2)"
    assert ax.get_title() == "u: 1 of 3 kept (SNR > 2.2)"


# Relevance histogram


def histogram_counts(ax, bins, values=None):
    """The stacked bars: bin edges and the kept and pruned counts per bin. With ``values``, the
    outer edges must be their extremes (and are set to them exactly: a bar's far end carries
    rounding)."""
    bars = ax.patches
    assert len(bars) == 2 * bins
    edges = [p.get_x() for p in bars[:bins]] + [bars[bins - 1].get_x() + bars[bins - 1].get_width()]
    if values is not None:
        assert edges[0] == pytest.approx(values.min(), rel=1e-9)
        assert edges[-1] == pytest.approx(values.max(), rel=1e-9)
        edges[0], edges[-1] = values.min(), values.max()
    heights = np.array([p.get_height() for p in bars]).reshape(2, bins)
    return np.array(edges), heights[0], heights[1]


def threshold_line(ax):
    (line,) = [line for line in ax.get_lines() if line.get_label().startswith("threshold")]
    assert line.get_xdata()[0] == line.get_xdata()[1]
    return line.get_xdata()[0], line.get_label()


@pytest.mark.parametrize(
    ("kind", "threshold", "title", "line", "legend"),
    [
        ("relevance", 1.0, "kept (SNR > 1)", 1.0, "threshold SNR = 1"),
        ("log_alpha", 1.0, "kept (log alpha < 0)", 0.0, "threshold log alpha = 0"),
        ("relevance", SPARSE_VD, "kept (SNR > 0.223)", SPARSE_VD, "threshold SNR = 0.223"),
        ("log_alpha", SPARSE_VD, "kept (log alpha < 3)", 3.0, "threshold log alpha = 3"),
    ],
)
def test_histogram_counts_every_weight_and_names_the_kept_side(
    idata, kind, threshold, title, line, legend
):
    fig = plots.plot_relevance_histogram(idata, kind=kind, bins=5, threshold=threshold)
    panels = titled(fig)
    for ax, site, exact in zip(panels, ["w", "u"], [W_SNR, U_SNR], strict=True):
        kept = exact.ravel() > threshold
        assert ax.get_title() == f"{site}: {kept.sum()} of {kept.size} {title}"
        relevance = idata.relevance[f"{site}_relevance"].values.ravel().astype(np.float64)
        assert relevance == pytest.approx(exact.ravel(), abs=1e-5)
        values = np.maximum(relevance, plots.RELEVANCE_FLOOR)
        if kind == "log_alpha":
            values = -2 * np.log(values)
        edges, kept_counts, pruned_counts = histogram_counts(ax, 5, values)
        assert kept_counts.sum() + pruned_counts.sum() == values.size  # every weight counted
        assert np.array_equal(kept_counts, np.histogram(values[kept], edges)[0])
        assert np.array_equal(pruned_counts, np.histogram(values[~kept], edges)[0])
        x, label = threshold_line(ax)
        assert x == pytest.approx(line, abs=1e-12) and label == legend
        # the kept weights lie on the side of the line the title names
        assert (values[kept] > x).all() if kind == "relevance" else (values[kept] < x).all()
        assert legend_texts(ax) == ["kept", "pruned", legend]
        assert ax.get_xscale() == ("log" if kind == "relevance" else "linear")
        assert ax.get_ylabel() == "weights"
    assert panels[0].get_xlabel() == (
        "relevance |mean| / sd"
        if kind == "relevance"
        else "log alpha = log(sd² / mean²) = -2 log(SNR)"
    )


def test_histogram_without_threshold_colours_the_datas_masks(idata):
    fig = plots.plot_relevance_histogram(idata, bins=4)
    w_panel = titled(fig)[0]
    assert w_panel.get_title() == "w: 3 of 6 kept"  # to_arviz's masks: SNR > 1
    _, kept_counts, pruned_counts = histogram_counts(w_panel, 4)
    assert kept_counts.sum() == 3 and pruned_counts.sum() == 3
    assert not [line for line in w_panel.get_lines() if line.get_label().startswith("threshold")]
    assert legend_texts(w_panel) == ["kept", "pruned"]


def test_histogram_of_a_result_uses_its_default_masks_without_to_arviz(result, monkeypatch):
    monkeypatch.setattr(psb.FitResult, "to_arviz", lambda *a, **k: pytest.fail("to_arviz ran"))
    masks = result.masks()
    fig = plots.plot_relevance_histogram(result, kind="log_alpha")
    for ax, site in zip(titled(fig), ["w", "u"], strict=True):
        kept = masks[site].numpy()
        assert ax.get_title() == f"{site}: {kept.sum()} of {kept.size} kept"
        assert histogram_counts(ax, 30)[1].sum() == kept.sum()


@pytest.mark.parametrize(
    ("kind", "title", "line", "legend"),
    [
        ("relevance", "kept (1/E[psi] > 0.0001)", 1e-4, "threshold 1/E[psi] = 0.0001"),
        ("precision", "kept (E[psi] < 1e+04)", 1e4, "threshold E[psi] = 1e+04"),
    ],
)
def test_histogram_of_ard_variances_and_precisions(
    ard_result, no_predictive, kind, title, line, legend
):
    fig = plots.plot_relevance_histogram(
        ard_result, by="ard", kind=kind, threshold=psb.sparsity.ARD_THRESHOLD, bins=6
    )
    for ax, site, variance in zip(titled(fig), ["w", "u"], [W_VAR, U_VAR], strict=True):
        kept = variance.numpy().ravel() > 1e-4
        assert ax.get_title() == f"{site}: {kept.sum()} of {kept.size} {title}"
        x, label = threshold_line(ax)
        assert x == pytest.approx(line, rel=1e-9) and label == legend
        values = variance.numpy().ravel().astype(np.float64)
        values = values if kind == "relevance" else 1.0 / values
        edges, kept_counts, pruned_counts = histogram_counts(ax, 6, values)
        assert kept_counts.sum() + pruned_counts.sum() == values.size
        assert np.array_equal(kept_counts, np.histogram(values[kept], edges)[0])
        assert np.array_equal(pruned_counts, np.histogram(values[~kept], edges)[0])
        assert ax.get_xscale() == "log"
    assert "ARD" in ax.get_xlabel()


def test_histogram_marks_each_feature_at_its_most_relevant_weight(idata):
    fig = plots.plot_relevance_histogram(
        idata, kind="log_alpha", threshold=1.0, feature_names=FEATURES
    )
    w_panel, u_panel = titled(fig)
    marks = {t.get_text(): t for t in w_panel.texts}
    assert list(marks) == FEATURES and not u_panel.texts
    best = W_SNR.max(axis=0)  # per input column: 4, 3, 0.5
    for name, snr in zip(FEATURES, best, strict=True):
        assert marks[name].get_position()[0] == pytest.approx(-2 * math.log(snr), abs=1e-5)
    # every input keeps a weight of SNR > 1 except "weight" (0.2, 0.5)
    colors = [to_rgba(marks[name].get_color()) for name in FEATURES]
    assert colors[0] == colors[1] != colors[2]
    (ticks,) = [line for line in w_panel.get_lines() if line.get_gid() == "features"]
    assert ticks.get_xdata() == pytest.approx(-2 * np.log(best), abs=1e-5)


def test_histogram_draws_into_the_given_axes(idata):
    fig, axes = plt.subplots(2, 1)
    assert plots.plot_relevance_histogram(idata, ax=axes, threshold=1) is fig
    assert [ax.get_title() for ax in axes] == [
        "w: 3 of 6 kept (SNR > 1)",
        "u: 2 of 3 kept (SNR > 1)",
    ]
    _, ax = plt.subplots()
    assert plots.plot_relevance_histogram(idata, sites="u", ax=ax).axes == [ax]
    assert plt.get_fignums() == [1, 2]


# Bad input, and what a FitResult is asked for


THRESHOLD_PLOTS = {
    "forest": plots.plot_relevance_forest,
    "heatmap": plots.plot_relevance_heatmap,
    "histogram": plots.plot_relevance_histogram,
}


@pytest.mark.parametrize("plot", THRESHOLD_PLOTS.values(), ids=THRESHOLD_PLOTS)
@pytest.mark.parametrize("threshold", [1, 1.0, np.float32(1.0), np.float64(1.0), np.int64(1)])
def test_every_relevance_plot_takes_numeric_thresholds(idata, plot, threshold):
    drawn = plot(idata, threshold=threshold)
    ax = drawn if isinstance(drawn, plt.Axes) else titled(drawn)[0]
    if plot is plots.plot_relevance_forest:
        assert legend_texts(ax)[0] == "kept (SNR > 1)"
    else:
        assert ax.get_title() == "w: 3 of 6 kept (SNR > 1)"


@pytest.mark.parametrize("plot", THRESHOLD_PLOTS.values(), ids=THRESHOLD_PLOTS)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"threshold": True}, TypeError, "threshold"),
        ({"threshold": "1"}, TypeError, "threshold"),
        ({"threshold": torch.tensor(1.0)}, TypeError, "threshold"),
        ({"threshold": 0.0}, ValueError, "threshold"),
        ({"threshold": -1.0}, ValueError, "threshold"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"threshold": np.float32("inf")}, ValueError, "threshold"),
        ({"feature_names": ["a", "b"]}, ValueError, "feature_names must have 3 names"),
        ({"feature_names": "abc"}, TypeError, "feature_names"),
        ({"feature_names": [1, 2, 3]}, TypeError, "feature_names"),
        ({"feature_names": 3}, TypeError, "feature_names"),
        ({"feature_names": FEATURES, "sites": "u"}, ValueError, "feature_names.*'w'"),
        ({"by": "ard"}, ValueError, "by"),
        ({"by": "kappa"}, ValueError, "by"),
        ({"ax": "left"}, TypeError, "ax"),
    ],
)
def test_relevance_plots_refuse_bad_arguments_before_drawing(idata, plot, kwargs, error, match):
    with pytest.raises(error, match=match):
        plot(idata, **kwargs)
    assert not plt.get_fignums()


@pytest.mark.parametrize("plot", [plots.plot_relevance_heatmap, plots.plot_relevance_histogram])
def test_panel_plots_need_one_axes_per_site(idata, plot):
    fig, axes = plt.subplots(1, 3)
    with pytest.raises(ValueError, match=r"ax must be 2 axes, one per weight site \['w', 'u'\]"):
        plot(idata, ax=axes)
    with pytest.raises(ValueError, match="ax must be 2 axes"):
        plot(idata, ax=axes[0])
    with pytest.raises(TypeError, match="ax must hold matplotlib Axes"):
        plot(idata, ax=[axes[0], fig])
    assert not any(ax.has_data() for ax in axes)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda d: plots.plot_relevance_forest(d, n_top=0, n_bottom=0), ValueError, "at least 1"),
        (lambda d: plots.plot_relevance_forest(d, n_top=-1), ValueError, "n_top"),
        (lambda d: plots.plot_relevance_forest(d, n_top=2.0), TypeError, "n_top"),
        (lambda d: plots.plot_relevance_forest(d, hdi_prob=1.5), ValueError, "hdi_prob"),
        (lambda d: plots.plot_relevance_forest(d, sites="v"), ValueError, "sites"),
        (lambda d: plots.plot_relevance_forest(d, ax=[]), TypeError, "ax"),
        (lambda d: plots.plot_relevance_heatmap(d, value="mask"), ValueError, "value"),
        (lambda d: plots.plot_relevance_histogram(d, kind="snr"), ValueError, "kind"),
        (lambda d: plots.plot_relevance_histogram(d, kind="precision"), ValueError, "kind"),
        (lambda d: plots.plot_relevance_histogram(d, bins=0), ValueError, "bins"),
        (lambda d: plots.plot_trace(d, n_weights=0), ValueError, "n_weights"),
        (lambda d: plots.plot_relevance_forest({"posterior": 1}), TypeError, "InferenceData"),
    ],
)
def test_bad_arguments_fail_before_drawing(idata, call, error, match):
    with pytest.raises(error, match=match):
        call(idata)
    assert not plt.get_fignums()


def test_ard_rule_needs_an_ard_result(result, ard_result):
    with pytest.raises(ValueError, match="by='ard' needs fit"):
        plots.plot_relevance_forest(result, by="ard")
    with pytest.raises(ValueError, match="kind='log_alpha' is a scale of by='snr'"):
        plots.plot_relevance_histogram(ard_result, by="ard", kind="log_alpha")
    ax = plots.plot_relevance_forest(ard_result, by="ard", n_top=2, n_bottom=0, threshold=1e-4)
    assert tick_names(ax) == ["w[1, 1]", "w[0, 0]"]  # the largest prior variances: 2 and 1
    assert legend_texts(ax)[0] == "kept (1/E[psi] > 0.0001)"


def test_arguments_are_checked_before_reading_a_result(result, monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("read the result before checking the arguments")

    for name in ("to_arviz", "relevance", "masks"):
        monkeypatch.setattr(psb.FitResult, name, fail)
    with pytest.raises(ValueError, match="hdi_prob"):
        plots.plot_relevance_forest(result, hdi_prob=2.0)
    with pytest.raises(ValueError, match="bins"):
        plots.plot_relevance_histogram(result, bins=0)
    with pytest.raises(ValueError, match="threshold"):
        plots.plot_relevance_heatmap(result, threshold=-1)
    with pytest.raises(ValueError, match="feature_names"):
        plots.plot_relevance_heatmap(result, feature_names=["a"])
    with pytest.raises(ValueError, match="ax"):
        plots.plot_relevance_histogram(result, ax=plt.subplots(1, 3)[1])
    with pytest.raises(ValueError, match="n_weights"):
        plots.plot_trace(result, n_weights=0)


def test_a_result_is_plotted_from_its_relevance_and_masks_only(result, idata, no_predictive):
    """With a threshold, nothing but ``relevance()`` and the draws; the figures equal those of
    the InferenceData (which must keep working)."""
    for data in (result, idata):
        forest = plots.plot_relevance_forest(data, n_top=3, n_bottom=2, threshold=1.0)
        assert tick_names(forest) == [name for name, _ in RANKED[:3] + RANKED[-2:]]
        heatmap = plots.plot_relevance_heatmap(data, value="kept", threshold=1.0)
        assert titled(heatmap)[0].get_title() == "w: 3 of 6 kept (SNR > 1)"
        histogram = plots.plot_relevance_histogram(data, kind="log_alpha", threshold=1.0)
        assert threshold_line(titled(histogram)[0])[0] == 0.0
    axes = plots.plot_trace(result, n_weights=2)
    assert [ax.get_title() for ax in axes[:, 0]] == ["w[0, 0]", "w[0, 1]"]
    axes = plots.plot_trace(result, var_names=["u"], compact=True)
    assert axes.shape == (1, 2) and axes[0, 0].get_title() == "u"


def test_inference_data_without_relevance_is_refused():
    bare = psb.arviz.to_inference_data(posterior={"w": np.zeros((1, 5, 2))})
    with pytest.raises(ValueError, match="relevance"):
        plots.plot_relevance_heatmap(bare)


# Pareto fronts


def brute_force_front(rows, x="n_kept", y="test_error"):
    """The rows no other row dominates: no worse on both and better on one."""
    return [
        r
        for r in rows
        if not any(s[x] <= r[x] and s[y] <= r[y] and (s[x] < r[x] or s[y] < r[y]) for s in rows)
    ]


def random_rows(rng, n, methods=("a", "b", "c"), seeds=(0, 1, 2)):
    """Rows on a coarse grid, so that ties and exact duplicates are common."""
    return [
        {
            "id": i,
            "method": str(rng.choice(methods)),
            "seed": int(rng.choice(seeds)),
            "n_kept": int(rng.integers(1, 12)),
            "test_error": float(rng.integers(0, 8)) / 8,
        }
        for i in range(n)
    ]


def test_pareto_front_keeps_only_non_dominated_rows():
    rows = [
        {"method": "a", "n_kept": 100, "test_error": 0.05},
        {"method": "a", "n_kept": 10, "test_error": 0.20},
        {"method": "b", "n_kept": 50, "test_error": 0.05},  # beats the first row
        {"method": "b", "n_kept": 20, "test_error": 0.25},  # dominated by (10, 0.20)
        {"method": "c", "n_kept": 30, "test_error": 0.10},
    ]
    front = plots.pareto_front(rows)
    assert [(r["n_kept"], r["test_error"]) for r in front] == [(10, 0.2), (30, 0.1), (50, 0.05)]
    with pytest.raises(ValueError, match="numeric 'n_kept'"):
        plots.pareto_front([{"n_kept": "ten", "test_error": 0.1}])
    with pytest.raises(ValueError, match="numeric 'test_error'"):
        plots.pareto_front([{"n_kept": 1, "test_error": float("nan")}])
    with pytest.raises(ValueError, match="numeric 'n_kept'"):
        plots.pareto_front([{"n_kept": True, "test_error": 0.1}])
    numpy_rows = [{"n_kept": np.int64(3), "test_error": np.float32(0.5)}]
    assert plots.pareto_front(numpy_rows) == numpy_rows


@pytest.mark.parametrize("seed", range(30))
def test_pareto_front_equals_the_brute_force_non_dominated_set(seed):
    rng = np.random.default_rng(seed)
    rows = random_rows(rng, int(rng.integers(1, 40)))
    if seed % 3 == 0:
        rows += [dict(rows[0], id=len(rows))]  # an exact duplicate
    front = plots.pareto_front(rows)
    assert sorted(r["id"] for r in front) == sorted(r["id"] for r in brute_force_front(rows))
    points = [(r["n_kept"], r["test_error"]) for r in front]
    assert points == sorted(points)
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(points))  # a staircase


def median_front_by_hand(rows, at):
    """Per x in ``at``: the median over seeds of each seed's lowest error with n_kept <= x."""
    seeds = sorted({r["seed"] for r in rows})
    best = [
        [min([r["test_error"] for r in rows if r["seed"] == s and r["n_kept"] <= v] or [np.inf])
         for v in at]
        for s in seeds
    ]  # fmt: skip
    return np.median(np.array(best), axis=0)


@pytest.mark.parametrize("seed", range(10))
def test_pareto_fronts_per_method_and_seed(seed):
    rng = np.random.default_rng(100 + seed)
    rows = random_rows(rng, 60)
    fronts = plots.pareto_fronts(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    assert list(fronts) == methods
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        got = fronts[method]
        assert sorted(got.per_seed) == sorted({r["seed"] for r in mine})
        for s, front in got.per_seed.items():
            expected = brute_force_front([r for r in mine if r["seed"] == s])
            assert sorted(r["id"] for r in front) == sorted(r["id"] for r in expected)
        steps = sorted({r["n_kept"] for f in got.per_seed.values() for r in f})
        assert got.x.tolist() == steps
        assert np.array_equal(got.median, median_front_by_hand(mine, steps))
        assert (got.low <= got.median).all() and (got.median <= got.high).all()


def test_pareto_plot_draws_one_front_per_method_with_its_seeds():
    rng = np.random.default_rng(7)
    rows = random_rows(rng, 80, methods=("svi", "vadam"))
    ax = plots.plot_pareto(rows, overall=True)
    artists = {a.get_gid(): a for a in [*ax.get_lines(), *ax.collections] if a.get_gid()}
    methods = ["svi", "vadam"] if rows[0]["method"] == "svi" else ["vadam", "svi"]
    colors = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        points = artists[f"points:{method}"]
        assert sorted(map(tuple, points.get_offsets().tolist())) == sorted(
            (r["n_kept"], r["test_error"]) for r in mine
        )
        for s in sorted({r["seed"] for r in mine}):
            line = artists[f"seed front:{method}:{s}"]
            expected = brute_force_front([r for r in mine if r["seed"] == s])
            got = sorted(zip(line.get_xdata().tolist(), line.get_ydata().tolist(), strict=True))
            assert got == sorted((r["n_kept"], r["test_error"]) for r in expected)
            assert to_rgba(line.get_color()) == to_rgba(points.get_facecolor()[0], 1.0)
        front = artists[f"front:{method}"]
        fronts = plots.pareto_fronts(mine)[method]
        finite = np.isfinite(fronts.median)
        assert front.get_xdata().tolist() == fronts.x[finite].tolist()
        assert front.get_ydata().tolist() == fronts.median[finite].tolist()
        assert front.get_drawstyle() == "steps-post"
        colors[method] = to_rgba(front.get_color())
    assert colors[methods[0]] != colors[methods[1]]
    everything = artists["front:all"]
    expected = brute_force_front(rows)
    drawn = zip(everything.get_xdata().tolist(), everything.get_ydata().tolist(), strict=True)
    assert sorted(drawn) == sorted((r["n_kept"], r["test_error"]) for r in expected)
    assert legend_texts(ax) == [f"{m} (median of 3 seeds)" for m in methods] + ["all rows"]
    assert ax.get_title() == "test error against n kept: median front (thin: each seed)"


def test_pareto_plot_reads_a_benchmark_file(tmp_path):
    rows = [
        {"kind": "point", "method": "svi", "n_kept": 40, "test_error": 0.1},
        {"kind": "point", "method": "svi", "n_kept": 12, "test_error": 0.3},
        {"kind": "point", "method": "svi", "n_kept": 50, "test_error": 0.2},
        {"kind": "point", "method": "vadam", "n_kept": 20, "test_error": 0.1},
        {"kind": "front", "method": "svi", "n": 12, "test_error": 0.3},  # no n_kept
    ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"meta": {"seed": 0}, "rows": rows}))
    with pytest.raises(ValueError, match="numeric 'n_kept'"):
        plots.plot_pareto(path)
    ax = plots.plot_pareto(path, where={"kind": "point"})
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    offsets = sorted(tuple(p) for c in points for p in c.get_offsets().tolist())
    assert offsets == [(12, 0.3), (20, 0.1), (40, 0.1), (50, 0.2)]
    lines = {line.get_gid(): line for line in ax.get_lines()}
    assert set(lines) == {"front:svi", "front:vadam"}  # one seed each: no per-seed lines
    assert lines["front:svi"].get_xdata().tolist() == [12, 40]
    assert lines["front:svi"].get_ydata().tolist() == [0.3, 0.1]
    assert lines["front:vadam"].get_xdata().tolist() == [20]
    assert legend_texts(ax) == ["svi", "vadam"]
    assert ax.get_xscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("n kept", "test error")
    assert ax.get_title() == "test error against n kept"
    frame = pd.DataFrame(rows[:4])
    ax = plots.plot_pareto(frame, log_x=False, points=False)
    assert ax.get_xscale() == "linear" and not ax.collections
    with pytest.raises(ValueError, match="'prior' label"):
        plots.plot_pareto(rows[:4], hue="prior")
    with pytest.raises(ValueError, match="'rows'"):
        plots.plot_pareto({"meta": {}})
    with pytest.raises(ValueError, match="no rows with"):
        plots.plot_pareto(rows, where={"kind": "curve"})
    with pytest.raises(TypeError, match="ax"):
        plots.plot_pareto(rows[:4], ax="left")
    assert len(plt.get_fignums()) == 2


def test_pareto_plot_draws_into_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    rows = [{"method": "a", "n_kept": 3, "test_error": 0.2}]
    assert plots.plot_pareto(rows, ax=right) is right
    assert right.get_lines() and not left.get_lines() and plt.get_fignums() == [fig.number]


# Calibration and MCMC diagnostics


def test_calibration_bars_are_bin_accuracies():
    # Four bins of width 0.25; confidences 0.4 (twice), 0.6 (once), 0.9 (three times).
    probs = torch.tensor([[0.3, 0.3, 0.4]] * 2 + [[0.6, 0.4, 0.0]] + [[0.9, 0.05, 0.05]] * 3)
    y = torch.tensor([2, 0, 0, 0, 0, 1])  # right: 1 of 2, 1 of 1, 2 of 3
    ax = plots.plot_calibration(probs, y, n_bins=4, label="model")
    bars = ax.patches
    assert [p.get_x() + p.get_width() / 2 for p in bars] == pytest.approx([0.375, 0.625, 0.875])
    assert [p.get_height() for p in bars] == pytest.approx([0.5, 1.0, 2 / 3])
    ece = psb.metrics.expected_calibration_error(probs, y, n_bins=4)
    assert ece == pytest.approx((2 * abs(0.5 - 0.4) + abs(1 - 0.6) + 3 * abs(2 / 3 - 0.9)) / 6)
    assert ax.get_title() == f"Reliability diagram (ECE {ece:.3f})"
    diagonal = [line for line in ax.get_lines() if line.get_label() == "perfect calibration"]
    assert diagonal[0].get_xydata().tolist() == [[0, 0], [1, 1]]


def test_trace_and_rank_default_to_the_most_relevant_weights(idata, result):
    axes = plots.plot_trace(idata, n_weights=3)
    assert axes.shape == (3, 2)
    assert [ax.get_title() for ax in axes[:, 0]] == [name for name, _ in RANKED[:3]]
    # The trace panel of w[0, 0] draws each chain's 300 draws, whose pooled mean is exactly 4.
    traces = [line.get_ydata() for line in axes[0, 1].get_lines() if len(line.get_ydata()) == 300]
    assert len(traces) == 2 and np.mean(traces) == pytest.approx(4.0, abs=1e-5)
    axes = plots.plot_rank(result, n_weights=2)
    assert [ax.get_title() for ax in np.ravel(axes)] == ["w[0, 0]", "w[0, 1]"]
    axes = plots.plot_trace(idata, var_names=["u"], compact=True)
    assert axes.shape == (1, 2) and axes[0, 0].get_title() == "u"


def test_rank_needs_two_chains(result):
    one_chain = psb.FitResult(
        model, {k: v[:1] for k, v in result.samples.items()}, method="t", x=result.x, y=result.y
    )
    with pytest.raises(ValueError, match="at least 2"):
        plots.plot_rank(one_chain)
