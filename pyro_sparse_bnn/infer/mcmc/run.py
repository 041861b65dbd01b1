"""The NUTS/HMC run: warm-up adaptation (Stan's windows), the kept draws, Ctrl-C, checkpoints
and exact resume, for a batch of chains stepped by :class:`~.sampler.Sampler`.

>>> import torch
>>> def gaussian(theta):  # U(theta) = |theta|^2 / 2 for each chain
...     return 0.5 * (theta**2).sum(-1), theta
>>> saved = []
>>> out = sample(gaussian, torch.zeros(2, 3), num_warmup=50, num_samples=50, seeds=[0, 1],
...              checkpoint=saved.append, checkpoint_every=60)
>>> again = sample(gaussian, torch.zeros(2, 3), num_warmup=50, num_samples=50, seeds=[0, 1],
...                resume=saved[0])
>>> saved[0]["t"], bool(torch.equal(out.theta, again.theta))
(60, True)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ...isolation import loop_threads
from ...progress import progress_bar
from .adaptation import DualAveraging, Welford, adaptation_windows
from .sampler import Draws, PotentialGrad, Sampler

__all__ = ["COMPILE_AFTER", "COMPILE_FROM_LEAVES", "sample"]

COMPILE_AFTER = 10
"""With ``compile=None``, the run decides after this many iterations whether to compile."""

COMPILE_FROM_LEAVES = 10_000
"""With ``compile=None``, the leaf step is compiled when the rest of the run is projected to
take at least this many leapfrog steps per chain (docs/mcmc.md, "When NUTS compiles")."""


@dataclass
class _Chains:
    """Everything a run carries from one iteration to the next (what a checkpoint saves)."""

    t: int
    z: Tensor
    step: Tensor
    inverse_mass: Tensor
    averaging: DualAveraging
    welford: Welford
    window: int
    warmup_divergences: Tensor
    warmup_steps: Tensor
    records: dict[str, list[Tensor]] = field(default_factory=dict)

    def state_dict(self, sampler: Sampler) -> dict[str, Any]:
        return {
            "t": self.t,
            "z": self.z,
            "step": self.step,
            "inverse_mass": self.inverse_mass,
            "averaging": self.averaging.state_dict(),
            "welford": self.welford.state_dict(),
            "window": self.window,
            "warmup_divergences": self.warmup_divergences,
            "warmup_steps": self.warmup_steps,
            "records": {k: torch.stack(v, dim=1) for k, v in self.records.items()},
            "generators": [g.get_state() for g in sampler.generators],
            "search_generators": [g.get_state() for g in sampler.search_generators],
            "compiled": sampler.compiled,
        }

    def load_state_dict(
        self, state: dict[str, Any], sampler: Sampler, compile: bool | None
    ) -> None:
        for name in ("t", "z", "step", "inverse_mass", "window"):
            setattr(self, name, state[name])
        self.warmup_divergences = state["warmup_divergences"]
        self.warmup_steps = state["warmup_steps"]
        self.averaging.load_state_dict(state["averaging"])
        self.welford.load_state_dict(state["welford"])
        self.records = {k: list(v.unbind(1)) for k, v in state["records"].items()}
        for generator, saved in zip(sampler.generators, state["generators"], strict=True):
            generator.set_state(saved)
        for generator, saved in zip(
            sampler.search_generators, state["search_generators"], strict=True
        ):
            generator.set_state(saved)
        if compile is None and state.get("compiled", False) and not sampler.compiled:
            sampler.use_compiled()  # the interrupted run had switched: so does its continuation


def sample(
    potential_and_grad: PotentialGrad,
    init: Tensor,
    *,
    num_warmup: int,
    num_samples: int,
    seeds: Sequence[int],
    kernel: str = "nuts",
    step_size: float = 1.0,
    adapt_step_size: bool = True,
    adapt_mass_matrix: bool = True,
    dense_mass: bool = False,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    trajectory_length: float = 2 * math.pi,
    num_steps: int | None = None,
    compile: bool | None = False,
    progress: bool = False,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_every: int = 100,
    resume: dict[str, Any] | None = None,
    num_threads: int | None = None,
) -> Draws:
    """Run ``C = init.shape[0]`` chains of NUTS (or HMC) from ``init`` of shape ``(C, D)``.

    Returns :class:`Draws` with ``theta`` ``(C, num_samples, D)`` and per-draw ``stats``
    (``diverging``, ``tree_depth``, ``n_steps``, ``acceptance_rate``, ``energy``, ``lp``,
    ``step_size``) shaped ``(C, num_samples)``. ``KeyboardInterrupt`` ends the run early and keeps
    the draws made so far (``interrupted=True``); during warm-up it propagates. Every
    ``checkpoint_every`` iterations ``checkpoint(state)`` receives the run's state (tensors and
    plain values: positions, adaptation, draws so far, generator states); ``resume=state``
    continues from it to exactly the draws of an uninterrupted run. The chains run with
    :func:`~pyro_sparse_bnn.isolation.loop_threads` threads for ``init.numel()`` values
    (``num_threads`` overrides; the caller's count is restored afterwards). ``compile=True``
    runs the leaf steps compiled by Inductor (:mod:`.compiled`); ``None`` decides after
    :data:`COMPILE_AFTER` iterations from the leapfrog steps they took (:func:`_pays_to_compile`),
    from counts only, so a seed repeats its draws; a compilation that fails warns and the run
    goes on uncompiled.
    """
    options = {k: v for k, v in locals().items() if k not in ("potential_and_grad", "init")}
    with loop_threads(init.numel(), options.pop("num_threads")):
        return _sample(potential_and_grad, init, **options)


def _sample(
    potential_and_grad: PotentialGrad,
    init: Tensor,
    *,
    num_warmup: int,
    num_samples: int,
    seeds: Sequence[int],
    kernel: str,
    step_size: float,
    adapt_step_size: bool,
    adapt_mass_matrix: bool,
    dense_mass: bool,
    target_accept: float,
    max_tree_depth: int,
    trajectory_length: float,
    num_steps: int | None,
    compile: bool | None,
    progress: bool,
    checkpoint: Callable[[dict[str, Any]], None] | None,
    checkpoint_every: int,
    resume: dict[str, Any] | None,
) -> Draws:
    num_chains, dim = init.shape
    pe, grad = potential_and_grad(init)
    # the chains move in the potential's precision (float64 data lifts float32 starting values)
    init = init.to(torch.promote_types(init.dtype, grad.dtype))
    sampler = Sampler(
        potential_and_grad,
        num_chains=num_chains,
        dim=dim,
        seeds=seeds,
        like=init,
        kernel=kernel,
        max_tree_depth=max_tree_depth,
        trajectory_length=trajectory_length,
        num_steps=num_steps,
        compile=bool(compile),
    )
    if not bool(torch.isfinite(pe).all()):
        bad = torch.nonzero(~torch.isfinite(pe)).flatten().tolist()
        raise ValueError(f"the log density is not finite at the initial values of chains {bad}")
    inverse_mass = (
        torch.eye(dim, dtype=init.dtype, device=init.device).expand(num_chains, dim, dim).clone()
        if dense_mass
        else torch.ones_like(init)
    )
    step = torch.full_like(pe, float(step_size))
    if adapt_step_size and resume is None:
        step = sampler.reasonable_step_size(init, grad, pe, step, inverse_mass)
    zeros = torch.zeros_like(pe, dtype=torch.long)
    s = _Chains(
        0, init.clone(), step, inverse_mass, DualAveraging(step),
        Welford(num_chains, dim, dense_mass, init), 0, zeros, zeros.clone(),
    )  # fmt: skip
    if resume is not None:
        s.load_state_dict(resume, sampler, compile)
        pe, grad = potential_and_grad(s.z)
    windows = adaptation_windows(num_warmup)
    bars = [
        progress_bar(
            total=num_warmup + num_samples, desc=f"chain {c}", position=c, disable=not progress
        )
        for c in range(num_chains)
    ]
    for bar in bars:
        bar.update(s.t)
    interrupted = False
    cpu_seconds = {"warmup": 0.0, "sampling": 0.0}  # this call's, per phase
    try:
        for t in range(s.t, num_warmup + num_samples):
            warm = t < num_warmup
            tic = time.process_time()
            used_step = s.step
            s.z, grad, pe, stats = sampler.transition(s.z, grad, pe, s.step, s.inverse_mass)
            if warm:
                _adapt(s, sampler, t, windows, stats, grad, pe, adapt_step_size,
                       adapt_mass_matrix, target_accept)  # fmt: skip
            else:
                stats |= {"lp": -pe, "step_size": used_step}
                for k, v in stats.items():
                    s.records.setdefault(k, []).append(v.detach().clone())
                s.records.setdefault("theta", []).append(s.z.clone())
            s.t = t + 1
            total = num_warmup + num_samples
            if compile is None and s.t == min(COMPILE_AFTER, total) and _pays_to_compile(s, total):
                sampler.compile_now(s.z, grad, pe, s.step, s.inverse_mass)
            cpu_seconds["warmup" if warm else "sampling"] += time.process_time() - tic
            if checkpoint is not None and s.t % checkpoint_every == 0:
                checkpoint(s.state_dict(sampler))
            for c, bar in enumerate(bars if progress else ()):
                bar.set_postfix(
                    phase="warmup" if warm else "sample",
                    step=f"{float(used_step[c]):.3g}",
                    steps=int(stats["n_steps"][c]),
                    refresh=False,
                )
                bar.update()
    except KeyboardInterrupt:
        if "theta" not in s.records:
            raise
        interrupted = True
        warnings.warn(
            f"interrupted: keeping the {len(s.records['theta'])} draws per chain made so far",
            stacklevel=3,  # the caller of sample()
        )
    finally:
        for bar in bars:
            bar.close()
    records = dict(s.records)
    if "theta" not in records:
        theta = init.new_zeros(num_chains, 0, dim)
        stats_out: dict[str, Tensor] = {}
    else:
        theta = torch.stack(records.pop("theta"), dim=1)
        stats_out = {k: torch.stack(v, dim=1) for k, v in records.items()}
    return Draws(
        theta=theta,
        stats=stats_out,
        step_size=s.step,
        inverse_mass=s.inverse_mass,
        warmup_divergences=s.warmup_divergences,
        interrupted=interrupted,
        info={
            "compiled": sampler.compiled,
            "warmup_steps": s.warmup_steps,
            "warmup_cpu_seconds": cpu_seconds["warmup"],
            "sampling_cpu_seconds": cpu_seconds["sampling"],
        },
    )


def _pays_to_compile(s: _Chains, total: int) -> bool:
    """Whether the remaining ``total - s.t`` iterations, at the leapfrog steps per iteration of
    the busiest chain so far, reach :data:`COMPILE_FROM_LEAVES`."""
    steps = s.warmup_steps + sum(s.records.get("n_steps", []), torch.zeros_like(s.warmup_steps))
    return float(steps.max()) / s.t * (total - s.t) >= COMPILE_FROM_LEAVES


def _adapt(
    s: _Chains,
    sampler: Sampler,
    t: int,
    windows: list[tuple[int, int]],
    stats: dict[str, Tensor],
    grad: Tensor,
    pe: Tensor,
    adapt_step_size: bool,
    adapt_mass_matrix: bool,
    target_accept: float,
) -> None:
    """Stan's warm-up after iteration ``t``: step-size averaging and windowed mass matrices."""
    s.warmup_divergences += stats["diverging"].long()
    s.warmup_steps += stats["n_steps"]
    dtype = s.z.dtype
    if adapt_step_size:
        s.step = s.averaging.step(stats["acceptance_rate"], target_accept).to(dtype)
    end = windows[s.window][1]
    last = s.window == len(windows) - 1
    mass_phase = adapt_mass_matrix and 0 < s.window < len(windows) - 1
    if mass_phase:
        s.welford.update(s.z)
    if t == end:
        if last:
            if adapt_step_size:
                s.step = s.averaging.final().to(dtype)
        elif mass_phase and s.welford.n > 1:
            s.inverse_mass = s.welford.covariance()
            s.welford = Welford(*s.z.shape, s.welford.dense, s.z)
            if adapt_step_size:
                s.step = sampler.reasonable_step_size(s.z, grad, pe, s.step, s.inverse_mass)
                s.averaging.reset(s.step)
        s.window += 1
