"""Files: writes are atomic (a crash mid-write never leaves a half-written file at the target
path) and reads run no code from the file (:func:`read_tagged`).

>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> with atomic_path(target) as tmp:
...     _ = tmp.write_text("done")
>>> target.read_text()
'done'
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_path", "check_writable", "read_tagged", "trusted_global"]


def check_writable(path: str | os.PathLike, name: str = "path") -> Path:
    """``path`` as a ``Path`` whose directory exists; a ``ValueError`` naming ``name`` otherwise."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a directory, expected a file path")
    if not target.resolve().parent.is_dir():
        raise ValueError(f"{name} {str(path)!r}: directory does not exist")
    return target


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, else delete it.

    The temporary file is created with mode ``0o666`` less the umask (as by a plain
    ``open(path, "w")``, the kernel applying the umask), not ``mkstemp``'s owner-only mode.
    """
    target = check_writable(path)
    directory = target.resolve().parent
    tmp = directory / f".{target.name}.{uuid.uuid4().hex}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_tagged(
    path: str | os.PathLike, tag: str, what: str, *, trusted: Sequence[Any] = ()
) -> dict:
    """The dict ``torch.save`` wrote to ``path`` with ``"format": tag``; a ``ValueError`` naming
    ``what`` for a missing, corrupted or foreign file.

    Loading runs no code from the file: ``torch.load(weights_only=True)`` rebuilds tensors, plain
    values and only the classes of :func:`trusted_global` (and the objects in ``trusted``, for a
    user's own model function or module class); a file naming anything else is refused before it
    is unpickled.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "state.pt"
    >>> torch.save({"format": "demo", "n": 3, "layer": torch.nn.Linear(2, 1)}, path)
    >>> read_tagged(path, "demo", "demo file")["layer"]
    Linear(in_features=2, out_features=1, bias=True)
    >>> read_tagged(path, "other", "checkpoint")
    Traceback (most recent call last):
    ValueError: checkpoint '...state.pt' is not a saved other
    """
    if not os.path.isfile(path):
        raise ValueError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:
        raise ValueError(f"{what} {str(path)!r} is corrupted or unreadable ({err})") from None
    own = {f"{obj.__module__}.{obj.__qualname__}": obj for obj in trusted}
    allowed = []
    for name in sorted(names):
        obj = own[name] if name in own else trusted_global(name)
        if obj is None:
            raise ValueError(
                f"{what} {str(path)!r} refers to {name}, which is not among the torch, Pyro "
                f"and pyro_sparse_bnn types a file may name, so nothing was loaded. If you "
                f"trust the file, pass the object itself: trusted=[{name}]"
            )
        allowed.append((obj, name))
        if name == "numpy.dtype":  # a dtype's state is set on an instance of its own class
            allowed += [(cls, f"numpy.dtypes.{cls.__name__}") for cls in _numpy_dtype_classes()]
    new = [entry for entry in allowed if entry not in torch.serialization.get_safe_globals()]
    try:
        with torch.serialization.safe_globals(new):
            payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{what} {str(path)!r} is corrupted or unreadable ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != tag:
        raise ValueError(f"{what} {str(path)!r} is not a saved {tag}")
    return payload


def _numpy_dtype_classes() -> list[type]:
    import numpy.dtypes

    return [v for v in vars(numpy.dtypes).values() if isinstance(v, type)]


_TRUSTED_PACKAGES = (
    "pyro_sparse_bnn.",
    "torch.nn.modules.",
    "torch.nn.parameter",
    "torch.distributions.",
    "pyro.distributions.",
    "pyro.nn.module",
    "pyro.poutine.trace_struct",
    "pyro.infer.autoguide.",
    "numpy.dtypes",
)
"""Modules whose *classes* a file may name: rebuilding one calls only that class's own code."""

_TRUSTED_FUNCTIONS = frozenset(
    {
        "functools.partial",  # a class: building a partial calls nothing
        "collections.defaultdict",
        "builtins.dict",
        "builtins.set",
        "builtins.slice",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        *(
            f"pyro.infer.autoguide.initialization.init_to_{kind}"
            for kind in ("feasible", "median", "mean", "value", "sample", "uniform")
        ),
    }
)
"""Other objects a saved result may name: numpy arrays' rebuilders and Pyro's init strategies."""


def trusted_global(name: str) -> Any:
    """The object ``name`` (``module.qualname``) names, if a file may name it, else ``None``:
    a class from a trusted package (:data:`_TRUSTED_PACKAGES`) or one of a few listed functions.
    Modules are imported only when trusted.

    >>> trusted_global("torch.nn.modules.linear.Linear")
    <class 'torch.nn.modules.linear.Linear'>
    >>> trusted_global("posix.system") is None, trusted_global("builtins.eval") is None
    (True, True)
    """
    listed = name in _TRUSTED_FUNCTIONS
    if not listed and not name.startswith(_TRUSTED_PACKAGES):
        return None
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except (AttributeError, ImportError):
            return None
        return obj if listed or isinstance(obj, type) else None
    return None
