"""One SG-MCMC run of ``fit_sgmcmc``: the chains' state, the SSGL updates, pruning and the
kept draws.

>>> plan = Plan(warmup=100, num_samples=50, thin=2)
>>> plan.warmup + plan.num_samples * plan.thin  # iterations run
200
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ...progress import progress_bar
from ...sparsity import budget_masks, relevance
from ..result import FitResult
from .kernels import LangevinIntegrator, SparseRateSchedule
from .model import (
    LATE_STATES,
    _Density,
    _Eval,
    _Gradient,
    _Layout,
    _param_leaves,
    _point_parameters,
)
from .options import InclusionPruning, MagnitudePruning, SSGLPrior
from .ssgl import SSGL, inclusion_mask, magnitude_mask


class Chains(NamedTuple):
    """The chains of one run: how many, rows per gradient, the seed of their starting noise,
    minibatches and Langevin noise, and the Adam rate of the model's point parameters."""

    num_chains: int
    batch_size: int
    seed: int
    param_lr: float


class Plan(NamedTuple):
    """``warmup + num_samples * thin`` iterations; every ``thin``-th after warm-up is kept."""

    warmup: int
    num_samples: int
    thin: int


class _Run:
    """State of one ``fit_sgmcmc`` call: chains, SSGL state, point parameters, pruning masks."""

    def __init__(
        self,
        model: Callable,
        layout: _Layout,
        x: Tensor,
        y: Tensor,
        integrator: LangevinIntegrator,
        chains: Chains,
        ssgl: SSGLPrior | None,
    ) -> None:
        num_chains, self.batch_size, seed, param_lr = chains
        self.model, self.layout, self.x, self.y = model, layout, x, y
        self.integrator, self.num_chains = integrator, num_chains
        self.density = _Density(model, layout, num_chains, x.shape[0])
        self.gradient = _Gradient(self.density)
        self.generator = torch.Generator(device=x.device).manual_seed(seed)
        self.start = []
        for k in layout.sampled:
            transform, value = layout.transforms[k], layout.init[k]
            value = value if transform is None else transform.inv(value)
            self.start.append(value.expand(num_chains, *value.shape).clone())
        self.weight_index = [layout.sampled.index(k) for k in layout.weights if k in layout.sampled]
        self.ssgl = None
        self.noise = None
        self.omega = None if ssgl is None else ssgl.weights()
        if ssgl is not None:
            sizes = [self.start[i][0].numel() for i in self.weight_index]
            groups = sizes if len(sizes) > 1 else None
            self.ssgl = SSGL(self._flat(self.start), groups=groups, **ssgl.hyperparameters())
            self.noise = self.ssgl.sigma if layout.noise is not None else None
        self.params = _point_parameters(model, _param_leaves(model, x[:1], y[:1], layout.init))
        self.optimizer = torch.optim.Adam(self.params, lr=param_lr) if self.params else None
        self.trace_error: str | None = None
        self.masks: dict[str, Tensor] | None = None
        self.late_states: dict[str, list[Tensor]] = {}

    def _flat(self, unconstrained: list[Tensor]) -> Tensor:
        parts = [unconstrained[i].reshape(self.num_chains, -1) for i in self.weight_index]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _split(self, flat: Tensor) -> list[Tensor]:
        shapes = [self.start[i].shape for i in self.weight_index]
        sizes = [math.prod(s[1:]) for s in shapes]
        return [p.reshape(s) for p, s in zip(flat.split(sizes, dim=1), shapes, strict=True)]

    def batch(self) -> tuple[Tensor, Tensor]:
        n = self.x.shape[0]
        if self.batch_size == n:
            return self.x, self.y
        index = torch.randperm(n, generator=self.generator, device=self.x.device)
        index = index[: self.batch_size]
        return self.x[index], self.y[index]

    def setup(self, *, trace: bool) -> None:
        """Choose vectorised or per-chain runs and trace the gradient (when nothing is learned)."""
        probe = torch.Generator(device=self.x.device).manual_seed(12345)
        moved = [
            u + 0.1 * torch.randn(u.shape, generator=probe, dtype=u.dtype, device=u.device)
            for u in self.start
        ]
        noise = (
            None if self.noise is None else self.noise * torch.linspace(0.8, 1.2, self.num_chains)
        )
        b = self.batch_size
        other = torch.randperm(self.x.shape[0], generator=probe, device=self.x.device)[:b]
        batches = [(self.x[:b], self.y[:b]), (self.x[other], self.y[other])]
        self.gradient.choose_vectorised(moved, noise, *batches[0])
        self.trace_requested = trace
        if trace and not self.params:
            self._trace(moved, noise, batches)

    def _trace(self, moved: list[Tensor], noise: Tensor | None, batches: list) -> None:
        self.trace_error = self.gradient.trace(moved, noise, batches)
        if self.trace_error is not None:
            warnings.warn(
                f"fit_sgmcmc: running eagerly, the gradient could not be traced "
                f"({self.trace_error})",
                stacklevel=4,
            )

    def _freeze_parameters(self) -> None:
        for p in self.params:
            p.requires_grad_(False)
        if self.trace_requested:
            b = self.batch_size
            batches = [(self.x[:b], self.y[:b]), (self.x[-b:], self.y[-b:])]
            self._trace(self._state.params, self.noise, batches)

    def _evaluate(self, learn: bool) -> _Eval:
        """Gradients etc. at the current state; with ``learn``, also one Adam step on ``params``."""
        x, y = self.batch()
        if not learn:
            return self.gradient(self._state.params, self.noise, x, y)
        evaluation, param_grads = self.gradient.eager(
            self._state.params, self.noise, x, y, self.params
        )
        scale = -1.0 / (self.num_chains * self.x.shape[0])
        for p, g in zip(self.params, param_grads, strict=True):
            p.grad = scale * g
        self.optimizer.step()
        return evaluation

    def _prune(self, k: int, warmup: int, pruning: Any, schedule: Any):
        """Refresh the keep-masks when due and zero the pruned weights (and their momentum)."""
        names = [name for name in self.layout.weights if name in self.layout.sampled]
        if isinstance(pruning, MagnitudePruning) and k % pruning.every == 0:
            rate = schedule(k)
            self.masks = {
                name: magnitude_mask(
                    self._state.params[i].reshape(self.num_chains, -1), rate
                ).reshape(self._state.params[i].shape)
                for name, i in zip(names, self.weight_index, strict=True)
            }
        elif isinstance(pruning, InclusionPruning) and k == warmup:
            self.masks = self._inclusion_masks(names, pruning.threshold)
        if self.masks is None:
            return
        params = list(self._state.params)
        momentum = None if self._state.momentum is None else list(self._state.momentum)
        for mask, i in zip(self.masks.values(), self.weight_index, strict=True):
            params[i] = params[i] * mask
            if momentum is not None:
                momentum[i] = momentum[i] * mask
        self._state = replace(self._state, params=params, momentum=momentum)

    def _record_late_state(self) -> None:
        for name, value in self.density.values(self._state.params, self.noise).items():
            self.late_states.setdefault(name, []).append(value.detach())

    def _inclusion_masks(self, names: list[str], threshold: float) -> dict[str, Tensor]:
        """Keep-masks ``(chain, ...)`` at the end of warm-up.

        A weight that any chain includes (``rho > threshold``) stays in every chain. A weight in
        the spike is not yet negligible when its inclusion is undecided: SSGL's mixing weight
        can have collapsed by the end of warm-up, leaving even clear signals in the spike, and
        in the classification form ``sigma`` grows with the weights themselves. The spike
        weights are ranked by ``|mean| / sd`` over the late warm-up states of all chains. In the
        regression form those above 1 stay (the chains still use them). In the classification
        form the fewest stay whose PSIS-LOO predictive over those states holds within the
        default budget of :func:`~pyro_sparse_bnn.sparsity.budget_masks` (in the regression
        form that check would keep nearly everything when ``p > n``: zeroing a weight that the
        others were fitted around is not the refit the chains do after pruning).
        """
        rho = dict(zip(names, self._split(self.ssgl.rho), strict=True))
        included = {n: inclusion_mask(rho[n], threshold).any(0) for n in names}
        states = {n: torch.stack(v, dim=1) for n, v in self.late_states.items()}
        self.late_states = {}
        scores = {n: torch.where(included[n], torch.inf, relevance(states[n])) for n in names}
        if self.layout.noise is not None:
            kept = {n: scores[n] > 1.0 for n in names}
        else:
            for name in self.layout.fixed:
                shape = self.layout.shapes[name]
                states[name] = self.layout.init[name].expand(*states[names[0]].shape[:2], *shape)
            late = FitResult(self.model, states, method="warmup", x=self.x, y=self.y)
            kept = budget_masks(
                scores, lambda keep: late._losses(self.x, self.y, keep or {}, loo=True)
            )
        return {n: (kept[n] | included[n]).expand_as(rho[n]) for n in names}

    @property
    def work(self) -> int:
        """Values the chains update per step (the size that picks the loop's thread count)."""
        return sum(u.numel() for u in self.start) + sum(p.numel() for p in self.params)

    def loop(
        self,
        plan: Plan,
        pruning: MagnitudePruning | InclusionPruning | None,
        progress: bool,
        callback: Callable[[int, float], bool | None] | None,
        method: str,
        checkpoint: Callable[[dict[str, Any]], None] | None,
        checkpoint_every: int,
        resume: dict[str, Any] | None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
        """Run the chains; return the kept draws, sample stats and the iterations run.

        A kept state's log density and deterministic sites come from the next evaluation, which
        happens at exactly that state (one extra evaluation after the last iteration). Every
        ``checkpoint_every`` iterations ``checkpoint`` gets :meth:`state_dict`; ``resume`` takes
        one and continues to exactly the draws of an uninterrupted run.
        """
        layout, n = self.layout, self.x.shape[0]
        warmup, num_samples, thin = plan
        schedule = None
        if isinstance(pruning, MagnitudePruning):
            period = pruning.period_for(warmup)
            schedule = SparseRateSchedule(pruning.sparsity, pruning.damping, period)
        self._state = self.integrator.init(self.start)
        self._kept: dict[str, list[Tensor]] = {}
        self._stats: dict[str, list[Tensor]] = {}
        self._pending: dict[str, Tensor] | None = None
        first = 1
        if resume is not None:
            first = self.load_state_dict(resume) + 1
            if self.params and first > warmup + 1:
                self._freeze_parameters()
        kept, stats = self._kept, self._stats
        late_every = max(1, warmup // (4 * LATE_STATES))  # states from the last quarter
        total_iterations = warmup + num_samples * thin
        bar = progress_bar(total=total_iterations, disable=not progress, desc=method, leave=False)
        k = first - 1
        for k in range(first, total_iterations + 1):
            if self.params and k == warmup + 1:
                self._freeze_parameters()
            evaluation = self._evaluate(learn=bool(self.params) and k <= warmup)
            if self._pending is not None:
                self._store(kept, stats, self._pending, evaluation)
                self._pending = None
            grads = evaluation.grads
            if self.ssgl is not None:
                prior_grads = self._split(self.ssgl.grad_log_prior(self._flat(self._state.params)))
                for i, g in zip(self.weight_index, prior_grads, strict=True):
                    grads[i] = grads[i] + g
            self._state = self.integrator.step(self._state, grads, self.generator)
            if pruning is not None:
                self._prune(k, warmup, pruning, schedule)
            if self.ssgl is not None:
                regression = layout.noise is not None
                active = None
                if self.masks is not None:
                    parts = [m.reshape(self.num_chains, -1) for m in self.masks.values()]
                    active = torch.cat(parts, dim=1)
                self.ssgl.update(
                    self._flat(self._state.params),
                    self.omega(k),
                    rss=evaluation.rss if regression else None,
                    num_data=n if regression else None,
                    active=active,
                )
                if regression:
                    self.noise = self.ssgl.sigma
            late = 0 < warmup - k <= LATE_STATES * late_every and (warmup - k) % late_every == 0
            if isinstance(pruning, InclusionPruning) and late:
                self._record_late_state()
            if k > warmup and (k - warmup) % thin == 0:
                self._pending = self._snapshot(k)
            if checkpoint is not None and k % checkpoint_every == 0:
                checkpoint(self.state_dict(k))
            if callback is not None and callback(k, float(evaluation.lp.mean())):
                break
            if k % 100 == 0:
                bar.update(k - bar.n)
        bar.update(k - bar.n)
        bar.close()
        if self._pending is not None:
            self._store(kept, stats, self._pending, self._evaluate(learn=False))
        if not kept:
            raise RuntimeError("the callback stopped sampling before the first kept draw")
        draws = {name: torch.stack(v, dim=1) for name, v in kept.items()}
        num_kept = next(iter(draws.values())).shape[1]
        for name in layout.fixed:
            draws[name] = layout.init[name].expand(self.num_chains, num_kept, *layout.shapes[name])
        return draws, {name: torch.stack(v, dim=1) for name, v in stats.items()}, k

    def state_dict(self, k: int) -> dict[str, Any]:
        """The run after iteration ``k``: chains, SSGL state, point parameters and their
        optimiser, masks, the generator and the draws so far (tensors and plain values)."""
        state = self._state
        ssgl = None if self.ssgl is None else {
            name: value for name, value in vars(self.ssgl).items() if isinstance(value, Tensor)
        }  # fmt: skip
        return {
            "k": k,
            "chains": [state.params, state.momentum, state.sq_grad_avg, state.iteration],
            "ssgl": ssgl,
            "noise": self.noise,
            "point": [p.detach().clone() for p in self.params],
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "masks": self.masks,
            "late_states": {k: torch.stack(v) for k, v in self.late_states.items()},
            "generator": self.generator.get_state(),
            "kept": {name: torch.stack(v) for name, v in self._kept.items()},
            "stats": {name: torch.stack(v) for name, v in self._stats.items()},
            "pending": self._pending,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> int:
        """Restore :meth:`state_dict`; return the iteration it was taken after."""
        params, momentum, sq_grad_avg, iteration = saved["chains"]
        self._state = replace(
            self._state,
            params=params,
            momentum=momentum,
            sq_grad_avg=sq_grad_avg,
            iteration=iteration,
        )
        for name, value in (saved["ssgl"] or {}).items():
            setattr(self.ssgl, name, value)
        self.noise = saved["noise"]
        with torch.no_grad():
            for p, value in zip(self.params, saved["point"], strict=True):
                p.copy_(value)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(saved["optimizer"])
        self.masks = saved["masks"]
        self.late_states = {k: list(v.unbind()) for k, v in saved["late_states"].items()}
        self.generator.set_state(saved["generator"])
        self._kept = {name: list(v.unbind()) for name, v in saved["kept"].items()}
        self._stats = {name: list(v.unbind()) for name, v in saved["stats"].items()}
        self._pending = saved["pending"]
        return saved["k"]

    def _snapshot(self, k: int) -> dict[str, Tensor]:
        """Values of the sampled (and driven) sites at the current state, plus SSGL stats."""
        values = self.density.values(self._state.params, self.noise)
        out = {name: values[name] for name in values if name not in self.layout.fixed}
        like = self.start[0]
        eps = self.integrator.step_size(k)
        out["_step_size"] = torch.full(
            (self.num_chains,), eps, dtype=like.dtype, device=like.device
        )
        if self.ssgl is not None:
            out |= {"_ssgl_sigma": self.ssgl.sigma, "_ssgl_delta": self.ssgl.delta}
        return out

    def _store(self, kept: dict, stats: dict, snapshot: dict, evaluation: _Eval) -> None:
        for name, value in {**snapshot, **evaluation.recorded}.items():
            if name.startswith("_"):
                stats.setdefault(name[1:], []).append(value)
            else:
                kept.setdefault(name, []).append(value.detach())
        stats.setdefault("lp", []).append(evaluation.lp)

    def ssgl_info(self, threshold: float) -> dict[str, Any]:
        if self.ssgl is None:
            return {}
        names = [k for k in self.layout.weights if k in self.layout.sampled]
        rho = dict(zip(names, self._split(self.ssgl.rho), strict=True))
        delta = self.ssgl.delta
        delta = (
            {names[0]: delta}
            if delta.dim() == 1
            else {name: delta[:, g] for g, name in enumerate(names)}
        )
        return {
            "delta": delta,
            "sigma": self.ssgl.sigma,
            "rho": rho,
            "inclusion": {name: r.mean(0) > threshold for name, r in rho.items()},
        }
