"""Plots render headless (Agg, set in conftest) and draw the numbers they claim to draw.

The fixture is a ``FitResult`` of a small hand-written model whose draws are built so that every
weight's posterior mean, sd and hence relevance ``|mean| / sd`` is known exactly.
"""

import json

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection, QuadMesh

import pyro_sparse_bnn as psb
from pyro_sparse_bnn import plots

# Posterior means and sds of the two weight sites; relevance = |mean| / sd.
W_MEAN = torch.tensor([[4.0, -3.0, 0.2], [0.0, 1.5, -0.5]])
W_SD = torch.ones(2, 3)
U_MEAN = torch.tensor([2.0, 0.1, -6.0])
U_SD = torch.tensor([1.0, 1.0, 2.5])
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


def tick_names(ax):
    return [t.get_text().rsplit(" (", 1)[0] for t in ax.get_yticklabels()]


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


def test_forest_never_repeats_a_weight_and_can_rank_one_site(result, idata):
    ax = plots.plot_relevance_forest(result, n_top=8, n_bottom=8)  # a FitResult works too
    assert tick_names(ax) == [name for name, _ in RANKED]
    assert not [line for line in ax.get_lines() if line.get_ydata()[0] % 1 == 0.5]
    ax = plots.plot_relevance_forest(idata, n_top=1, n_bottom=1, sites="u")
    assert tick_names(ax) == ["u[2]", "u[1]"]


def test_heatmap_cells_are_the_keep_mask_and_log_relevance(idata):
    fig = plots.plot_relevance_heatmap(idata, value="kept")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["w: 3 of 6 kept", "u: 2 of 3 kept"]
    w_cells, u_cells = (ax.collections[0] for ax in panels)
    assert isinstance(w_cells, QuadMesh)
    assert np.array_equal(w_cells.get_array(), [[1, 1, 0], [0, 1, 0]])
    assert np.array_equal(u_cells.get_array(), [[1, 0, 1]])  # a 1-D weight is one row
    assert panels[0].get_xlabel() == "input neuron" and panels[0].get_ylabel() == "output neuron"

    fig = plots.plot_relevance_heatmap(idata, value="relevance", sites=["w"])
    (panel,) = [ax for ax in fig.axes if ax.get_title()]
    relevance = (W_MEAN.abs() / W_SD).numpy()
    expected = np.log10(np.maximum(relevance, plots.RELEVANCE_FLOOR))
    assert np.allclose(panel.collections[0].get_array(), expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["relevance", "log_alpha"])
def test_histogram_counts_every_weight_per_layer(idata, kind):
    fig = plots.plot_relevance_histogram(idata, kind=kind, bins=5, threshold=1.0)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["w: 3 of 6 above 1", "u: 2 of 3 above 1"]
    for ax, relevance in zip(panels, [W_MEAN.abs() / W_SD, U_MEAN.abs() / U_SD], strict=True):
        values = np.maximum(relevance.numpy().ravel(), plots.RELEVANCE_FLOOR)
        if kind == "log_alpha":
            values = -2 * np.log(values)
        bars = ax.patches
        assert sum(p.get_height() for p in bars) == values.size
        left = min(p.get_x() for p in bars)
        right = max(p.get_x() + p.get_width() for p in bars)
        slack = 1e-5 * np.abs(values).max()
        assert left <= values.min() + slack and right >= values.max() - slack
        threshold_line = ax.get_lines()[0].get_xdata()[0]
        assert threshold_line == (1.0 if kind == "relevance" else 0.0)
        assert ax.get_ylabel() == "weights"


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


def test_pareto_plot_reads_a_benchmark_file(tmp_path):
    rows = [
        {"method": "svi", "n_kept": 40, "test_error": 0.1},
        {"method": "svi", "n_kept": 12, "test_error": 0.3},
        {"method": "vadam", "n_kept": 20, "test_error": 0.1},
    ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"meta": {"seed": 0}, "rows": rows}))
    ax = plots.plot_pareto(path)
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(map(tuple, points.get_offsets().tolist())) == [(12, 0.3), (20, 0.1), (40, 0.1)]
    (front,) = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    assert front.get_xdata().tolist() == [12, 20] and front.get_ydata().tolist() == [0.3, 0.1]
    assert front.get_drawstyle() == "steps-post"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"svi", "vadam", "Pareto front"} <= set(legend)
    assert ax.get_xscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("n kept", "test error")
    with pytest.raises(ValueError, match="'prior' label"):
        plots.plot_pareto(rows, hue="prior")
    with pytest.raises(ValueError, match="'rows'"):
        plots.plot_pareto({"meta": {}})


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


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda d: plots.plot_relevance_forest(d, n_top=0, n_bottom=0), ValueError, "at least 1"),
        (lambda d: plots.plot_relevance_forest(d, n_top=-1), ValueError, "n_top"),
        (lambda d: plots.plot_relevance_forest(d, n_top=2.0), TypeError, "n_top"),
        (lambda d: plots.plot_relevance_forest(d, hdi_prob=1.5), ValueError, "hdi_prob"),
        (lambda d: plots.plot_relevance_forest(d, sites="v"), ValueError, "sites"),
        (lambda d: plots.plot_relevance_heatmap(d, value="mask"), ValueError, "value"),
        (lambda d: plots.plot_relevance_histogram(d, kind="snr"), ValueError, "kind"),
        (lambda d: plots.plot_relevance_histogram(d, threshold=-1.0), ValueError, "threshold"),
        (lambda d: plots.plot_relevance_histogram(d, bins=0), ValueError, "bins"),
        (lambda d: plots.plot_trace(d, n_weights=0), ValueError, "n_weights"),
        (lambda d: plots.plot_relevance_forest({"posterior": 1}), TypeError, "InferenceData"),
    ],
)
def test_bad_arguments_fail_before_drawing(idata, call, error, match):
    with pytest.raises(error, match=match):
        call(idata)
    assert not plt.get_fignums()


def test_arguments_are_checked_before_converting_a_result(result, monkeypatch):
    monkeypatch.setattr(result, "to_arviz", lambda: pytest.fail("converted before checking"))
    with pytest.raises(ValueError, match="hdi_prob"):
        plots.plot_relevance_forest(result, hdi_prob=2.0)
    with pytest.raises(ValueError, match="bins"):
        plots.plot_relevance_histogram(result, bins=0)
    with pytest.raises(ValueError, match="n_weights"):
        plots.plot_trace(result, n_weights=0)


def test_inference_data_without_relevance_is_refused():
    bare = psb.arviz.to_inference_data(posterior={"w": np.zeros((1, 5, 2))})
    with pytest.raises(ValueError, match="relevance"):
        plots.plot_relevance_heatmap(bare)
