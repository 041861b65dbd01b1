"""Checks at the public boundary: bad input fails here, before any work starts."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_tensor",
    "check_bool",
    "check_choice",
    "check_keywords",
    "check_nonnegative",
    "check_number",
    "check_positive",
    "check_positive_int",
    "check_xy",
]


def as_tensor(value: Any, name: str) -> Tensor:
    """Accept a tensor or numpy array; anything else is a ``TypeError`` naming ``name``."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return value


def check_xy(x: Any, y: Any = None, *, model: Any = None) -> tuple[Tensor, Tensor | None]:
    """Validate features ``x`` and targets ``y`` (and, if it can, ``model``'s own expectations).

    >>> check_xy(torch.zeros(2, 3), torch.tensor([0, 1]))[0].shape
    torch.Size([2, 3])
    >>> check_xy(torch.zeros(2, 3), torch.tensor([0, 1, 1]))
    Traceback (most recent call last):
    ValueError: X and y must have the same number of rows, got 2 and 3
    """
    x = as_tensor(x, "X")
    if getattr(model, "token_inputs", False):  # an Embedding first: integer token ids
        if x.dtype.is_floating_point or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"X must hold integer token ids for this model, got dtype {x.dtype}")
    elif not x.dtype.is_floating_point:
        raise TypeError(f"X must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"X must have shape (n, features, ...), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("X is empty: it must have at least one row")
    if not torch.isfinite(x).all():
        raise ValueError("X contains NaN or infinite values")
    if y is not None:
        y = as_tensor(y, "y")
        if y.shape[0] != x.shape[0]:
            raise ValueError(
                f"X and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}"
            )
        if y.dtype.is_floating_point and not torch.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values")
        if y.device != x.device:
            raise ValueError(f"X and y must be on one device, got {x.device} and {y.device}")
    check = getattr(model, "check_data", None)
    if check is not None:
        check(x, y)
    return x, y


def check_number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """A finite number (an int if ``integer``) in the interval from ``low`` to ``high`` (each end
    closed unless ``*_open``): a ``TypeError`` for another type, a ``ValueError`` outside.

    >>> check_number(0.5, "rate", low=0, high=1, low_open=True, high_open=True)
    0.5
    >>> check_number(1.0, "rate", low=0, high=1, low_open=True, high_open=True)
    Traceback (most recent call last):
    ValueError: rate must be in (0, 1), got 1.0
    >>> check_number(np.float32(0.25), "rate", low=0)
    0.25
    >>> check_number(2.5, "num_chains", integer=True, low=1)
    Traceback (most recent call last):
    TypeError: num_chains must be an int, got 2.5
    """
    kinds = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool | np.bool_) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {value!r}")
    if isinstance(value, np.generic):  # numpy scalars: np.float32(1.0), np.int64(3)
        value = value.item()
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        raise ValueError(
            f"{name} must be {_interval(low, high, low_open, high_open)}, got {value!r}"
        )
    return value


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if high == math.inf:
        if low == -math.inf:
            return "finite"
        return f"{'>' if low_open else '>='} {low:g}" if low != 0 or not low_open else "positive"
    if low == -math.inf:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_positive(value: Any, name: str, *, integer: bool = False) -> Any:
    """A finite positive number (an int if ``integer``), else ``ValueError``/``TypeError``."""
    return check_number(value, name, integer=integer, low=0, low_open=True)


def check_nonnegative(value: Any, name: str, *, integer: bool = False) -> Any:
    """A finite number (an int if ``integer``) >= 0, else ``ValueError``/``TypeError``."""
    return check_number(value, name, integer=integer, low=0)


def check_positive_int(value: Any, name: str) -> int:
    """Shorthand for :func:`check_positive` with ``integer=True``."""
    return check_positive(value, name, integer=True)


def check_choice(value: Any, name: str, choices: list[str] | tuple[str, ...]) -> str:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


GRAPH_MODES = ("eager", "traced", "compiled")
"""Values of the ``graph`` option of every iterative method (svi, nuts/hmc, SG-MCMC): how each
step evaluates the model. ``"eager"`` runs it under Pyro's effect handlers; ``"traced"`` replays
a graph of ATen operations traced once (``make_fx``) and checked against the eager step, falling
back to eager with a warning where tracing fails; ``"compiled"`` also compiles that graph with
``torch.compile``."""


def check_graph(graph: Any, allowed: tuple[str, ...] = GRAPH_MODES) -> str:
    """``graph`` if it is one of ``allowed`` (:data:`GRAPH_MODES`); else a ValueError/TypeError.

    >>> check_graph("traced")
    'traced'
    >>> check_graph(True)
    Traceback (most recent call last):
    TypeError: graph must be one of ['compiled', 'eager', 'traced'] (a string), got True
    """
    if not isinstance(graph, str):
        raise TypeError(f"graph must be one of {sorted(allowed)} (a string), got {graph!r}")
    return check_choice(graph, "graph", allowed)


def check_bool(value: Any, name: str) -> bool:
    """A flag: ``True`` or ``False`` only (a truthy string is a ``TypeError`` naming ``name``).

    >>> check_bool(False, "masked")
    False
    >>> check_bool("no", "masked")
    Traceback (most recent call last):
    TypeError: masked must be a bool, got 'no'
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_keywords(where: str, given: Iterable[str], valid: Sequence[str]) -> None:
    """A TypeError naming ``where``, the closest valid keywords and all of them, for a keyword
    not in ``valid``.

    >>> check_keywords("fit_mcmc()", ["num_sample"], ["num_samples", "warmup", "num_steps"])
    Traceback (most recent call last):
    TypeError: fit_mcmc() got an unknown option 'num_sample'; did you mean 'num_samples' or ...
    """
    for name in given:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise TypeError(
                f"{where} got an unknown option {name!r}; {hint}its options are {list(valid)}"
            )
