"""NUTS and HMC for a batch of chains that move in lockstep over one batched potential.

The algorithm is Pyro's (Hoffman & Gelman 2014 with Betancourt's 2017 multinomial sampling):

* trajectories double in a random direction until the generalised U-turn criterion
  ``p_sharp(left) . rho <= 0 or p_sharp(right) . rho <= 0`` (``rho`` the momentum sum less half the
  end points, Betancourt 2017, A.4.2) holds for the whole tree or for any aligned subtree, until a
  leaf's energy error exceeds 1000 (a divergence) or ``max_tree_depth`` doublings;
* inside a new subtree a leaf is drawn with probability proportional to ``exp(-H)``; the subtree's
  draw replaces the current one with probability ``min(1, w_subtree / w_old_tree)`` (biased
  progressive sampling); a subtree that turns or diverges inside is rejected;
* warm-up follows Stan: dual averaging of the step size towards ``target_accept`` (``t0 = 10``,
  ``kappa = 0.75``, ``gamma = 0.05``, prox-centre ``log(10 eps)``) and the inverse mass matrix
  (diagonal or dense) estimated in doubling windows after a 75-iteration buffer and before a
  50-iteration end buffer, regularised as ``n/(n+5) var + 1e-3 * 5/(n+5)``; a "reasonable" step
  size is searched at the start and after every mass-matrix update.

The trees are built iteratively, one leaf at a time, for all chains together: each chain keeps its
own step size, mass matrix, direction and stopping state, and a chain that has stopped is carried
along unchanged until every chain has stopped. The U-turn checks of the aligned subtrees that end at
leaf ``n`` use checkpoints (the momentum and momentum sum where each aligned block started), so one
leaf step is a fixed sequence of tensor operations that ``torch.compile`` can fuse with the
potential. Each chain draws its random numbers from its own seeded generator, indexed by position in
the tree, so a chain's path does not depend on which other chains share the batch.

>>> import torch
>>> def gaussian(theta):  # U(theta) = |theta|^2 / 2 for each chain
...     return 0.5 * (theta**2).sum(-1), theta
>>> from pyro_sparse_bnn.infer.mcmc import sample
>>> out = sample(gaussian, torch.zeros(2, 3), num_warmup=200, num_samples=300, seeds=[0, 1])
>>> tuple(out.theta.shape), bool(out.theta.std() > 0.8)
((2, 300, 3), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .tree import (
    _DIRECTION_THRESHOLD,
    MAX_ENERGY_ERROR,
    Subtree,
    _generator,
    _is_turning,
    _kinetic,
    _momentum_factor,
    _select,
    _velocity,
)

KERNELS = ("nuts", "hmc")


_MIN_STEP, _MAX_STEP = 1e-10, 1e10


PotentialGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass
class Draws:
    """What :func:`sample` returns: unconstrained draws, sampler statistics and adapted settings."""

    theta: Tensor
    stats: dict[str, Tensor]
    step_size: Tensor
    inverse_mass: Tensor
    warmup_divergences: Tensor
    interrupted: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Sampler:
    """Batched NUTS/HMC transitions over ``potential_and_grad(theta) -> (U, dU)`` for ``(C, D)``.

    Args:
        potential_and_grad: the batched potential energy and its gradient.
        num_chains, dim: the batch ``C`` and the dimension ``D``.
        kernel: ``"nuts"`` or ``"hmc"`` (fixed ``trajectory_length``, or ``num_steps`` leapfrogs).
        seeds: one seed per chain.
        compile: fuse a leapfrog step and the tree bookkeeping with ``torch.compile``.
    """

    def __init__(
        self,
        potential_and_grad: PotentialGrad,
        *,
        num_chains: int,
        dim: int,
        seeds: Sequence[int],
        like: Tensor,
        kernel: str = "nuts",
        max_tree_depth: int = 10,
        trajectory_length: float = 2 * math.pi,
        num_steps: int | None = None,
        compile: bool = False,
    ) -> None:
        self.potential_and_grad = potential_and_grad
        self.num_chains, self.dim = num_chains, dim
        self.kernel = kernel
        self.max_tree_depth = max_tree_depth
        self.trajectory_length = trajectory_length
        self.num_steps = num_steps
        self.like = like
        # two streams per chain: transitions, and the step-size searches (whose length varies)
        streams = [np.random.SeedSequence(int(s)).generate_state(2) for s in seeds]
        self.generators = [_generator(int(a), like.device) for a, _ in streams]
        self.search_generators = [_generator(int(b), like.device) for _, b in streams]
        self.compiled = compile
        if compile:
            # the compiled step takes the leaf index and depth as tensors (no recompilation)
            self._levels = torch.arange(1, max(max_tree_depth, 2), device=like.device)
            self._indices = torch.arange(2**max_tree_depth, device=like.device).unbind()
            self._compiled_step = torch.compile(
                self._leaf_and_checks, dynamic=False, fullgraph=True
            )

    # ---------------------------------------------------------------- randomness, per chain

    def _normal(self) -> Tensor:
        like = self.like
        eps = [torch.randn(self.dim, generator=g, dtype=like.dtype, device=like.device)
               for g in self.generators]  # fmt: skip
        return torch.stack(eps)

    def _search_normal(self, active: Tensor) -> Tensor:
        """Momentum noise for the step-size search, drawn only for the chains still searching."""
        like = self.like
        eps = [
            torch.randn(self.dim, generator=g, dtype=like.dtype, device=like.device)
            if a
            else like.new_zeros(self.dim)
            for g, a in zip(self.search_generators, active.tolist(), strict=True)
        ]
        return torch.stack(eps)

    def _uniform(self, size: int) -> Tensor:
        like = self.like
        u = [torch.rand(size, generator=g, dtype=like.dtype, device=like.device)
             for g in self.generators]  # fmt: skip
        return torch.stack(u)

    # ---------------------------------------------------------------- one leapfrog leaf

    def _leaf(
        self, st: Subtree, step: Tensor, inverse_mass: Tensor, energy0: Tensor, u: Tensor
    ) -> Subtree:
        """One leapfrog step of every chain, its multinomial weight and the subtree's draw."""
        eps = step[:, None]
        r_half = st.r - (0.5 * eps) * st.grad
        z = st.z + eps * _velocity(inverse_mass, r_half)
        pe, grad = self.potential_and_grad(z)
        r = r_half - (0.5 * eps) * grad
        delta = torch.nan_to_num(pe + _kinetic(inverse_mass, r) - energy0, nan=math.inf)
        log_weight = torch.logaddexp(st.log_weight, -delta)
        take = u < torch.exp(-delta - log_weight)
        active = st.active
        prop = _select(take, (z, r, grad, pe), (st.prop_z, st.prop_r, st.prop_grad, st.prop_pe))
        return Subtree(
            z=z,
            r=r,
            grad=grad,
            pe=pe,
            log_weight=log_weight,
            r_sum=st.r_sum + r,
            prop_z=prop[0],
            prop_r=prop[1],
            prop_grad=prop[2],
            prop_pe=prop[3],
            accept_sum=st.accept_sum + torch.where(active, torch.exp(-delta.clamp_min(0.0)), 0.0),
            num_leaves=st.num_leaves + active.long(),
            active=active & (delta <= MAX_ENERGY_ERROR),
            turning=st.turning,
            diverging=st.diverging | (active & (delta > MAX_ENERGY_ERROR)),
        )

    def _checkpoints(self, like: Tensor) -> Any:
        """Empty checkpoints for a new subtree: per level, the momentum at the start of the current
        aligned block and the momentum sum before it (a dict eagerly, stacked tensors compiled)."""
        if not self.compiled:
            return {}
        empty = like.new_zeros((len(self._levels), *like.shape))
        return empty, empty.clone()

    def _advance(
        self, st: Subtree, checkpoints: Any, step: Tensor, inverse_mass: Tensor, energy0: Tensor,
        u: Tensor, n: int, depth: int,
    ) -> tuple[Subtree, Any]:  # fmt: skip
        """Leaf ``n`` of a subtree of ``depth``: the leapfrog step, then the U-turn checks."""
        if self.compiled:
            st, *checkpoints = self._compiled_step(
                st, *checkpoints, step, inverse_mass, energy0, u, self._indices[n],
                self._indices[depth],
            )  # fmt: skip
            return st, checkpoints
        st = self._leaf(st, step, inverse_mass, energy0, u)
        return self._check_subtrees(st, n, depth, inverse_mass, checkpoints), checkpoints

    def _leaf_and_checks(
        self, st: Subtree, ckpt_r: Tensor, ckpt_sum: Tensor, step: Tensor, inverse_mass: Tensor,
        energy0: Tensor, u: Tensor, n: Tensor, depth: Tensor,
    ) -> tuple[Subtree, Tensor, Tensor]:  # fmt: skip
        """The compiled step: :meth:`_leaf` and the checks of :meth:`_check_subtrees` for every
        level at once, with the leaf index ``n`` and ``depth`` as tensors."""
        st = self._leaf(st, step, inverse_mass, energy0, u)
        powers = 2**self._levels
        store = ((n % powers) == 0)[:, None, None]
        ckpt_r = torch.where(store, st.r, ckpt_r)
        ckpt_sum = torch.where(store, st.r_sum - st.r, ckpt_sum)
        check = (((n + 1) % powers) == 0) & (self._levels <= depth)
        turns = _is_turning(inverse_mass, ckpt_r, st.r, st.r_sum - ckpt_sum)
        turning = st.active & (turns & check[:, None]).any(0)
        st = st._replace(turning=st.turning | turning, active=st.active & ~turning)
        return st, ckpt_r, ckpt_sum

    @staticmethod
    def _check_subtrees(
        st: Subtree, n: int, depth: int, inverse_mass: Tensor, checkpoints: dict[int, tuple]
    ) -> Subtree:
        """U-turn checks of the aligned blocks of ``2^k`` leaves (``k <= depth``) ending at leaf
        ``n``, after storing the momentum and momentum sum where blocks start at leaf ``n``."""
        for k in range(1, depth + 1):
            if n % 2**k == 0:
                checkpoints[k] = (st.r, st.r_sum - st.r)
        turning = None
        for k in range(1, depth + 1):
            if (n + 1) % 2**k == 0:
                r_first, r_before = checkpoints[k]
                turns = _is_turning(inverse_mass, r_first, st.r, st.r_sum - r_before)
                turning = turns if turning is None else turning | turns
        if turning is None:
            return st
        turning = st.active & turning
        return st._replace(turning=st.turning | turning, active=st.active & ~turning)

    @staticmethod
    def _start(z: Tensor, r: Tensor, grad: Tensor, pe: Tensor, active: Tensor) -> Subtree:
        # distinct tensors throughout: a compiled leaf step is specialised on input aliasing
        return Subtree(
            z, r, grad, pe, torch.full_like(pe, -math.inf), torch.zeros_like(r),
            z.clone(), r.clone(), grad.clone(), pe.clone(), torch.zeros_like(pe),
            torch.zeros_like(pe, dtype=torch.long), active.clone(), torch.zeros_like(active),
            torch.zeros_like(active),
        )  # fmt: skip

    def leapfrog(
        self, z: Tensor, r: Tensor, grad: Tensor, pe: Tensor, step: Tensor, inverse_mass: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One leapfrog step of every chain (through the same, possibly compiled, leaf step)."""
        st = self._start(z, r, grad, pe, torch.ones_like(pe, dtype=torch.bool))
        u = torch.zeros_like(pe)
        st, _ = self._advance(st, self._checkpoints(z), step, inverse_mass, pe.clone(), u, 0, 0)
        return st.z, st.r, st.grad, st.pe

    # ---------------------------------------------------------------- transitions

    def nuts(
        self, z: Tensor, grad: Tensor, pe: Tensor, step: Tensor, inverse_mass: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """One NUTS transition of every chain: ``(z, grad, pe, stats)``."""
        factor = _momentum_factor(inverse_mass)
        r0 = _velocity(factor, self._normal()) if factor.dim() == 3 else factor * self._normal()
        depth_max = self.max_tree_depth
        leaves = 2**depth_max - 1
        u = self._uniform(leaves + 2 * depth_max).T.contiguous()
        energy0 = pe + _kinetic(inverse_mass, r0)
        left = right = (z, r0, grad, pe)
        prop = (z, r0, grad, pe)
        r_sum, log_weight = r0, torch.zeros_like(pe)
        done = torch.zeros_like(pe, dtype=torch.bool)
        diverging = torch.zeros_like(done)
        depth = torch.zeros_like(pe, dtype=torch.long)
        accept_sum, num_leaves = torch.zeros_like(pe), torch.zeros_like(depth)
        for j in range(depth_max):
            # a chain that stops in this subtree is done: its edges, weight and momentum sum are
            # never read again, so they are updated without masks
            forward = u[leaves + j] >= 0.5
            st = self._start(*_select(forward, right, left), ~done)
            signed = torch.where(forward, step, -step)
            first = 2**j - 1
            checkpoints = self._checkpoints(z)
            for n in range(2**j):
                st, checkpoints = self._advance(
                    st, checkpoints, signed, inverse_mass, energy0, u[first + n], n, j
                )
                if n % 2 and not bool(st.active.any()):
                    break
            accept_sum = accept_sum + st.accept_sum
            num_leaves = num_leaves + st.num_leaves
            diverging = diverging | st.diverging
            new = (st.z, st.r, st.grad, st.pe)
            right, left = _select(forward, new, right), _select(forward, left, new)
            ok = ~done & ~st.turning & ~st.diverging
            depth = depth + ok.long()
            take = ok & (u[leaves + depth_max + j] < torch.exp(st.log_weight - log_weight))
            prop = _select(take, (st.prop_z, st.prop_r, st.prop_grad, st.prop_pe), prop)
            r_sum = r_sum + st.r_sum
            log_weight = torch.logaddexp(log_weight, st.log_weight)
            done = done | ~ok | _is_turning(inverse_mass, left[1], right[1], r_sum)
            if bool(done.all()):
                break
        z, r, grad, pe = prop
        stats = {
            "diverging": diverging,
            "tree_depth": depth,
            "n_steps": num_leaves,
            "acceptance_rate": accept_sum / num_leaves.clamp_min(1),
            "energy": pe + _kinetic(inverse_mass, r),
        }
        return z, grad, pe, stats

    def hmc(
        self, z: Tensor, grad: Tensor, pe: Tensor, step: Tensor, inverse_mass: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """One HMC transition (fixed trajectory length) of every chain: ``(z, grad, pe, stats)``."""
        factor = _momentum_factor(inverse_mass)
        r0 = _velocity(factor, self._normal()) if factor.dim() == 3 else factor * self._normal()
        u = self._uniform(1)[:, 0]
        energy0 = pe + _kinetic(inverse_mass, r0)
        if self.num_steps is not None:
            steps = torch.full_like(pe, self.num_steps, dtype=torch.long)
        else:
            steps = (self.trajectory_length / step).floor().long().clamp_min(1)
        state = (z, r0, grad, pe)
        for s in range(int(steps.max())):
            moved = self.leapfrog(*state, step, inverse_mass)
            state = _select(s < steps, moved, state)
        z1, r1, grad1, pe1 = state
        energy1 = pe1 + _kinetic(inverse_mass, r1)
        delta = torch.nan_to_num(energy1 - energy0, nan=math.inf)
        accept_prob = torch.exp(torch.clamp(-delta, max=0.0))
        accept = u < accept_prob
        z, grad, pe = _select(accept, (z1, grad1, pe1), (z, grad, pe))
        stats = {
            "diverging": delta > MAX_ENERGY_ERROR,
            "n_steps": steps,
            "acceptance_rate": accept_prob,
            "energy": torch.where(accept, energy1, energy0),
        }
        return z, grad, pe, stats

    def transition(
        self, z: Tensor, grad: Tensor, pe: Tensor, step: Tensor, inverse_mass: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """One transition of the configured kernel."""
        kernel = self.nuts if self.kernel == "nuts" else self.hmc
        return kernel(z, grad, pe, step, inverse_mass)

    def reasonable_step_size(
        self, z: Tensor, grad: Tensor, pe: Tensor, step: Tensor, inverse_mass: Tensor
    ) -> Tensor:
        """Pyro's (and Stan's) heuristic: double or halve the step size, per chain, until the
        one-step acceptance ``exp(-dH)`` crosses 0.8."""

        factor = _momentum_factor(inverse_mass)

        def direction(step: Tensor, active: Tensor) -> Tensor:
            eps = self._search_normal(active)
            r = _velocity(factor, eps) if factor.dim() == 3 else factor * eps
            energy0 = pe + _kinetic(inverse_mass, r)
            _, r1, _, pe1 = self.leapfrog(z, r, grad, pe, step, inverse_mass)
            delta = torch.nan_to_num(pe1 + _kinetic(inverse_mass, r1) - energy0, nan=math.inf)
            return torch.where(-delta > _DIRECTION_THRESHOLD, 1.0, -1.0).to(step.dtype)

        first = direction(step, torch.ones_like(step, dtype=torch.bool))
        active = (step > _MIN_STEP) & (step < _MAX_STEP)
        while bool(active.any()):
            step = torch.where(active, step * 2.0**first, step)
            same = direction(step, active) == first
            active = active & same & (step > _MIN_STEP) & (step < _MAX_STEP)
        return step.clamp(_MIN_STEP, _MAX_STEP)
