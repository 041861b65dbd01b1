"""Before and after pruning, from one posterior: predictive quality and what deployment costs.

:func:`compression_report` compares a fit's full posterior with its pruned one on held-out data:
the quality of the posterior predictive (:meth:`~pyro_sparse_bnn.FitResult.evaluate`, without and
with the masks) and of the deterministic networks a user deploys, the posterior-mean network and
the smaller one :meth:`~pyro_sparse_bnn.FitResult.prune` returns (``network_accuracy``,
``network_nll``, ``network_ece``, or ``network_rmse`` for regression); and the cost of those
networks: parameters (all, and non-zero), FLOPs per example (counted by
``torch.utils.flop_counter``: two per multiply-accumulate), CPU latency at batch 1 and 256
(median over interleaved rounds, one thread, no grad) and the size of the saved module.

>>> import torch, pyro_sparse_bnn as psb
>>> X, y = psb.datasets.load("iris")
>>> bnn = psb.SparseBNN(psb.mlp([4, 16, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
>>> result = psb.fit(bnn, X, y, epochs=30, progress=False, seed=0)
>>> masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in result.relevance().items()}
>>> masks["0.weight"][8:] = False  # hidden units 8-15 lose their inputs: pruned
>>> report = compression_report(result, X, y, masks=masks, rounds=3)
>>> report.before["parameters"], report.after["parameters"], report.ratios()["flops"]
(131, 67, 2.0)
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from . import metrics
from .io import atomic_path
from .isolation import loop_threads
from .validation import check_positive_int

__all__ = ["BATCHES", "CompressionReport", "compression_report"]

BATCHES = (1, 256)
"""Batch sizes whose latency the report measures."""
_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
_LATENCIES = tuple(f"latency_ms_batch_{b}" for b in BATCHES)
_COSTS = ("parameters", "nonzero_parameters", "flops", *_LATENCIES, "file_bytes")


@dataclass(frozen=True)
class CompressionReport:
    """Metrics of the full (``before``) and the pruned (``after``) posterior and network."""

    before: dict[str, float]
    after: dict[str, float]

    def ratios(self) -> dict[str, float]:
        """``before / after`` of every cost (above 1: the pruned network is cheaper)."""
        return {k: self.before[k] / self.after[k] for k in _COSTS if self.after[k] > 0}

    def table(self) -> str:
        """The report as a plain-text table, one row per metric."""
        rows = [("metric", "before", "after", "before / after")]
        ratios = self.ratios()
        for key in self.before:
            ratio = f"{ratios[key]:.2f}" if key in ratios else ""
            rows.append((key, f"{self.before[key]:.4g}", f"{self.after[key]:.4g}", ratio))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
        return "\n".join(line.rstrip() for line in lines)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the report (and its ratios) as JSON, atomically; returns the path."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self) | {"ratios": self.ratios()}, indent=2))
        return Path(path)

    def plot(self, ax: Any = None) -> Any:
        """A bar chart of every cost after pruning as a fraction of before (log scale), with the
        predictive metrics in the title; returns the matplotlib ``Axes``."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        keys = [k for k in _COSTS if self.before[k] > 0]
        ax.bar(keys, [self.after[k] / self.before[k] for k in keys], color="tab:blue")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("after / before")
        ax.tick_params(axis="x", labelrotation=30)
        quality = [k for k in self.before if k not in _COSTS]
        ax.set_title(", ".join(f"{k} {self.before[k]:.3g} -> {self.after[k]:.3g}" for k in quality),
                     fontsize=8)  # fmt: skip
        return ax


def _network_quality(likelihood: Any, net: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy, NLL and ECE of a deterministic classifier (RMSE of a regression network)."""
    with torch.no_grad():
        out = net(x)
    if not getattr(likelihood, "is_classifier", False):
        return {"network_rmse": metrics.rmse(out.reshape(y.shape), y)}
    probs = likelihood.distribution(out).probs
    if probs.dim() == 1:  # Bernoulli: the probability of class 1
        probs = torch.stack([1 - probs, probs], dim=-1)
    labels = y.long()
    nll = -probs.gather(-1, labels[:, None]).clamp_min(torch.finfo(probs.dtype).tiny).log()
    return {
        "network_accuracy": metrics.accuracy(probs, labels),
        "network_nll": float(nll.mean()),
        "network_ece": metrics.expected_calibration_error(probs, labels),
    }


def _parameters(net: nn.Module) -> int:
    """Weights and biases, held as parameters or (in a ``SparseBNN``) as buffers."""
    state = net.state_dict()
    return sum(v.numel() for k, v in state.items() if k.rpartition(".")[2] not in _STATISTICS)


def _nonzero(net: nn.Module) -> int:
    state = net.state_dict()
    return sum(
        int((v != 0).sum()) for k, v in state.items() if k.rpartition(".")[2] not in _STATISTICS
    )


def _attention_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of scaled dot-product attention from the query, key and value shapes."""
    return sdpa_flop_count(query, key, value)


def _flops(net: nn.Module, x: Tensor) -> int:
    """FLOPs of ``net`` on one row of ``x``. Attention's fused inference kernel has no FLOP
    formula, so it is switched off while counting (the same products, counted one by one), and
    the CPU attention kernel gets the formula torch registers for its GPU twins."""
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={cpu_attention: _attention_flops})
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            net(x[:1])
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(counter.get_total_flops())


def _file_bytes(net: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(net, buffer)
    return buffer.tell()


def _latencies(nets: list[nn.Module], x: Tensor, batch: int, rounds: int) -> list[float]:
    """Per net, the median forward time (ms) of ``batch`` rows, nets interleaved per round."""
    rows = x[torch.arange(batch, device=x.device) % x.shape[0]]
    times: list[list[float]] = [[] for _ in nets]
    with torch.no_grad():
        for net in nets:  # warm-up
            net(rows)
        for _ in range(rounds):
            for net, own in zip(nets, times, strict=True):
                start = time.perf_counter()
                net(rows)
                own.append(1e3 * (time.perf_counter() - start))
    return [statistics.median(t) for t in times]


def compression_report(
    result: Any,
    x: Tensor,
    y: Tensor,
    *,
    masks: Mapping[str, Tensor] | None = None,
    threshold: float | None = None,
    by: str = "snr",
    rounds: int = 30,
) -> CompressionReport:
    """Compare ``result``'s full and pruned posterior on held-out ``(x, y)``.

    Args:
        result: a :class:`~pyro_sparse_bnn.FitResult` of a ``SparseBNN`` (or of ``fit_l0``).
        x, y: held-out data; ``x`` also drives the FLOP count and the latency.
        masks: keep-masks to prune by; by default ``result.masks(threshold, by)``.
        threshold, by: passed to ``result.masks`` when ``masks`` is not given.
        rounds: timed forward passes per network and batch size.
    """
    rounds = check_positive_int(rounds, "rounds")
    x, y = result._check_data(x, y)
    masks = dict(result.masks(threshold, by) if masks is None else masks)
    keep_all = {k: torch.ones_like(v, dtype=torch.bool) for k, v in masks.items()}
    full = result.posterior.masked_network(result, keep_all).eval()
    small = result.posterior.prune(result, masks, x[:1], "keep").eval()
    before = dict(result.evaluate(x, y))
    after = dict(result.evaluate(x, y, masked=masks))
    for row, net in ((before, full), (after, small)):
        row |= _network_quality(result.model.likelihood, net, x, y)
        row["parameters"] = _parameters(net)
        row["nonzero_parameters"] = _nonzero(net)
        row["flops"] = _flops(net, x)
    with loop_threads(None, 1):
        for batch in BATCHES:
            t_full, t_small = _latencies([full, small], x, batch, rounds)
            before[f"latency_ms_batch_{batch}"] = t_full
            after[f"latency_ms_batch_{batch}"] = t_small
    before["file_bytes"], after["file_bytes"] = _file_bytes(full), _file_bytes(small)
    return CompressionReport(before, after)
