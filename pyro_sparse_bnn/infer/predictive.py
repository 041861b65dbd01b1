"""Per-draw predictions of a Pyro model: what ``FitResult`` computes its predictive from.

>>> import torch
>>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
>>> bnn = SparseBNN(mlp([2, 3]), priors.Normal(), likelihoods.Categorical())
>>> _ = bnn.net[0].bias.detach().zero_()
>>> draws = {"0.weight": torch.zeros(5, 3, 2)}  # five draws of an all-zero weight
>>> out = DrawPredictive(bnn).summaries(torch.ones(4, 2), torch.tensor([0, 1, 2, 0]), draws)
>>> tuple(out["probs"].shape), round(float(out["log_lik"].exp().mean()), 4)  # uniform: 1/3
((5, 4, 3), 0.3333)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ..sites import unwrap

__all__ = ["DrawPredictive"]

CHUNK = 50
"""Posterior draws per vectorised pass through the model."""
ROW_DRAWS = 20_000
"""Rows times draws per pass: larger inputs go through in row chunks, so memory stays bounded
(a recurrent net keeps every time step of every row and draw of a pass)."""


def _observed_node(trace: poutine.Trace, conditioned: dict) -> dict:
    """The one sample site the posterior draws do not cover: the observations."""
    nodes = [
        n
        for name, n in trace.nodes.items()
        if n["type"] == "sample" and not site_is_subsample(n) and name not in conditioned
    ]
    if len(nodes) != 1:
        names = [n["name"] for n in nodes]
        raise ValueError(f"the model must have exactly one observed site, found {names}")
    return nodes[0]


def _chunks(
    draws: dict[str, Tensor], size: int, *, squeeze: bool = False
) -> Iterator[dict[str, Tensor]]:
    total = next(iter(draws.values())).shape[0]
    for i in range(0, total, size):
        yield {k: v[i] if squeeze else v[i : i + size] for k, v in draws.items()}


def _summarise(fn: Any, node: dict, y: Tensor | None, sample: bool) -> dict[str, Tensor]:
    base = unwrap(fn)
    if isinstance(base, dist.Categorical):
        out = {"probs": base.probs}
    elif isinstance(base, dist.Bernoulli):
        out = {"probs": torch.stack([1 - base.probs, base.probs], dim=-1)}
    else:
        out = {"mean": fn.mean, "variance": fn.variance}
    if y is not None:
        out["log_lik"] = fn.log_prob(y.to(node["value"].dtype))
    if sample:
        out["sample"] = fn.sample()
    return out


class DrawPredictive:
    """The observation distribution of ``model`` under each posterior draw, batched.

    Draws run through the model in vectorised chunks under a ``pyro.plate`` (as Pyro's
    ``Predictive(parallel=True)`` does); a model that does not vectorise runs draw by draw.
    """

    def __init__(self, model: Callable) -> None:
        self.model = model
        self._vectorisable: bool | None = None

    def summaries(
        self, x: Tensor, y: Tensor | None, draws: dict[str, Tensor], *, sample: bool = False
    ) -> dict[str, Tensor]:
        """Per draw and row: class ``probs`` or ``mean``/``variance`` of the observation model,
        ``log_lik`` of ``y`` and, with ``sample``, a posterior predictive ``sample``. Rows go
        through in chunks of at most :data:`ROW_DRAWS` rows times draws (each row's prediction
        depends on that row alone)."""
        with torch.no_grad():
            vectorised = self._vectorises(x, draws)
            size = CHUNK if vectorised else 1
            step = max(1, ROW_DRAWS // size)
            parts = []
            for chunk in _chunks(draws, size):
                rows = [
                    self._pass(x[i : i + step], None if y is None else y[i : i + step], chunk,
                               vectorised, sample)
                    for i in range(0, x.shape[0], step)
                ]  # fmt: skip
                parts.append({k: torch.cat([r[k] for r in rows], 1) for k in rows[0]})
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _pass(self, x: Tensor, y: Tensor | None, draws: dict[str, Tensor], vectorised: bool,
              sample: bool) -> dict[str, Tensor]:  # fmt: skip
        """Summaries ``(draws, rows, ...)`` of one chunk of draws on one chunk of rows."""
        if vectorised:
            return _summarise(*self._vectorised(x, draws), y, sample)
        single = {k: v[0] for k, v in draws.items()}
        return {
            k: v.unsqueeze(0) for k, v in _summarise(*self._single(x, single), y, sample).items()
        }

    def _vectorises(self, x: Tensor, draws: dict[str, Tensor]) -> bool:
        """Whether the model gives the right answer on a batch of draws, decided once: a
        vectorised pass over two draws must match two draw-by-draw runs (a model may broadcast
        into a wrong shape without raising)."""
        if self._vectorisable is None:
            probe = {k: v[:2] for k, v in draws.items()}
            try:
                batched = _summarise(*self._vectorised(x[:4], probe), None, False)
            except (RuntimeError, ValueError):
                self._vectorisable = False
                return False
            single = [
                _summarise(*self._single(x[:4], d), None, False)
                for d in _chunks(probe, 1, squeeze=True)
            ]
            self._vectorisable = all(
                batched[k].shape == (len(single), *single[0][k].shape)
                and all(
                    torch.allclose(batched[k][i], s[k], rtol=1e-4, atol=1e-6)
                    for i, s in enumerate(single)
                )
                for k in batched
            )
        return self._vectorisable

    def _single(self, x: Tensor, draw: dict[str, Tensor]) -> tuple[Any, dict]:
        trace = poutine.trace(poutine.condition(self.model, draw)).get_trace(x, None)
        node = _observed_node(trace, draw)
        return node["fn"], node

    def _vectorised(self, x: Tensor, draws: dict[str, Tensor]) -> tuple[Any, dict]:
        first = {k: v[0] for k, v in draws.items()}
        trace = poutine.trace(poutine.condition(self.model, first)).get_trace(x, None)
        nesting = max(
            (-f.dim for n in trace.nodes.values() for f in n.get("cond_indep_stack", ())),
            default=0,
        )
        batch_dims = {k: len(trace.nodes[k]["fn"].batch_shape) for k in draws}
        num = next(iter(draws.values())).shape[0]
        shaped = {
            k: v.reshape(num, *(1,) * (nesting - batch_dims[k]), *v.shape[1:])
            for k, v in draws.items()
        }
        with pyro.plate("_draws", num, dim=-nesting - 1):
            trace = poutine.trace(poutine.condition(self.model, shaped)).get_trace(x, None)
        node = _observed_node(trace, shaped)
        return node["fn"], node
