"""Relevance scores, pruning masks and compression statistics from posterior draws.

The relevance of a weight is its posterior signal-to-noise ratio ``|E[w]| / sd[w]``, estimated from
draws of any inference method. Two rules turn relevance into keep-masks:

* a fixed threshold (:func:`keep_masks`): kept when the relevance exceeds it. ``SNR_THRESHOLD``
  (1: the posterior mean at least one sd away from zero) is, for a Gaussian posterior, sparse
  variational dropout's ``log_alpha < 0`` (its own pruning point ``log_alpha > 3`` is
  ``threshold = exp(-1.5) ≈ 0.22``) and VADAM-ARD's ``|mu| > k sigma`` with ``k = 1``;
* a predictive budget (:func:`budget_masks`, the default of ``FitResult.masks``): the fewest
  most-relevant weights whose masked posterior predictive stays within a stated loss of the full
  one. A fixed threshold can cut a weight the predictions need; the budget cannot.

>>> import torch
>>> draws = {"w": torch.tensor([[[3.0, 0.1]], [[5.0, -0.1]]])}  # (chain, draw, 2)
>>> weight_masks(draws)["w"].tolist()
[True, False]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

__all__ = [
    "ARD_THRESHOLD", "SNR_THRESHOLD", "budget_masks", "compression", "keep_masks", "moments",
    "neuron_masks", "relevance", "signal_to_noise", "top_masks", "weight_masks",
]  # fmt: skip

SNR_THRESHOLD = 1.0
ARD_THRESHOLD = 1e-4  # learned prior variance 1/psi: scikit-learn ARDRegression prunes psi > 1e4
MAX_NLL_INCREASE = 0.02  # nats per row the default pruning may cost
MAX_ACCURACY_DROP = 0.01  # and accuracy, for a classifier


def moments(draws: Tensor) -> tuple[Tensor, Tensor]:
    """Posterior mean and sd over the leading (chain, draw) dims (sd 0 for a single draw).

    >>> [m.tolist() for m in moments(torch.tensor([[[1.0], [3.0]]]))]
    [[2.0], [1.4142135381698608]]
    """
    flat = draws.reshape(-1, *draws.shape[2:]).to(torch.float64)
    sd = flat.std(dim=0) if flat.shape[0] > 1 else torch.zeros_like(flat[0])
    return flat.mean(dim=0).to(draws.dtype), sd.to(draws.dtype)


def signal_to_noise(mean: Tensor, sd: Tensor) -> Tensor:
    """``|mean| / sd``, infinite where ``sd`` is 0 and the mean is not."""
    return (mean.double().abs() / sd.double().clamp_min(1e-30)).to(mean.dtype)


def relevance(draws: Tensor) -> Tensor:
    """Posterior signal-to-noise ``|mean| / sd`` over the leading (chain, draw) dims.

    >>> relevance(torch.tensor([[[1.0], [3.0]]])).tolist()
    [1.4142135381698608]
    """
    return signal_to_noise(*moments(draws))


def keep_masks(scores: Mapping[str, Tensor], threshold: float = SNR_THRESHOLD) -> dict[str, Tensor]:
    """Boolean keep-masks (True = kept): relevance ``scores`` above ``threshold``.

    >>> keep_masks({"w": torch.tensor([2.0, 0.5])})["w"].tolist()
    [True, False]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise TypeError(f"threshold must be a number, got {threshold!r}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
    return {name: score > threshold for name, score in scores.items()}


def top_masks(scores: Mapping[str, Tensor], k: int) -> dict[str, Tensor]:
    """Keep-masks of the ``k`` highest ``scores`` over all sites together (ties: first listed).

    >>> top_masks({"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([2.0])}, 2)["b"].tolist()
    [True]
    """
    flat = torch.cat([s.reshape(-1).double().cpu() for s in scores.values()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, descending=True, stable=True)[:k]] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start : start + s.numel()].reshape(s.shape).to(s.device)
        start += s.numel()
    return out


def budget_masks(
    scores: Mapping[str, Tensor],
    losses: Callable[[dict[str, Tensor] | None], Mapping[str, Tensor]],
    *,
    max_nll_increase: float = MAX_NLL_INCREASE,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
) -> dict[str, Tensor]:
    """The sparsest keep-masks, in the order of ``scores``, whose predictions stay within budget.

    ``losses(masks)`` returns per-row losses of the masked posterior predictive: ``nll`` and, for
    a classifier, ``error`` (1 where the predicted class is wrong), and may return more of each
    (``train_nll``: the budget of a key is that of its last ``_`` part); ``losses(None)`` those
    of the full posterior. The masks keep the ``k`` most relevant weights for the smallest ``k``,
    found by bisection, whose extra loss per row stays within budget with one standard error to
    spare: ``mean(d) + sd(d) / sqrt(n) <= max_nll_increase`` for the NLL differences ``d`` and
    likewise for the error differences and ``max_accuracy_drop`` (the margin makes the rule hold
    beyond the rows it was measured on, as projection predictive selection's one-standard-error
    rule does). Every ``k`` returned was evaluated and met the budget (all weights, at worst).
    About ``log2(n_weights) + 2`` evaluations.

    >>> scores = {"w": torch.tensor([5.0, 0.1, 2.0])}
    >>> def losses(m):  # each row loses a nat unless weights 0 and 2 are kept
    ...     return {"nll": torch.ones(4) * (m is not None and not m["w"][[0, 2]].all())}
    >>> budget_masks(scores, losses)["w"].tolist()
    [True, False, True]
    """
    for value, name in ((max_nll_increase, "max_nll_increase"),
                        (max_accuracy_drop, "max_accuracy_drop")):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    full = losses(None)
    budget = {"nll": max_nll_increase, "error": max_accuracy_drop}

    def within(k: int) -> bool:
        got = losses(top_masks(scores, k))
        for key, loss in full.items():
            d = (got[key] - loss).double()
            se = d.std() / math.sqrt(d.numel()) if d.numel() > 1 else 0.0
            if d.mean() + se > budget[key.rsplit("_", 1)[-1]]:  # "train_nll": nll's budget
                return False
        return True

    lo, hi = 0, sum(s.numel() for s in scores.values())
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if within(mid) else (mid + 1, hi)
    return top_masks(scores, hi)


def weight_masks(
    samples: Mapping[str, Tensor], threshold: float = SNR_THRESHOLD
) -> dict[str, Tensor]:
    """Boolean keep-masks (True = kept), one per weight site, from ``(chain, draw, ...)`` draws."""
    return keep_masks({name: relevance(d) for name, d in samples.items()}, threshold)


def neuron_masks(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per input neuron (or channel) of each weight: kept if any of its weights is kept.

    >>> neuron_masks({"w": torch.tensor([[True, False], [False, False]])})["w"].tolist()
    [True, False]
    """
    out = {}
    for name, m in masks.items():
        other = [d for d in range(m.dim()) if d != 1] if m.dim() > 1 else []
        out[name] = m.any(dim=other) if other else m.clone()
    return out


def compression(masks: Mapping[str, Tensor]) -> dict:
    """Counts and ratios: ``n_weights``, ``n_kept``, ``compression = n_weights / n_kept``, and
    ``layer_sparsity`` (fraction removed) and ``kept_neurons`` per weight site.

    >>> compression({"w": torch.tensor([True, False, False, False])})["compression"]
    4.0
    """
    n_weights = sum(m.numel() for m in masks.values())
    n_kept = sum(int(m.sum()) for m in masks.values())
    neurons = neuron_masks(masks)
    return {
        "n_weights": n_weights,
        "n_kept": n_kept,
        "compression": n_weights / n_kept if n_kept else float("inf"),
        "layer_sparsity": {k: 1.0 - float(m.float().mean()) for k, m in masks.items()},
        "kept_neurons": {k: int(m.sum()) for k, m in neurons.items()},
    }
