"""The file of a :class:`~pyro_sparse_bnn.infer.result.FitResult`: what ``save`` writes and
``load`` reads back (``torch.save`` of a tagged dict, read with ``weights_only=True``).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "fields.pt"
>>> fields = dict.fromkeys(SAVED_FIELDS) | {"info": {}}
>>> _ = write_fields(fields, path)
>>> read_fields(path)["info"]
{}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..io import atomic_path, read_tagged

__all__ = ["FILE_FORMAT", "FILE_FORMAT_VERSION", "SAVED_FIELDS", "read_fields", "write_fields"]

FILE_FORMAT = "pyro_sparse_bnn.FitResult"
FILE_FORMAT_VERSION = 2
SAVED_FIELDS = (
    "model", "samples", "method", "x", "y", "info", "sample_stats", "guide", "posterior"
)  # fmt: skip


def write_fields(fields: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a result's ``SAVED_FIELDS`` to ``path`` atomically; an optimiser in ``info`` is
    written as its ``state_dict()`` (a safe load cannot rebuild its defaultdict state)."""
    payload = {
        "format": FILE_FORMAT,
        "format_version": FILE_FORMAT_VERSION,
        "package_version": __version__,
        **{k: fields[k] for k in SAVED_FIELDS},
        "info": {
            k: v.state_dict() if isinstance(v, torch.optim.Optimizer) else v
            for k, v in fields["info"].items()
        },
    }
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except (AttributeError, TypeError, ValueError) as err:  # pickling a closure/lambda
            raise TypeError(
                f"cannot save this result: {err}. Models and guides must be importable "
                "objects (module-level functions or nn.Modules), not lambdas or closures"
            ) from None
    return Path(path)


def read_fields(path: str | os.PathLike, *, trusted: Sequence[Any] = ()) -> dict[str, Any]:
    """The ``SAVED_FIELDS`` of a file :func:`write_fields` wrote, running no code from it
    (:func:`~pyro_sparse_bnn.io.read_tagged`; ``trusted``: the user's own classes and
    functions the file may name). A clear ``ValueError`` for a bad file or another format."""
    payload = read_tagged(path, FILE_FORMAT, "path", trusted=trusted)
    if payload["format_version"] != FILE_FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has file format {payload['format_version']} (written by "
            f"pyro_sparse_bnn {payload['package_version']}); this version reads format "
            f"{FILE_FORMAT_VERSION}"
        )
    return {k: payload[k] for k in SAVED_FIELDS}
