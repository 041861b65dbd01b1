"""Relevance scores, pruning masks and compression statistics from posterior draws.

The relevance of a weight is its posterior signal-to-noise ratio ``|E[w]| / sd[w]``, estimated from
draws of any inference method. A weight is kept when its relevance exceeds a threshold (default
:data:`SNR_THRESHOLD`: the posterior mean lies at least one posterior standard deviation away
from zero). For a Gaussian posterior this is the rule of sparse variational dropout
(``log_alpha = log(sd^2 / mean^2) < 0``; SparseVD's own pruning point ``log_alpha > 3`` is
``threshold = exp(-1.5) ≈ 0.22``) and of VADAM-ARD's ``|mu| > k sigma`` with ``k = 1``.

>>> import torch
>>> draws = {"w": torch.tensor([[[3.0, 0.1]], [[5.0, -0.1]]])}  # (chain, draw, 2)
>>> weight_masks(draws)["w"].tolist()
[True, False]
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = [
    "ARD_THRESHOLD", "SNR_THRESHOLD", "compression", "keep_masks", "moments", "neuron_masks",
    "relevance", "signal_to_noise", "weight_masks",
]  # fmt: skip

SNR_THRESHOLD = 1.0
ARD_THRESHOLD = 1e-4  # learned prior variance 1/psi: scikit-learn ARDRegression prunes psi > 1e4


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
