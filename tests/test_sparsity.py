"""Pruning rules: the predictive budget against its definition and against the fixed SNR rule."""

import math

import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.result import FitResult
from pyro_sparse_bnn.sparsity import budget_masks, top_masks

NOISE = 1.0


def weak_signal_result(seed=0, num_draws=400):
    """Draws of a linear regression's coefficients: 3 strong (SNR 6), 3 weak but real (mean 0.8,
    sd 1: SNR 0.8) and 4 null; the data come from the posterior mean. The SNR > 1 rule drops the
    weak coefficients, which the predictions need."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([3.0, -3.0, 3.0, 0.8, -0.8, 0.8, 0.0, 0.0, 0.0, 0.0])
    sd = torch.tensor([0.5] * 3 + [1.0] * 3 + [0.05] * 4)
    w = mean + sd * torch.randn(num_draws, 10, generator=g)
    x = torch.randn(300, 10, generator=g)
    y = x @ mean + NOISE * torch.randn(300, generator=g)
    bnn = psb.SparseBNN(
        torch.nn.Linear(10, 1, bias=False), psb.priors.Normal(), psb.likelihoods.Gaussian(NOISE)
    )
    return FitResult(bnn, {"weight": w.reshape(1, num_draws, 1, 10)}, method="test", x=x, y=y)


def test_top_masks_keep_the_k_highest_over_all_sites():
    scores = {"a": torch.tensor([[0.5, 4.0]]), "b": torch.tensor([3.0, 0.1, 2.0])}
    masks = top_masks(scores, 3)
    assert masks["a"].tolist() == [[False, True]] and masks["b"].tolist() == [True, False, True]
    assert sum(int(m.sum()) for m in top_masks(scores, 0).values()) == 0


def test_budget_is_met_and_is_the_sparsest_prefix():
    """The budget masks on the given data keep the strong and the weak coefficients and drop the
    null ones; the masked NLL is within the budget of the full posterior's, and every smaller
    prefix of the relevance order breaks the budget (the NLL is monotone here)."""
    result = weak_signal_result()
    keep = result.masks(data=(result.x, result.y))["weight"].reshape(-1)
    assert keep.tolist() == [True] * 6 + [False] * 4
    full = result.evaluate(result.x, result.y)["nll"]
    masked = result.masks(data=(result.x, result.y))
    assert result.evaluate(result.x, result.y, masked=masked)["nll"] <= full + 0.02
    scores = result.relevance()
    for k in range(6):
        assert result.evaluate(result.x, result.y, masked=top_masks(scores, k))["nll"] > full + 0.02
    snr = result.evaluate(result.x, result.y, masked=True, threshold=1.0)["nll"]
    assert snr > full + 0.2  # the fixed rule costs ten times the budget


def test_budget_on_held_out_data_and_bigger_budgets_prune_more():
    result = weak_signal_result()
    held_out = weak_signal_result(seed=1)
    tight = result.masks(data=(held_out.x, held_out.y))["weight"]
    loose = result.masks(data=(held_out.x, held_out.y), max_nll_increase=5.0)["weight"]
    assert int(loose.sum()) < int(tight.sum())


def test_budget_search_checks_accuracy_too():
    """A classifier's masks must keep the error within ``max_accuracy_drop`` (with its standard
    error) even when the NLL budget alone would allow pruning more."""
    calls = []

    def losses(masks):
        kept = 3 if masks is None else int(masks["w"].sum())
        calls.append(kept)
        error = torch.zeros(100)
        error[: 50 if kept < 2 else 0] = 1.0
        return {"nll": torch.zeros(100), "error": error}

    masks = budget_masks({"w": torch.tensor([3.0, 2.0, 1.0])}, losses)
    assert masks["w"].tolist() == [True, True, False]
    assert len(calls) <= 4


def test_budget_search_finds_the_first_count_when_losses_are_not_monotone():
    """Over 64 weights, keeping the top 5 to 12 meets the budget, but from 13 to 40 noise weights
    flip rows and break it (as on the iris demo, where a bisection over all counts kept 51 of 56;
    here it would keep 41): the search gallops up from 1 kept and returns 5, having tried no
    count above 8, in at most 2 log2(5) + 4 loss evaluations (the full posterior's included)."""
    tried = []

    def losses(masks):
        kept = 64 if masks is None else int(masks["w"].sum())
        tried.append(kept)
        broken = kept < 5 or 13 <= kept <= 40
        return {"nll": torch.full((50,), 1.0 if broken else 0.0)}

    masks = budget_masks({"w": torch.linspace(2.0, 1.0, 64)}, losses)
    assert int(masks["w"].sum()) == 5 and masks["w"][:5].all()
    assert max(tried[1:]) == 8 and len(tried) <= 4 + 2 * math.log2(5)


def test_budget_keeps_a_standard_error_in_hand():
    """Per-row NLL differences of mean 0.015 and sd 0.1 over 100 rows: within 0.02 on
    average, but not with the standard error (0.01) added, so nothing is pruned; with 10 000
    rows (standard error 0.001) the weight goes."""

    def losses(n):
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(n, generator=g, dtype=torch.float64)
        extra = 0.015 + 0.1 * (noise - noise.mean()) / noise.std()

        def per_row(m):  # weight 0 is needed, weight 1 costs a little
            if m is None or m["w"].all():
                return {"nll": torch.zeros(n, dtype=torch.float64)}
            return {"nll": extra if m["w"][0] else torch.ones(n, dtype=torch.float64)}

        return per_row

    scores = {"w": torch.tensor([2.0, 1.0])}
    assert budget_masks(scores, losses(100))["w"].tolist() == [True, True]
    assert budget_masks(scores, losses(10_000))["w"].tolist() == [True, False]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"max_nll_increase": -0.1}, ValueError),
        ({"max_accuracy_drop": float("nan")}, ValueError),
        ({"data": "held out"}, TypeError),
        ({"threshold": 1.0, "data": (torch.zeros(1, 10), torch.zeros(1))}, ValueError),
    ],
)
def test_bad_budget_arguments_are_rejected(kwargs, error):
    with pytest.raises(error):
        weak_signal_result(num_draws=20).masks(**kwargs)
