"""Leaving the caller's global state as it was: random generators, Pyro's parameter mode and
torch's thread count.

Pyro draws from the global torch (and NumPy) generators, and a ``PyroModule`` keeps its
parameters in the global param store unless Pyro's module-local mode is on. The toolkit wants
neither to leak: :func:`isolated` runs a function with module-local parameters (models and guides
own their parameters, so two fits never share state through the param store) and with the
global torch, CUDA, NumPy and ``random`` generators forked, so the caller's streams continue
after the call exactly as if it had not happened. A ``seed`` then drives the forked streams only.
:func:`loop_threads` runs a training loop, and :func:`isolated` every public call, with the number
of intra-op threads that suits its size (one for a small model, where a second thread only adds
contention: ``benchmarks/threads.py``) and restores the caller's count afterwards.

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
import itertools
import os
import random
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import pyro
import torch

from .validation import check_keywords

__all__ = [
    "MAX_SEED", "SINGLE_THREAD_BELOW", "THREADS_VARIABLE", "LocalParams", "check_seed", "isolated",
    "isolated_state", "local_params", "loop_threads", "model_values", "own_parameters",
    "requested_threads", "threads_for", "trainable_elements",
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
    """Decorate ``fn`` to run in :func:`isolated_state` (unseeded: ``fn`` seeds if it wants) and
    with :func:`loop_threads` for the size of the models among its arguments
    (:func:`model_values`); an unknown keyword is a TypeError naming the closest valid ones
    (``validation.check_keywords``).

    The wrapper shares ``fn``'s module globals, so doctest still finds ``fn``'s examples.
    """
    enter, own, check, threads, size = (
        isolated_state, own_parameters, check_keywords, loop_threads, model_values
    )  # fmt: skip
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
        with enter(), threads(size((*args, *kwargs.values()))):
            own(*args, *kwargs.values())
            return fn(*args, **kwargs)

    code, closure = wrapper.__code__, wrapper.__closure__
    wrapped = types.FunctionType(code, fn.__globals__, fn.__name__, None, closure)
    return functools.update_wrapper(wrapped, fn)  # type: ignore[return-value]


THREADS_VARIABLE = "PSBNN_NUM_THREADS"
"""Environment variable that sets the intra-op threads of every training loop: a positive int,
or ``auto`` / unset for :func:`threads_for`'s rule."""

SINGLE_THREAD_BELOW = 10_000_000
"""Loops that update fewer trainable values per step run single-threaded (the crossover measured
by ``benchmarks/threads.py``)."""


def requested_threads(num_threads: int | None = None) -> int | None:
    """The user's choice of loop threads: ``num_threads``, else ``$PSBNN_NUM_THREADS``, else
    ``None`` (the size rule decides).

    >>> requested_threads(3)
    3
    >>> requested_threads(0)
    Traceback (most recent call last):
    ValueError: num_threads must be a positive int or None, got 0
    """
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        return num_threads
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if value.lower() in ("", "auto"):
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_VARIABLE} must be a positive int or 'auto', got {value!r}")
    return int(value)


def threads_for(work: int | None, num_threads: int | None = None) -> int:
    """Intra-op threads for a loop that updates ``work`` trainable values per step: the user's
    choice (:func:`requested_threads`), else one below :data:`SINGLE_THREAD_BELOW`, else torch's
    current setting (also when ``work`` is unknown).

    >>> threads_for(67, num_threads=None)
    1
    >>> threads_for(67, num_threads=2)
    2
    >>> threads_for(10**8) == torch.get_num_threads()
    True
    """
    requested = requested_threads(num_threads)
    if requested is not None:
        return requested
    if work is not None and work < SINGLE_THREAD_BELOW:
        return 1
    return torch.get_num_threads()


@contextlib.contextmanager
def loop_threads(work: int | None, num_threads: int | None = None) -> Iterator[int]:
    """Run a ``with`` block with :func:`threads_for` intra-op threads (yielded), then restore the
    caller's count, also after an exception. Inter-op threads are left alone.

    >>> before = torch.get_num_threads()
    >>> with loop_threads(67) as n:
    ...     n, torch.get_num_threads()
    (1, 1)
    >>> torch.get_num_threads() == before
    True
    """
    before = torch.get_num_threads()
    chosen = threads_for(work, num_threads)
    try:
        if chosen != before:
            torch.set_num_threads(chosen)
        yield chosen
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def trainable_elements(objects: Iterable[Any]) -> int:
    """Number of distinct trainable values in ``objects``: modules' parameters, optimisers'
    parameter groups and tensors that require grad (each tensor counted once).

    >>> net = torch.nn.Linear(4, 3)
    >>> trainable_elements([net, torch.optim.SGD(net.parameters(), lr=0.1)])
    15
    """
    seen: dict[int, int] = {}
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            tensors: Iterable[Any] = obj.parameters()
        elif isinstance(obj, torch.optim.Optimizer):
            tensors = (p for group in obj.param_groups for p in group["params"])
        elif isinstance(obj, torch.Tensor):
            tensors = (obj,)
        else:
            continue
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                seen[id(t)] = t.numel()
    return sum(seen.values())


def model_values(objects: Iterable[Any]) -> int | None:
    """Size of the models among ``objects``, the work measure of a public call: a module's
    parameters and floating buffers (a ``SparseBNN`` keeps its weights as buffers), and for a
    result of a model function (anything with ``samples`` of ``(chain, draw, ...)`` tensors) the
    values of one draw. ``None`` when there is no model.

    >>> model_values([torch.nn.Linear(4, 3), torch.zeros(5)])
    15
    >>> model_values([torch.zeros(5)]) is None
    True
    """
    total, found = 0, False
    for obj in objects:
        model = obj if isinstance(obj, torch.nn.Module) else getattr(obj, "model", None)
        samples = getattr(obj, "samples", None)
        if isinstance(model, torch.nn.Module):
            tensors = itertools.chain(model.parameters(), model.buffers())
            values = {id(t): t.numel() for t in tensors if t.is_floating_point()}
            total, found = total + sum(values.values()), True
        elif isinstance(samples, Mapping) and samples:
            draws = [v for v in samples.values() if isinstance(v, torch.Tensor) and v.dim() >= 2]
            if draws:
                per_draw = sum(v[0, 0].numel() for v in draws)
                total, found = total + per_draw, True
    return total if found else None
