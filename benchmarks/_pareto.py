"""Pareto fronts of test error against kept parameters, shared by the front benchmarks.

A method's front for one seed is ``front(n) = min test error over its configurations and over
n' <= n kept``; the mean front averages the per-seed fronts.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import Tensor


def thresholds(scores: Tensor, counts: Sequence[int]) -> list[float]:
    """One threshold per count: keep the ``n`` highest scores (``score > threshold``)."""
    ordered = scores.sort(descending=True).values
    return [float((ordered[n - 1] + ordered[n]) / 2) if n < len(ordered) else 0.0 for n in counts]


def fronts(
    points: list[dict], count: str, counts: Sequence[int], n_params: int
) -> tuple[dict[str, dict[int, float]], pd.DataFrame]:
    """Mean over seeds of each seed's front over ``count`` (``"n_kept"`` or ``"n_effective"``),
    read at ``counts``, and the per-seed fronts (columns: method, seed, n, test_error)."""
    mean: dict[str, dict[int, float]] = {}
    per_seed = []
    frame = pd.DataFrame(points)
    for method, group in frame.groupby("method"):
        columns = []
        for seed, runs in group.groupby("seed"):
            best = runs.groupby(count)["test_error"].min()
            front = best.reindex(range(n_params + 1)).cummin().ffill().reindex(counts)
            columns.append(front)
            per_seed += [
                {"method": method, "seed": seed, "n": n, "test_error": e} for n, e in front.items()
            ]
        mean[method] = pd.concat(columns, axis=1).mean(axis=1, skipna=False).to_dict()
    return mean, pd.DataFrame(per_seed)
