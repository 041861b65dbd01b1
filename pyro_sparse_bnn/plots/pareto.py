"""Pareto fronts of benchmark rows: exact fronts, per-method fronts over seeds, and their plot."""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes

# Pareto fronts of benchmark rows


def _rows(results: Any) -> list[dict[str, Any]]:
    """Rows of a benchmark results file, its parsed ``{"meta", "rows"}`` dict, a row list or a
    pandas DataFrame."""
    if isinstance(results, str | os.PathLike):
        with open(results) as f:
            results = json.load(f)
    if isinstance(results, Mapping):
        if "rows" not in results:
            raise ValueError("results must hold a 'rows' list (a benchmarks/results/*.json file)")
        results = results["rows"]
    elif callable(getattr(results, "to_dict", None)):  # a pandas DataFrame
        results = results.to_dict("records")
    if not isinstance(results, Sequence) or not all(isinstance(r, Mapping) for r in results):
        raise TypeError(
            "results must be a path, a {'rows': [...]} dict, a list of row dicts or a DataFrame"
        )
    return [dict(r) for r in results]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_numeric(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
    for key in keys:
        bad = [r for r in rows if not _is_number(r.get(key))]
        if bad:
            raise ValueError(
                f"every row needs a finite numeric {key!r}; this one does not: {bad[0]}"
            )


def pareto_front(
    rows: Sequence[Mapping[str, Any]], *, x: str = "n_kept", y: str = "test_error"
) -> list[dict[str, Any]]:
    """The rows no other row dominates (smaller is better on ``x`` and ``y``), sorted by ``x``.

    A row is dominated when another is no worse on both and better on one; rows with equal
    ``(x, y)`` do not dominate each other, so duplicates on the front are all kept. ``rows`` may
    also be anything :func:`plot_pareto` reads (a results path, dict or DataFrame).

    >>> rows = [{"n_kept": 10, "test_error": 0.2}, {"n_kept": 20, "test_error": 0.1},
    ...         {"n_kept": 30, "test_error": 0.15}, {"n_kept": 5, "test_error": 0.3}]
    >>> [r["n_kept"] for r in pareto_front(rows)]
    [5, 10, 20]
    """
    rows = _rows(rows)
    _check_numeric(rows, (x, y))
    front: list[dict[str, Any]] = []
    best, last = math.inf, None
    for row in sorted(rows, key=lambda r: (r[x], r[y])):
        point = (row[x], row[y])
        if row[y] < best or point == last:
            front.append(row)
            best, last = row[y], point
    return front


@dataclass(frozen=True)
class ParetoFronts:
    """One method's Pareto fronts across seeds.

    ``per_seed`` maps each seed to its :func:`pareto_front`. At every ``x`` where some seed's
    front steps, each seed's front is its best ``y`` among rows with ``x' <= x`` (``inf`` before
    its first row); ``median``, ``low`` and ``high`` are the median, lowest and highest of those
    over the seeds (``inf`` where the median seed has no row yet).
    """

    per_seed: dict[Any, list[dict[str, Any]]]
    x: np.ndarray
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _staircase(front: list[dict[str, Any]], x: str, y: str, at: np.ndarray) -> np.ndarray:
    """A front's best ``y`` among its rows with ``x' <= at`` (``inf`` where none)."""
    xs = np.array([r[x] for r in front], dtype=np.float64)
    ys = np.array([r[y] for r in front], dtype=np.float64)
    index = np.searchsorted(xs, at, side="right") - 1
    return np.where(index >= 0, ys[np.maximum(index, 0)], np.inf)


def pareto_fronts(
    results: Any,
    *,
    x: str = "n_kept",
    y: str = "test_error",
    hue: str = "method",
    seed: str | None = "seed",
    where: Mapping[str, Any] | None = None,
) -> dict[str, ParetoFronts]:
    """Per ``hue`` label (method), the Pareto front of each seed and their median front.

    ``results`` as for :func:`plot_pareto`; rows are grouped by ``str(row[hue])`` (in order of
    first appearance) and ``row[seed]`` (rows without that column, or every row if ``seed`` is
    None, form one group); ``where`` keeps only the rows whose columns equal its values.

    >>> rows = [{"method": "a", "seed": s, "n_kept": n, "test_error": e}
    ...         for s, n, e in [(0, 5, 0.3), (0, 10, 0.1), (1, 5, 0.2), (1, 20, 0.05)]]
    >>> fronts = pareto_fronts(rows)["a"]
    >>> fronts.x.tolist(), fronts.median.round(3).tolist(), fronts.high.tolist()
    ([5.0, 10.0, 20.0], [0.25, 0.15, 0.075], [0.3, 0.2, 0.1])
    """
    rows = _select(_rows(results), where)
    _check_numeric(rows, (x, y))
    groups: dict[str, dict[Any, list[dict[str, Any]]]] = {}
    for row in rows:
        if hue not in row:
            raise ValueError(f"every row needs a {hue!r} label; this one does not: {row}")
        key = None if seed is None else row.get(seed)
        try:
            groups.setdefault(str(row[hue]), {}).setdefault(key, []).append(row)
        except TypeError:
            raise TypeError(f"seed values must be hashable, got {key!r} in {row}") from None
    out = {}
    for method, seeds in groups.items():
        per_seed = {s: pareto_front(group, x=x, y=y) for s, group in seeds.items()}
        at = np.unique(np.array([r[x] for f in per_seed.values() for r in f], dtype=np.float64))
        best = np.stack([_staircase(f, x, y, at) for f in per_seed.values()])
        out[method] = ParetoFronts(
            per_seed, at, np.median(best, axis=0), best.min(axis=0), best.max(axis=0)
        )
    return out


def _select(rows: list[dict[str, Any]], where: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if where is not None and not isinstance(where, Mapping):
        raise TypeError(f"where must be a mapping of column values, got {where!r}")
    chosen = [r for r in rows if all(k in r and r[k] == v for k, v in (where or {}).items())]
    if not chosen:
        raise ValueError("results has no rows" + (f" with {dict(where)}" if where else ""))
    return chosen


def plot_pareto(
    results: Any,
    *,
    x: str = "n_kept",
    y: str = "test_error",
    hue: str = "method",
    log_x: bool = True,
    ax: Axes | None = None,
    seed: str | None = "seed",
    where: Mapping[str, Any] | None = None,
    points: bool = True,
    overall: bool = False,
) -> Axes:
    """Test error against kept parameters: one Pareto front per method, with its seed spread.

    ``results`` is a ``benchmarks/results/*.json`` path, its parsed dict, a list of rows or a
    DataFrame; each row needs numeric ``x`` and ``y`` and a ``hue`` label (the method, or any
    other column such as ``"prior"``); ``where`` keeps only the rows whose columns equal its
    values (e.g. ``{"kind": "point"}``). Per label, in one colour (:func:`pareto_fronts`): every
    row as a faint point (``points``), each seed's front as a thin staircase with markers, and
    the median front over seeds as a thick staircase with markers (with one seed: that seed's
    front).
    ``overall`` adds the front of all rows together (black, dashed). Artists carry gids
    ``"points:<label>"``, ``"seed front:<label>:<seed>"``, ``"front:<label>"``, ``"front:all"``.
    """
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {ax!r}")
    rows = _select(_rows(results), where)
    fronts = pareto_fronts(rows, x=x, y=y, hue=hue, seed=seed)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4.0))
    many = len(fronts) > 10
    palette = sns.color_palette("husl" if many else None, n_colors=len(fronts))
    several = False
    for (method, front), color in zip(fronts.items(), palette, strict=True):
        if points:
            mine = [r for r in rows if str(r[hue]) == method]
            ax.scatter([r[x] for r in mine], [r[y] for r in mine], s=12, alpha=0.3,
                       color=color, linewidths=0, gid=f"points:{method}")  # fmt: skip
        if len(front.per_seed) > 1:
            several = True
            for s, seed_front in front.per_seed.items():
                ax.plot([r[x] for r in seed_front], [r[y] for r in seed_front],
                        drawstyle="steps-post", color=color, alpha=0.4, linewidth=0.8,
                        marker="o", markersize=3, gid=f"seed front:{method}:{s}")  # fmt: skip
        finite = np.isfinite(front.median)
        n = len(front.per_seed)
        ax.plot(front.x[finite], front.median[finite], drawstyle="steps-post", color=color,
                linewidth=2.2, marker="o", markersize=5,
                label=method if n == 1 else f"{method} (median of {n} seeds)",
                gid=f"front:{method}")  # fmt: skip
    if overall:
        front = pareto_front(rows, x=x, y=y)
        ax.plot([r[x] for r in front], [r[y] for r in front], drawstyle="steps-post", color="k",
                linestyle="--", linewidth=1.0, label="all rows", gid="front:all")  # fmt: skip
    if log_x:
        ax.set_xscale("log")
    xl, yl = x.replace("_", " "), y.replace("_", " ")
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(f"{yl} against {xl}" + (": median front (thin: each seed)" if several else ""))
    ax.legend(loc="best")
    return ax
