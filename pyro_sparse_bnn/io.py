"""Atomic file writes: a crash mid-write never leaves a half-written file at the target path.

>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> with atomic_path(target) as tmp:
...     _ = tmp.write_text("done")
>>> target.read_text()
'done'
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_path", "check_writable", "read_tagged"]


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


def read_tagged(path: str | os.PathLike, tag: str, what: str, *, weights_only: bool = True) -> dict:
    """The dict ``torch.save`` wrote to ``path`` with ``"format": tag``; a ``ValueError`` naming
    ``what`` for a missing, corrupted or foreign file. With ``weights_only`` (the default)
    loading accepts tensors and plain values only, so it runs no code from the file.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "state.pt"
    >>> torch.save({"format": "demo", "n": 3}, path)
    >>> read_tagged(path, "demo", "demo file")["n"]
    3
    >>> read_tagged(path, "other", "checkpoint")
    Traceback (most recent call last):
    ValueError: checkpoint '...state.pt' is not a saved other
    """
    if not os.path.isfile(path):
        raise ValueError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:
        raise ValueError(f"{what} {str(path)!r} is corrupted or unreadable ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != tag:
        raise ValueError(f"{what} {str(path)!r} is not a saved {tag}")
    return payload
