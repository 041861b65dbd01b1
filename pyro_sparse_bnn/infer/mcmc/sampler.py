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
leaf ``n`` use checkpoints (the momentum and momentum sum where each aligned block started), so a
leaf step is a fixed sequence of tensor operations that Inductor can fuse with the potential
(two leaves per call once compiled). Each chain draws its random numbers from its own seeded
generator, indexed by position in the tree, so a chain's path does not depend on which other
chains share the batch.

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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .compiled import compile_function
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


LEAVES_PER_CALL = 2
"""Leaves of a NUTS subtree per call of the compiled step: two leaves share a call's fixed cost
for a 50 % longer compilation; a subtree of one leaf voids the second (docs/mcmc.md, "When NUTS
compiles")."""


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
        compile: fuse the leapfrog steps and the tree bookkeeping with Inductor
            (:func:`.compiled.compile_function`; or later, :meth:`use_compiled`).
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
        self.leaves_per_call = 1 if kernel == "hmc" else LEAVES_PER_CALL
        self.compiled = False
        if compile:
            self.use_compiled()

    def use_compiled(self) -> None:
        """From now on, run the leaf steps through Inductor (compiled on first use)."""
        device = self.like.device
        # the compiled step takes the leaf index and the depth as tensors: one graph for all
        self._levels = torch.arange(1, max(self.max_tree_depth, 2), device=device)
        self._powers = 2**self._levels
        self._indices = torch.arange(2**self.max_tree_depth, device=device).unbind()
        self._block = compile_function(self._flat_leaves)
        self.compiled = True

    def compile_now(
        self, z: Tensor, grad: Tensor, pe: Tensor, step: Tensor, inverse_mass: Tensor
    ) -> bool:
        """Switch to the compiled leaf step and compile it at once, on a leapfrog step from ``z``
        whose result is dropped; where compilation fails, warn and stay uncompiled."""
        try:
            self.use_compiled()
            self.leapfrog(z, torch.zeros_like(z), grad, pe, step, inverse_mass)
        except Exception as error:  # any compiler failure: the uncompiled step works
            self.compiled = False
            warnings.warn(
                f"compiling the leapfrog step failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0]}); NUTS goes on with the uncompiled leapfrog step "
                "(pass graph='traced' to skip the attempt)",
                stacklevel=2,
            )
            return False
        return True

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
        """Leaves ``n, n + 1, ...`` of a subtree of ``depth``: each a leapfrog step, then the U-turn
        checks. ``u`` holds one uniform per leaf and chain from leaf ``n`` on; eagerly one leaf
        is taken, compiled :attr:`leaves_per_call` (those past the subtree's end are void)."""
        if self.compiled:
            inputs = [*st, *checkpoints, step, inverse_mass, energy0, u[: self.leaves_per_call],
                      self._indices[n], self._indices[depth]]  # fmt: skip
            *leaves, ckpt_r, ckpt_sum = self._block(*inputs)
            return Subtree(*leaves), (ckpt_r, ckpt_sum)
        st = self._leaf(st, step, inverse_mass, energy0, u[0])
        return self._check_subtrees(st, n, depth, inverse_mass, checkpoints), checkpoints

    def _flat_leaves(self, *inputs: Tensor) -> list[Tensor]:
        """:meth:`_leaves_and_checks` over flat tensors, as :func:`.compiled.compile_function`
        takes it."""
        fields = len(Subtree._fields)
        st, ckpt_r, ckpt_sum = self._leaves_and_checks(Subtree(*inputs[:fields]), *inputs[fields:])
        return [*st, ckpt_r, ckpt_sum]

    def _leaves_and_checks(
        self, st: Subtree, ckpt_r: Tensor, ckpt_sum: Tensor, step: Tensor, inverse_mass: Tensor,
        energy0: Tensor, u: Tensor, first: Tensor, depth: Tensor,
    ) -> tuple[Subtree, Tensor, Tensor]:  # fmt: skip
        """The compiled step: for each of the leaves ``first, first + 1, ...`` (one per row of
        ``u``), :meth:`_leaf` and the checks of :meth:`_check_subtrees` for every level at once,
        with the leaf index and ``depth`` as tensors; a leaf at or past ``2^depth`` changes
        nothing."""
        powers = self._powers
        for i in range(u.shape[0]):
            n = first + i
            leaf = self._leaf(st, step, inverse_mass, energy0, u[i])
            store = ((n % powers) == 0)[:, None, None]
            new_ckpt_r = torch.where(store, leaf.r, ckpt_r)
            new_ckpt_sum = torch.where(store, leaf.r_sum - leaf.r, ckpt_sum)
            check = (((n + 1) % powers) == 0) & (self._levels <= depth)
            turns = _is_turning(inverse_mass, new_ckpt_r, leaf.r, leaf.r_sum - new_ckpt_sum)
            turning = leaf.active & (turns & check[:, None]).any(0)
            leaf = leaf._replace(turning=leaf.turning | turning, active=leaf.active & ~turning)
            if i == 0:  # every subtree has a first leaf
                st, ckpt_r, ckpt_sum = leaf, new_ckpt_r, new_ckpt_sum
                continue
            real = n < 2**depth
            st = Subtree(*(torch.where(real, a, b) for a, b in zip(leaf, st, strict=True)))
            ckpt_r = torch.where(real, new_ckpt_r, ckpt_r)
            ckpt_sum = torch.where(real, new_ckpt_sum, ckpt_sum)
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
        return Subtree(
            z, r, grad, pe, torch.full_like(pe, -math.inf), torch.zeros_like(r),
            z, r, grad, pe, torch.zeros_like(pe),
            torch.zeros_like(pe, dtype=torch.long), active, torch.zeros_like(active),
            torch.zeros_like(active),
        )  # fmt: skip

    def leapfrog(
        self, z: Tensor, r: Tensor, grad: Tensor, pe: Tensor, step: Tensor, inverse_mass: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One leapfrog step of every chain (through the same, possibly compiled, leaf step)."""
        st = self._start(z, r, grad, pe, torch.ones_like(pe, dtype=torch.bool))
        u = pe.new_zeros((self.leaves_per_call, *pe.shape))
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
        # one uniform per leaf, then per doubling the direction and the subtree's acceptance
        u = self._uniform(leaves + 2 * depth_max).T.contiguous()
        if self.compiled:  # the compiled step reads leaves_per_call rows from every leaf on
            u = torch.cat([u, u.new_zeros(self.leaves_per_call, self.num_chains)])
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
            stride = self.leaves_per_call if self.compiled else 1
            for n in range(0, 2**j, stride):
                st, checkpoints = self._advance(
                    st, checkpoints, signed, inverse_mass, energy0, u[first + n :], n, j
                )
                if (n + stride) % 2 == 0 and not bool(st.active.any()):
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
