"""Bags of instances as one padded tensor, bag pooling, and the bag-level network.

A bag is a variable-size set of instances with one label. :func:`pad_bags` stacks bags into one
tensor ``(bags, max_size, 1 + features)`` whose column 0 says which rows are instances (1) and
which are padding (0), so a bag is one row of ``X`` for ``fit``, minibatching, ``predict`` and
every inference method. :class:`MILNet` reads that layout: an instance network acts on each
instance's features, :class:`BagPooling` pools each bag's real instances, a bag network maps the
pooled vector to the output. Padding changes nothing: its rows are never pooled.

>>> import torch
>>> from torch import nn
>>> X = pad_bags([torch.ones(2, 3), torch.zeros(1, 3)])
>>> tuple(X.shape), X[1, :, 0].tolist()  # bag 1 has one instance and one padding row
((2, 2, 4), [1.0, 0.0])
>>> net = MILNet(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), nn.Linear(8, 2), pooling="meanmax")
>>> tuple(net(X).shape)
(2, 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["POOLINGS", "BagPooling", "MILNet", "pad_bags"]

POOLINGS = ("mean", "max", "meanmax")
"""Pooling modes: the mean, the maximum, or both concatenated (``[mean, max]``) per feature."""


def pad_bags(bags: Sequence[Tensor]) -> Tensor:
    """Stack bags ``(size_i, features)`` into ``(len(bags), max size, 1 + features)``.

    Column 0 is 1 on the rows that hold an instance and 0 on padding; padding rows are zero. The
    dtype and device are the first bag's.

    >>> pad_bags([torch.tensor([[5.0]]), torch.tensor([[6.0], [7.0]])])[:, :, 1].tolist()
    [[5.0, 0.0], [6.0, 7.0]]
    """
    if isinstance(bags, Tensor) or not isinstance(bags, Sequence) or not bags:
        raise TypeError("bags must be a non-empty sequence of (size, features) tensors")
    first = bags[0]
    for i, bag in enumerate(bags):
        if not isinstance(bag, Tensor) or bag.dim() != 2 or bag.shape[0] == 0:
            raise ValueError(f"bags[{i}] must be a (size >= 1, features) tensor, got "
                             f"{getattr(bag, 'shape', type(bag).__name__)}")  # fmt: skip
        if bag.shape[1] != first.shape[1] or not bag.dtype.is_floating_point:
            raise ValueError(
                f"bags[{i}] must be floating point with {first.shape[1]} features, got "
                f"{bag.dtype} with {bag.shape[1]}"
            )
    size = max(bag.shape[0] for bag in bags)
    out = first.new_zeros(len(bags), size, 1 + first.shape[1])
    for i, bag in enumerate(bags):
        out[i, : bag.shape[0], 0] = 1.0
        out[i, : bag.shape[0], 1:] = bag.to(out)
    return out


class BagPooling(nn.Module):
    """Pool ``(bags, size, features)`` over the instances where ``present`` is true.

    ``"meanmax"`` returns ``[mean, max]`` (``2 * features`` columns, all means first).

    >>> h = torch.tensor([[[1.0], [3.0], [9.0]]])
    >>> present = torch.tensor([[True, True, False]])
    >>> BagPooling("meanmax")(h, present).tolist()
    [[2.0, 3.0]]
    """

    def __init__(self, mode: str = "meanmax") -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"mode must be one of {POOLINGS}, got {mode!r}")
        self.mode = mode

    @property
    def copies(self) -> int:
        """How many pooled columns each instance feature gives (2 for ``"meanmax"``)."""
        return 2 if self.mode == "meanmax" else 1

    def forward(self, h: Tensor, present: Tensor) -> Tensor:
        keep = present.unsqueeze(-1)
        pooled = []
        if self.mode in ("mean", "meanmax"):
            count = keep.sum(-2).clamp(min=1).to(h.dtype)
            pooled.append(torch.where(keep, h, 0.0).sum(-2) / count)
        if self.mode in ("max", "meanmax"):
            pooled.append(torch.where(keep, h, -torch.inf).amax(-2))
        return torch.cat(pooled, -1)

    def extra_repr(self) -> str:
        return repr(self.mode)


class MILNet(nn.Module):
    """A bag-level network: ``bag(pool(instance(features)))`` on :func:`pad_bags`' layout.

    Args:
        instance: acts on the last dim (one instance's features), e.g. Linear layers and
            elementwise activations.
        bag: maps the pooled vector of a bag to the output.
        pooling: one of :data:`POOLINGS`.

    >>> net = MILNet(nn.Linear(3, 2), nn.Linear(2, 1), pooling="max")
    >>> x = pad_bags([torch.randn(4, 3), torch.randn(2, 3)])
    >>> alone = net(pad_bags([x[1, :2, 1:]]))  # the second bag without its padding
    >>> bool(torch.allclose(net(x)[1], alone[0]))
    True
    """

    def __init__(self, instance: nn.Module, bag: nn.Module, pooling: str = "meanmax") -> None:
        super().__init__()
        for value, name in ((instance, "instance"), (bag, "bag")):
            if not isinstance(value, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
        self.instance = instance
        self.pool = BagPooling(pooling)
        self.bag = bag

    def forward(self, x: Tensor) -> Tensor:
        present = x[..., 0] > 0.5
        return self.bag(self.pool(self.instance(x[..., 1:]), present))

    def check_input(self, x: Tensor, in_features: int) -> None:
        """Raise ``ValueError`` unless ``x`` is :func:`pad_bags`' layout for ``in_features``."""
        if x.dim() != 3 or x.shape[2] != 1 + in_features:
            raise ValueError(
                f"X must have shape (bags, max bag size, 1 + {in_features}) as pad_bags makes "
                f"it (column 0 marks instances), got {tuple(x.shape)}"
            )
        present = x[..., 0]
        if not ((present == 0) | (present == 1)).all():
            raise ValueError("X[..., 0] must be 1 on instances and 0 on padding (see pad_bags)")
        if not (present == 1).any(1).all():
            raise ValueError("every bag of X must hold at least one instance (X[i, :, 0] == 1)")
