"""Leaving the caller's global state as it was: random generators and Pyro's parameter mode.

Pyro draws from the global torch (and NumPy) generators, and a ``PyroModule`` keeps its
parameters in the global param store unless Pyro's module-local mode is on. The toolkit wants
neither to leak: :func:`isolated` runs a function with module-local parameters (models and guides
own their parameters, so two fits never share state through the param store) and with the
global torch, CUDA, NumPy and ``random`` generators forked, so the caller's streams continue
after the call exactly as if it had not happened. A ``seed`` then drives the forked streams only.

>>> import torch
>>> torch.manual_seed(1)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> with isolated_state(seed=7):
...     inside = torch.rand(())
>>> after = torch.rand(())
>>> _ = torch.manual_seed(1)
>>> bool(torch.rand(()) == after)
True
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import random
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pyro
import torch

from .validation import check_keywords

__all__ = [
    "MAX_SEED", "LocalParams", "check_seed", "isolated", "isolated_state", "local_params",
    "own_parameters",
]  # fmt: skip

MAX_SEED = 2**32 - 1  # NumPy's global generator takes seeds in [0, 2**32)
F = TypeVar("F", bound=Callable[..., Any])


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed in ``[0, 2**32)`` (NumPy's range), checked before anything is seeded.

    >>> check_seed(3)
    3
    >>> check_seed("0")
    Traceback (most recent call last):
    TypeError: seed must be an int, got '0'
    >>> check_seed(-1)
    Traceback (most recent call last):
    ValueError: seed must be in [0, 4294967295], got -1
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be in [0, {MAX_SEED}], got {value!r}")
    return int(value)


def local_params() -> contextlib.AbstractContextManager:
    """Pyro's module-local parameter mode for the duration of a ``with`` block only."""
    return pyro.settings.context(module_local_params=True)


def own_parameters(*objects: Any) -> None:
    """Give every ``PyroModule`` inside ``objects`` the local parameter state that Pyro only
    creates for modules built in module-local mode (so one built outside it can run inside)."""
    for obj in objects:
        if not isinstance(obj, torch.nn.Module):
            continue
        for module in obj.modules():
            context = getattr(module, "_pyro_context", None)
            if context is not None and not hasattr(context, "param_state"):
                context.param_state = {"params": {}, "constraints": {}}


class LocalParams:
    """Mixin for a ``PyroModule`` that owns its parameters whoever calls it: each call runs in
    module-local mode, so nothing reaches (or is read from) the global param store."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with local_params():
            own_parameters(self)
            return super().__call__(*args, **kwargs)  # type: ignore[misc]


_ACTIVE = threading.local()


@contextlib.contextmanager
def isolated_state(seed: int | None = None) -> Iterator[None]:
    """Module-local Pyro parameters and forked global generators (seeded with ``seed``).

    Re-entrant: inside another isolated block an unseeded one changes nothing, so a public call
    made by another shares its random stream instead of replaying it.
    """
    if seed is not None:
        check_seed(seed)
    elif getattr(_ACTIVE, "depth", 0):
        yield
        return
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    _ACTIVE.depth = getattr(_ACTIVE, "depth", 0) + 1
    try:
        with torch.random.fork_rng(devices=cuda), local_params():
            if seed is not None:
                pyro.set_rng_seed(seed)
            yield
    finally:
        _ACTIVE.depth -= 1
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def isolated(fn: F) -> F:
    """Decorate ``fn`` to run in :func:`isolated_state` (unseeded: ``fn`` seeds if it wants); an
    unknown keyword is a TypeError naming the closest valid ones (``validation.check_keywords``).

    The wrapper shares ``fn``'s module globals, so doctest still finds ``fn``'s examples.
    """
    enter, own, check = isolated_state, own_parameters, check_keywords
    parameters = inspect.signature(fn).parameters.values()
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    keywords = [
        p.name
        for p in parameters
        if p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name not in ("self", "cls")
    ]
    where = f"{fn.__qualname__}()"

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not open_ended:
            check(where, kwargs, keywords)
        with enter():
            own(*args, *kwargs.values())
            return fn(*args, **kwargs)

    code, closure = wrapper.__code__, wrapper.__closure__
    wrapped = types.FunctionType(code, fn.__globals__, fn.__name__, None, closure)
    return functools.update_wrapper(wrapped, fn)  # type: ignore[return-value]
