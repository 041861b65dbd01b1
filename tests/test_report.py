"""The before/after compression report: its counts and FLOPs against closed forms, its quality
metrics against FitResult.evaluate, and its JSON, table and figure."""

import json

import pytest
import torch
from torch import nn

import pyro_sparse_bnn as psb


@pytest.fixture(scope="module")
def fitted():
    X, y = psb.datasets.load("iris")
    bnn = psb.SparseBNN(psb.mlp([4, 16, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    return psb.fit(bnn, X, y, epochs=30, progress=False, seed=0), X, y


def test_counts_and_flops_follow_the_architecture(fitted):
    result, X, y = fitted
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in result.relevance().items()}
    masks["0.weight"][5:] = False  # hidden units 5-15 lose their inputs
    masks["2.weight"][:, 0] = False  # and unit 0 its output: 4 hidden units stay
    report = psb.compression_report(result, X, y, masks=masks, rounds=2)
    assert report.before["parameters"] == 4 * 16 + 16 + 16 * 3 + 3
    assert report.after["parameters"] == 4 * 4 + 4 + 4 * 3 + 3
    assert report.before["flops"] == 2 * (4 * 16 + 16 * 3)  # two per multiply-accumulate
    assert report.after["flops"] == 2 * (4 * 4 + 4 * 3)
    assert report.after["nonzero_parameters"] <= report.after["parameters"]
    assert report.after["accuracy"] == result.evaluate(X, y, masked=masks)["accuracy"]
    deployed = result.posterior.masked_network(result, masks)  # what the pruned net computes
    with torch.no_grad():
        probs = deployed(X).softmax(-1)
    accuracy = float((probs.argmax(-1) == y).float().mean())
    assert report.after["network_accuracy"] == pytest.approx(accuracy)
    nll = -probs[torch.arange(len(y)), y].log().mean()
    assert report.after["network_nll"] == pytest.approx(float(nll), rel=1e-5)
    assert report.before["nll"] == pytest.approx(result.evaluate(X, y)["nll"], rel=0.05)
    assert report.ratios()["parameters"] == report.before["parameters"] / report.after["parameters"]
    assert all(report.after[f"latency_ms_batch_{b}"] > 0 for b in psb.report.BATCHES)


def test_convolution_flops(fitted):
    """A 3x3 convolution with padding 1 on 6x6 inputs: 2 * C_out * C_in * 9 * 36 FLOPs."""
    x = torch.randn(20, 2, 6, 6)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))  # fmt: skip
    bnn = psb.SparseBNN(net, psb.priors.Normal(), psb.likelihoods.Categorical())
    result = psb.fit(bnn, x, y, epochs=2, progress=False, seed=0)
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in result.relevance().items()}
    masks["0.weight"][1:] = False  # one channel stays (its bias-only twins are constants)
    report = psb.compression_report(result, x, y, masks=masks, rounds=2)
    assert report.before["flops"] == 2 * 4 * 2 * 9 * 36 + 2 * 4 * 2
    assert report.after["flops"] < report.before["flops"]


def test_json_table_and_figure(fitted, tmp_path):
    result, X, y = fitted
    report = psb.compression_report(result, X, y, threshold=1.0, rounds=2)
    path = report.to_json(tmp_path / "report.json")
    saved = json.loads(path.read_text())
    assert saved["before"] == report.before and saved["ratios"] == report.ratios()
    lines = report.table().splitlines()
    assert lines[0].split() == ["metric", "before", "after", "before", "/", "after"]
    assert len(lines) == 1 + len(report.before)
    ax = report.plot()
    assert len(ax.patches) == len([k for k in report.ratios() if report.before[k] > 0])
    with pytest.raises(ValueError, match="rounds"):
        psb.compression_report(result, X, y, rounds=0)


def test_transformer_flops_count_every_product():
    """Embedding, query/key/value, attention scores and mixing, output projection, the two
    feed-forward layers and the head, on six tokens of width 16 (4 heads, 32 neurons)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    net = nn.Sequential(nn.Linear(7, 16), layer, nn.Flatten(), nn.Linear(6 * 16, 3)).eval()
    tokens, d = 6, 16
    expected = 2 * (
        tokens * 7 * d  # embedding
        + tokens * d * 3 * d  # query, key, value
        + 2 * tokens * tokens * d  # scores and their mix of the values
        + tokens * d * d  # output projection
        + 2 * tokens * d * 32  # feed-forward
        + tokens * d * 3  # head
    )
    assert psb.report._flops(net, torch.randn(2, tokens, 7)) == expected
    assert torch.backends.mha.get_fastpath_enabled()  # restored
