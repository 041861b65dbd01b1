"""One dtype rule: a model runs in the floating dtype of the data it was fitted on.

While :func:`data_dtype` is active, torch's default dtype is the data's, so the Python numbers of
a hand-written model (``dist.Normal(0.0, 1.0)``) become tensors of that dtype; a ``SparseBNN``'s
network is converted to it when fitted. ``fit`` and every ``FitResult`` computation run under it,
and a ``FitResult`` converts new inputs to its training dtype (:func:`to_fit_dtype`), so a
float64 fit predicts float32 inputs and the reverse. The user's default dtype is restored after.

>>> with data_dtype(torch.float64):
...     torch.tensor(1.0).dtype
torch.float64
>>> torch.tensor(1.0).dtype
torch.float32
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["data_dtype", "to_fit_dtype"]

_DEFAULTABLE = (torch.float32, torch.float64)
"""The dtypes ``torch.set_default_dtype`` takes without a warning."""


@contextmanager
def data_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make ``dtype`` (a float32 or float64 data dtype) torch's default dtype inside; any other
    dtype leaves the default as it is."""
    before = torch.get_default_dtype()
    if dtype not in _DEFAULTABLE or dtype == before:
        yield
        return
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def float_dtype(x: Tensor) -> torch.dtype:
    """The floating dtype a model fitted to data ``x`` computes in: ``x``'s own, or torch's
    default for integer inputs (token ids).

    >>> float_dtype(torch.zeros(1, dtype=torch.float64)), float_dtype(torch.tensor([3]))
    (torch.float64, torch.float32)
    """
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def to_fit_dtype(value: Tensor | None, fit_dtype: torch.dtype) -> Tensor | None:
    """A floating tensor converted to ``fit_dtype``; integer targets (class labels) unchanged.

    >>> to_fit_dtype(torch.ones(2, dtype=torch.float64), torch.float32).dtype
    torch.float32
    >>> to_fit_dtype(torch.tensor([0, 2]), torch.float32).dtype
    torch.int64
    """
    if value is None or not value.dtype.is_floating_point:
        return value
    return value.to(fit_dtype)
