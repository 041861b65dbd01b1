"""Pareto fronts of test error against kept parameters, shared by the front benchmarks.

A method's front for one seed is ``front(n) = min test error over its configurations and over
n' <= n kept``; the mean front averages the per-seed fronts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def point(method: str, config: str, seed: int, masks: dict[str, Tensor], n_effective: int,
          error: float, threshold: float) -> dict:  # fmt: skip
    """A ``kind="point"`` row: one pruned network's kept counts and test error."""
    return {
        "kind": "point",
        "method": method,
        "config": config,
        "seed": seed,
        "n_kept": int(sum(m.sum() for m in masks.values())),
        "n_effective": n_effective,
        "test_error": error,
        "threshold": threshold,
    }


def train_l1(net: nn.Module, x: Tensor, y: Tensor, lam: float, steps: int) -> nn.Module:
    """Full-batch Adam (lr 0.01) on ``mean NLL + lam * sum |theta|`` over all parameters."""
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        penalty = sum(p.abs().sum() for p in net.parameters())
        (F.cross_entropy(net(x), y) + lam * penalty).backward()
        opt.step()
    return net


def plot_fronts(
    mean: dict[str, dict[int, float]],
    per_seed: pd.DataFrame,
    path: Path,
    *,
    hlines: Sequence[float] = (),
    vlines: Sequence[float] = (),
    **axes: object,
) -> None:
    """Save the mean fronts (thick) and each seed's (thin) over kept parameters, log scale, with
    dotted goal lines; ``axes`` go to ``ax.set``."""
    frame = pd.DataFrame(
        [{"method": m, "n": n, "test_error": e} for m, f in mean.items() for n, e in f.items()]
    ).dropna()
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.lineplot(data=per_seed.dropna(), x="n", y="test_error", hue="method", units="seed",
                 estimator=None, drawstyle="steps-post", alpha=0.2, linewidth=0.8, ax=ax,
                 legend=False)  # fmt: skip
    sns.lineplot(data=frame, x="n", y="test_error", hue="method", drawstyle="steps-post",
                 linewidth=2.2, ax=ax)  # fmt: skip
    for y in hlines:
        ax.axhline(y, color="grey", linestyle=":", linewidth=1)
    for x in vlines:
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
    ax.set(xscale="log", **axes)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
