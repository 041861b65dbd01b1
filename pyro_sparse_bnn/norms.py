"""Normalisation layers in Bayesian networks: point-estimate affine parameters, batch statistics
while training, running statistics recomputed once the fit is done.

A ``BatchNorm`` layer in train mode normalises by the statistics of the batch and, in torch,
updates its running statistics as a side effect. In a Bayesian network one call of the model
is one draw of the weights (and, vectorised, several draws at once), so those updates would
average over draws and steps in an order no method controls. :class:`~pyro_sparse_bnn.SparseBNN`
therefore, in train mode, normalises by batch statistics without touching the running ones
(a one-row call, such as a shape trace, uses the running statistics instead: one row has no
variance), and :func:`~pyro_sparse_bnn.fit` then recomputes the running statistics in one pass
over the training data at the posterior-mean weights (as SWA does) and leaves the model in
eval mode, where predictions use them, as in torch. ``LayerNorm``, ``GroupNorm`` and
``InstanceNorm`` keep no statistics; their affine parameters, like BatchNorm's, are point
estimates learned with the biases.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).train()
>>> with batch_statistics(net, rows=4):
...     out = net(torch.randn(4, 2))
>>> net[1].running_mean.tolist()  # untouched
[0.0, 0.0, 0.0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

__all__ = [
    "NORM_LAYERS", "RUNNING_STAT_LAYERS", "batch_statistics", "has_running_statistics",
    "recompute_statistics",
]  # fmt: skip

RUNNING_STAT_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
NORM_LAYERS = (
    *RUNNING_STAT_LAYERS,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
"""Normalisation layers: their affine parameters are point estimates."""


def _tracking(net: nn.Module) -> list[nn.Module]:
    layers = (m for m in net.modules() if isinstance(m, RUNNING_STAT_LAYERS))
    return [m for m in layers if m.track_running_stats]


def has_running_statistics(net: nn.Module) -> bool:
    """Whether ``net`` has BatchNorm layers that keep running statistics."""
    return bool(_tracking(net))


@contextlib.contextmanager
def batch_statistics(net: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, ``net``'s BatchNorm layers in train mode normalise a batch of ``rows``
    rows by its own statistics without updating the running ones (by the running ones if
    ``rows`` is 1); nothing changes in eval mode."""
    layers = [m for m in _tracking(net) if m.training]
    try:
        for m in layers:
            if rows > 1:
                m.track_running_stats = False
            else:
                m.training = False
        yield
    finally:
        for m in layers:
            m.track_running_stats = True
            m.training = True


@torch.no_grad()
def recompute_statistics(
    net: nn.Module, run: Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 1024
) -> bool:
    """Reset ``net``'s BatchNorm running statistics and recompute them as the plain average over
    ``x`` (in batches) of the batch statistics seen by ``run(batch)``; ``net`` ends in eval mode.
    Returns whether ``net`` had any such statistics."""
    layers = _tracking(net)
    if not layers or x.shape[0] < 2:
        return False
    momenta = [m.momentum for m in layers]
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
            m.train()
        for batch in x.split(max(batch_size, 2)):
            if batch.shape[0] > 1:  # one row has no variance
                run(batch)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        net.eval()
    return True
