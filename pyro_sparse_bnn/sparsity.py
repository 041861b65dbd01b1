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

Method-specific rules, each keyed like a ``state_dict`` (``"0.weight"``):

* :func:`log_alpha_masks` - SparseVD's rule, keep where ``log_alpha = log(sigma^2 / theta^2) < 3``
  (signal-to-noise ``|theta| / sigma > exp(-1.5)``);
* :func:`gate_masks` - L0 gates, keep groups with ``P(z != 0)`` above a threshold (by default the
  value below which the deterministic test-time gate is exactly 0);
* :func:`shrinkage_masks` - scale-mixture priors, keep where the shrinkage factor
  ``kappa = 1 / (1 + (s / reference)^2)`` of the posterior scale ``s`` is below 1/2;
* :func:`magnitude_masks` - keep ``|w| >= threshold`` (the L1 baseline);
* :func:`scalp_masks` - ScaLP, drop an input neuron whose outgoing mean ``|w|`` is below a
  threshold.

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

from . import distributions
from .validation import check_nonnegative, check_number

__all__ = [
    "ARD_THRESHOLD", "MAX_ACCURACY_DROP", "MAX_NLL_INCREASE", "SNR_THRESHOLD",
    "SPARSE_VD_LOG_ALPHA", "budget_masks", "compression", "default_gate_threshold", "gate_masks",
    "keep_masks", "log_alpha_masks", "magnitude_masks", "moments", "neuron_masks",
    "outgoing_norms", "relevance", "scalp_masks", "shrinkage_masks", "signal_to_noise",
    "top_masks", "weight_masks",
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
    if threshold != math.inf:  # an infinite threshold keeps nothing
        threshold = check_nonnegative(threshold, "threshold")
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
    of the full posterior. The masks keep the ``k`` most relevant weights for the first ``k``
    whose extra loss per row stays within budget with one standard error to
    spare: ``mean(d) + sd(d) / sqrt(n) <= max_nll_increase`` for the NLL differences ``d`` and
    likewise for the error differences and ``max_accuracy_drop`` (the margin makes the rule hold
    beyond the rows it was measured on, as projection predictive selection's one-standard-error
    rule does). The search gallops up from the most relevant weight (``k`` = 1, 2, 4, ...) to
    the first count within budget, then bisects back to the previous one: measured losses are not
    monotone in ``k`` (a noise weight kept can flip a row's class either way, and the margin
    grows with the flips), so a bisection over all counts could stop anywhere above the first
    count that met the budget. Every ``k`` returned was evaluated and met the budget (all
    weights, at worst). At most ``2 log2(k) + 4`` evaluations of ``losses``.

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

    n_weights = sum(s.numel() for s in scores.values())
    lo, hi = 0, 0  # the gallop stops at a count within budget; lo - 1 failed
    while hi < n_weights and not within(hi):
        lo, hi = hi + 1, min(max(2 * hi, 1), n_weights)
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


# Method-specific rules

SPARSE_VD_LOG_ALPHA = 3.0
"""SparseVD prunes weights with ``log_alpha`` above this (Molchanov et al. 2017)."""


def log_alpha_masks(
    params: Mapping[str, tuple[Tensor, Tensor]], threshold: float = SPARSE_VD_LOG_ALPHA
) -> dict[str, Tensor]:
    """Keep where ``log_alpha = log(scale^2 / loc^2)`` of ``Normal(loc, scale)`` is below
    ``threshold``.

    ``params`` maps a name to ``(loc, scale)``, e.g. from
    :meth:`~pyro_sparse_bnn.guides.SparseVDGuide.loc` and ``.scale``.

    >>> log_alpha_masks({"w": (torch.tensor([1.0, 0.1]), torch.tensor([1.0, 1.0]))})["w"].tolist()
    [True, False]
    """
    threshold = float(check_number(threshold, "threshold"))
    low, high = distributions.LOG_ALPHA_CLIP
    if not low < threshold < high:
        raise ValueError(f"threshold must lie inside the log_alpha clip range {low, high}")
    with torch.no_grad():
        # unclipped and without the KL's epsilon, which would keep weights whose mean and sd are
        # both tiny (a zero mean gives log_alpha = +inf: pruned)
        return {
            k: 2.0 * scale.log() - loc.square().log() < threshold
            for k, (loc, scale) in params.items()
        }


def default_gate_threshold(
    beta: float = distributions.HARD_CONCRETE_BETA,
    gamma: float = distributions.HARD_CONCRETE_GAMMA,
    zeta: float = distributions.HARD_CONCRETE_ZETA,
) -> float:
    """``P(z != 0)`` of a hard-concrete gate whose deterministic test-time gate is exactly 0.

    The test gate ``clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)`` is 0 when
    ``sigmoid(log_alpha) <= -gamma / (zeta - gamma)``; at that ``log_alpha``,
    ``P(z != 0) = sigmoid(log_alpha - beta log(-gamma / zeta))``.

    >>> round(default_gate_threshold(), 4)
    0.3102
    """
    log_alpha = math.log(-gamma / zeta)  # logit(-gamma / (zeta - gamma))
    return 1.0 / (1.0 + math.exp(-(log_alpha - beta * math.log(-gamma / zeta))))


def gate_masks(
    log_alphas: Mapping[str, Tensor], threshold: float | None = None
) -> dict[str, Tensor]:
    """Keep gates with ``P(z != 0) > threshold`` (default :func:`default_gate_threshold`).

    >>> gate_masks({"g": torch.tensor([-5.0, 0.0])})["g"].tolist()
    [False, True]
    """
    threshold = default_gate_threshold() if threshold is None else threshold
    threshold = float(check_number(threshold, "threshold"))
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    return {
        k: distributions.HardConcrete(la.detach()).prob_nonzero() > threshold
        for k, la in log_alphas.items()
    }


def shrinkage_masks(
    scales: Mapping[str, Tensor], reference_scale: float = 1.0, threshold: float = 0.5
) -> dict[str, Tensor]:
    """Keep where the mean shrinkage factor ``E[1 / (1 + (s / reference_scale)^2)] < threshold``.

    ``scales`` holds posterior draws ``(chain, draw, ...)`` of a prior scale ``s`` (for a group
    horseshoe, ``global_scale * local_scale``). ``kappa`` near 1 means the prior shrinks the weight
    (or group) to zero; with ``reference_scale = 1`` it is the horseshoe's
    ``1 / (1 + tau^2 lambda^2)``.

    >>> s = torch.tensor([0.1, 3.0]).expand(1, 4, 2)  # (chain, draw, group)
    >>> shrinkage_masks({"w": s})["w"].tolist()
    [False, True]
    """
    reference_scale = float(check_number(reference_scale, "reference_scale"))
    threshold = float(check_number(threshold, "threshold"))
    if reference_scale <= 0 or not 0 < threshold < 1:
        raise ValueError("reference_scale must be > 0 and threshold in (0, 1)")
    out = {}
    for name, s in scales.items():
        if s.dim() < 2:
            raise ValueError(f"scales[{name!r}] must be draws shaped (chain, draw, ...)")
        kappa = 1.0 / (1.0 + (s.detach() / reference_scale) ** 2)
        out[name] = kappa.reshape(-1, *s.shape[2:]).mean(0) < threshold
    return out


def magnitude_masks(weights: Mapping[str, Tensor], threshold: float) -> dict[str, Tensor]:
    """Keep weights with ``|w| >= threshold`` (magnitude pruning).

    >>> magnitude_masks({"w": torch.tensor([0.5, -0.01])}, 0.1)["w"].tolist()
    [True, False]
    """
    threshold = float(check_number(threshold, "threshold"))
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return {k: w.detach().abs() >= threshold for k, w in weights.items()}


def outgoing_norms(weight: Tensor) -> Tensor:
    """Mean ``|w|`` of each input neuron's (channel's) outgoing weights: ``weight[:, k, ...]``.

    >>> outgoing_norms(torch.tensor([[1.0, 0.0], [-3.0, 0.5]])).tolist()
    [2.0, 0.25]
    """
    if not isinstance(weight, Tensor) or weight.dim() < 2:
        raise ValueError("weight must be a tensor of shape (out, in, ...)")
    dims = [d for d in range(weight.dim()) if d != 1]
    return weight.abs().mean(dim=dims)


def scalp_masks(weights: Mapping[str, Tensor], threshold: float) -> dict[str, Tensor]:
    """Keep-masks shaped like each weight: input neuron ``k``'s column is dropped when
    ``outgoing_norms(w)[k] < threshold``. ``sparsity.compression`` reads them as usual.

    >>> scalp_masks({"2.weight": torch.tensor([[1.0, 0.0], [-3.0, 0.5]])}, 0.5)["2.weight"].tolist()
    [[True, False], [True, False]]
    """
    threshold = float(check_nonnegative(threshold, "threshold"))
    out = {}
    for name, w in weights.items():
        keep = outgoing_norms(w) >= threshold
        out[name] = keep.reshape(1, -1, *(1,) * (w.dim() - 2)).expand_as(w).clone()
    return out
