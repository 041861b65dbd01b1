"""Projection predictive submodels of a linear ``SparseBNN`` (Piironen, Paasiniemi & Vehtari 2020).

Zeroing the pruned weights of each posterior draw also removes what they carried: with correlated
features the kept weights were drawn alongside the dropped ones, so the zeroed draws predict
worse than the submodel could, and a pruning budget then keeps weights that only compensate.
Projection refits the kept weights draw by draw instead: the submodel's draw is the one whose
predictions on the training inputs are closest, in Kullback-Leibler divergence, to that draw of
the full model. For a network that is one ``nn.Linear`` layer this is exact and cheap:

* Gaussian likelihood: least squares of the draw's linear predictor on the kept features; a learned
  noise grows by the mean squared misfit, ``sigma_perp^2 = sigma^2 + mean_i (f_i - f_perp_i)^2``;
* Bernoulli / Categorical: the cross-entropy between the draw's class probabilities and the
  submodel's, a convex problem solved by L-BFGS over all draws together (warm-started at the
  zeroed draws).

The bias (an offset per draw, or the fitted point estimate) is kept as it is, zeroed where its
own keep-mask says so.

>>> import torch
>>> import pyro_sparse_bnn as psb
>>> bnn = psb.SparseBNN(torch.nn.Linear(2, 1), psb.priors.Normal(), psb.likelihoods.Gaussian(0.5))
>>> x = torch.tensor([[1.0, 1.0], [2.0, 1.9], [-1.0, -1.2]])
>>> draws = {"weight": torch.tensor([[[1.0, 1.0]]])}  # one draw: y = x1 + x2 + bias
>>> sub = project(bnn, draws, x, {"weight": torch.tensor([[True, False]])})
>>> [round(v, 3) for v in sub["weight"].flatten().tolist()]  # x1 now also stands in for x2
[2.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from . import likelihoods

__all__ = ["linear_layer", "project"]

_MAX_ITER = 200


def linear_layer(model: Any) -> tuple[str, nn.Linear] | None:
    """The name and module of a ``SparseBNN`` whose whole network is one ``nn.Linear`` layer
    (alone or the only module of an ``nn.Sequential``), with a Gaussian, Bernoulli or
    Categorical likelihood; ``None`` for any other model."""
    net = getattr(model, "net", None)
    if not isinstance(getattr(model, "likelihood", None), _LIKELIHOODS):
        return None
    if isinstance(net, nn.Linear):
        return "", net
    if isinstance(net, nn.Sequential) and len(net) == 1 and isinstance(net[0], nn.Linear):
        return "0", net[0]
    return None


_LIKELIHOODS = (likelihoods.Gaussian, likelihoods.Bernoulli, likelihoods.Categorical)


def project(
    model: Any, draws: Mapping[str, Tensor], x: Tensor, keep: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``draws`` (flat, ``(draw, ...)``) of a linear ``SparseBNN`` projected onto the submodel
    that keeps the weights in ``keep``: the kept weights refitted per draw to the full draw's
    predictions at ``x``, the others zero (a learned Gaussian noise widened by the misfit)."""
    found = linear_layer(model)
    if found is None:
        raise TypeError("projection needs a SparseBNN whose network is one nn.Linear layer")
    layer, linear = found
    weight_site = f"{layer}.weight" if layer else "weight"
    bias_site = f"{layer}.bias" if layer else "bias"
    out = dict(draws)
    w = draws[weight_site]  # (S, classes, p)
    mask = keep.get(weight_site, torch.ones_like(w[0], dtype=torch.bool))
    full_bias = _bias(draws, bias_site, linear, w)  # (S, classes)
    bias = full_bias * keep[bias_site] if bias_site in keep else full_bias
    if bias_site in draws:
        out[bias_site] = bias.reshape(draws[bias_site].shape)
    with torch.no_grad():
        full = torch.einsum("np,scp->snc", x, w) + full_bias.unsqueeze(1)
    if isinstance(model.likelihood, likelihoods.Gaussian):
        out[weight_site], misfit = _least_squares(x, full - bias.unsqueeze(1), mask)
        if model.likelihood.learn_noise and "noise" in draws:
            out["noise"] = (draws["noise"].square() + misfit).sqrt()
    else:
        out[weight_site] = _cross_entropy(x, full, bias, w * mask, mask, model.likelihood)
    return out


def _bias(draws: Mapping[str, Tensor], site: str, linear: nn.Linear, w: Tensor) -> Tensor:
    """Each draw's bias ``(S, classes)``: its own draws, else the fitted one, else zero."""
    bias = draws.get(site, linear.bias)
    if bias is None:
        return w.new_zeros(w.shape[:2])
    return bias.detach().reshape(-1, w.shape[1]).expand(w.shape[:2])


def _least_squares(x: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per draw and output, the kept weights minimising the squared error to ``target``
    ``(S, n, classes)``; the weights ``(S, classes, p)`` and each draw's mean squared misfit."""
    S, _, classes = target.shape
    w = target.new_zeros(S, classes, x.shape[1])
    misfit = target.new_zeros(S)
    for c in range(classes):
        kept = mask[c]
        if kept.any():
            design = x[:, kept]
            coef = torch.linalg.pinv(design) @ target[:, :, c].T  # (kept, S)
            w[:, c, kept] = coef.T
            residual = target[:, :, c] - (design @ coef).T
        else:
            residual = target[:, :, c]
        misfit += residual.square().mean(1)
    return w, misfit


def _cross_entropy(
    x: Tensor, full: Tensor, bias: Tensor, start: Tensor, mask: Tensor, likelihood: Any
) -> Tensor:
    """Kept weights minimising, for every draw, the cross-entropy of the submodel's class
    probabilities against the full draw's (L-BFGS from ``start``, the zeroed draws)."""
    binary = isinstance(likelihood, likelihoods.Bernoulli)
    target = torch.sigmoid(full) if binary else torch.softmax(full, -1)
    weights = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weights], max_iter=_MAX_ITER, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = torch.einsum("np,scp->snc", x, weights * mask) + bias.unsqueeze(1)
        if binary:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        else:
            loss = -(target * torch.log_softmax(logits, -1)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return (weights * mask).detach()
