"""Deterministic baselines for compression: an L1 penalty and magnitude pruning.

Train a plain network on ``mean NLL + l1 * sum |w|`` (:func:`l1_penalty`), then zero every weight
with ``|w| < threshold`` (:func:`magnitude_prune`); ``fit(..., method="l1")`` does both.

>>> import torch
>>> from torch import nn
>>> net = nn.Linear(2, 1)
>>> with torch.no_grad():
...     _ = net.weight.copy_(torch.tensor([[0.5, -0.01]]))
>>> round(l1_penalty(net).item(), 4)
0.51
>>> pruned, masks = magnitude_prune(net, 0.1)
>>> pruned.weight.tolist(), masks["weight"].tolist()
([[0.5, 0.0]], [[True, False]])
"""

from __future__ import annotations

from torch import Tensor, nn

from .nn import BAYESIAN_LAYERS, weight_name
from .prune import masked_network
from .sparsity import magnitude_masks

__all__ = ["l1_penalty", "magnitude_prune", "prunable_weights"]

"""Layer types whose weights are penalised and pruned."""


def prunable_weights(net: nn.Module) -> dict[str, Tensor]:
    """The weights of every Linear/Conv layer of ``net``, keyed by ``state_dict`` name."""
    return {
        f"{name}.{weight_name(m)}" if name else weight_name(m): getattr(m, weight_name(m))
        for name, m in net.named_modules()
        if isinstance(m, BAYESIAN_LAYERS)
    }


def l1_penalty(net: nn.Module) -> Tensor:
    """``sum |w|`` over the weights of ``net``'s Linear/Conv layers (biases are not penalised)."""
    weights = prunable_weights(net)
    if not weights:
        raise ValueError("net has no Linear or Conv layer to penalise")
    return sum(w.abs().sum() for w in weights.values())


def magnitude_prune(net: nn.Module, threshold: float) -> tuple[nn.Module, dict[str, Tensor]]:
    """A copy of ``net`` with Linear/Conv weights ``|w| < threshold`` set to zero, and the masks."""
    masks = magnitude_masks(prunable_weights(net), threshold)
    return masked_network(net, masks=masks), masks
