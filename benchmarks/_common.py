"""Shared runner conventions for benchmark scripts: a printed table and a results JSON file.

Every script writes ``benchmarks/results/NAME.json``: ``{"meta": {...}, "rows": [...]}`` where
``rows`` are flat records with snake_case keys, one per method or configuration.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
_PACKAGES = ("torch", "pyro-ppl", "arviz", "numpy", "pyro-sparse-bnn")


def meta(**extra: Any) -> dict[str, Any]:
    """Reproducibility record: command, package versions, machine, plus ``extra`` (seed, split)."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.system()}",
        "packages": versions,
        **extra,
    }


def write_results(name: str, rows: Sequence[Mapping[str, Any]], **meta_extra: Any) -> Path:
    """Atomically write ``results/NAME.json`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"meta": meta(**meta_extra), "rows": [dict(r) for r in rows]}
    fd, tmp = tempfile.mkstemp(dir=RESULTS, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    os.replace(tmp, path)
    return path


def print_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as a markdown table restricted to ``columns``."""

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = list(rows)
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |")
