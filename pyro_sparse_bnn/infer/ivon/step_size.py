"""IVON's default step size, from the curvature of the loss where training starts.

With ``beta2`` near 1 IVON's Hessian estimate stays near ``hess_init`` for thousands of steps, so
its first steps are gradient descent with step ``lr`` on the mean minibatch NLL. Along a Hessian
eigendirection with eigenvalue ``lambda`` that diverges once ``lr * lambda > 2``: correlated
inputs make ``lambda`` large (about ``0.9 p / noise**2`` for p equicorrelated standardised
inputs), and on such a regression the default ``lr = 0.1`` sent the means to the hundreds.
:func:`stable_lr` caps the step at ``1 / lambda``, which leaves a factor 2 for the curvature to
grow as the point estimates (a noise scale) move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ...validation import check_positive, check_positive_int

DEFAULT_LR = 0.1


def top_curvature(
    loss: Callable[[], Tensor],
    params: Sequence[Tensor],
    *,
    iterations: int = 20,
    generator: torch.Generator | None = None,
) -> float:
    """The largest absolute eigenvalue of the Hessian of ``loss()`` in ``params``, by power
    iteration on Hessian-vector products (double backward), started from a random vector drawn
    from ``generator`` (a CPU generator; default: a private one seeded 0).

    >>> A = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    >>> w = torch.zeros(2, requires_grad=True)
    >>> round(top_curvature(lambda: 0.5 * w @ A @ w, [w]), 4)  # eigenvalues 2 and 4
    4.0
    """
    check_positive_int(iterations, "iterations")
    params = list(params)
    if not params or not all(isinstance(p, Tensor) and p.requires_grad for p in params):
        raise TypeError("params must be a non-empty sequence of tensors that require grad")
    if generator is None:  # a private stream: the caller's torch RNG is left as it was
        generator = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        grads = torch.autograd.grad(loss(), params, create_graph=True)
    vector = [torch.randn(p.shape, generator=generator).to(p) for p in params]  # CPU generator
    for _ in range(iterations):
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        if not norm > 0:  # a loss that is linear in params
            return 0.0
        vector = [v / norm for v in vector]
        with torch.enable_grad():
            product = torch.autograd.grad(grads, params, vector, retain_graph=True)
        vector = [h.detach() for h in product]
    return float(torch.sqrt(sum((v * v).sum() for v in vector)))


def stable_lr(
    loss: Callable[[], Tensor],
    params: Sequence[Tensor],
    *,
    ceiling: float = DEFAULT_LR,
    generator: torch.Generator | None = None,
) -> float:
    """``min(ceiling, 1 / lambda)`` for the top curvature ``lambda`` of ``loss()`` (module
    docstring).

    >>> w = torch.zeros(2, requires_grad=True)
    >>> stable_lr(lambda: 50.0 * (w * w).sum(), [w])  # curvature 100
    0.01
    """
    check_positive(ceiling, "ceiling")
    curvature = top_curvature(loss, params, generator=generator)
    return ceiling if curvature * ceiling <= 1.0 else 1.0 / curvature
