"""``fit_ivon``: IVON and IVON-ARD for a SparseBNN or any Pyro model ``model(x, y=None)``.

The model is read as for ``fit_vadam`` (:mod:`pyro_sparse_bnn.infer.perturbation.model`): the weight
sites get IVON's mean-field Gaussian posterior, the observed site's per-row log-likelihood is the
NLL, other latent sites the likelihood uses and the model's own parameters are point estimates
(Adam on the NLL at the sampled weights), and the rest are held.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ...isolation import isolated
from ...validation import (
    check_bool,
    check_choice,
    check_nonnegative,
    check_number,
    check_positive,
)
from ..loop import LR_SCHEDULES, LoopOptions
from ..perturbation.training import Problem, check_common, gaussian_result, read_problem, train
from ..result import FitResult
from .optimizer import IVON, IVONARD
from .step_size import DEFAULT_LR, stable_lr


@isolated
def fit_ivon(
    model: Callable,
    X: Tensor,
    y: Tensor,
    *,
    ard: bool = False,
    ard_warmup: int | None = None,
    epochs: int = 100,
    batch_size: int | None = None,
    lr: float | None = None,
    lr_schedule: str = "linear_decay",
    point_lr: float = 0.01,
    hess_init: float = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.99999,
    num_particles: int = 1,
    prior_precision: float | None = None,
    kl_weight: float = 1.0,
    num_posterior_samples: int = 200,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: str | os.PathLike | None = None,
) -> FitResult:
    """Mean-field Gaussian VI of the weight sites with IVON (Shen et al., 2024); IVON-ARD with
    ``ard=True``.

    Each weight's posterior is ``N(m, 1 / (ess (h + delta)))`` with ``ess = N / kl_weight`` and
    ``delta = prior_precision / ess`` (:class:`~pyro_sparse_bnn.infer.ivon.IVON`, which wraps
    ``ivon-opt``). With ``ard=True`` every weight learns its own prior precision in closed form
    after each step (:class:`~pyro_sparse_bnn.infer.ivon.IVONARD`; Gamma(0, 0) hyperprior), and
    weights the data do not support shrink to zero: prune by ``result.masks()``. As with VADAM,
    **IVON's Gaussian (or ARD) prior replaces the model's weight prior** unless that is a fixed
    Normal (or a Normal with a Gamma precision, for ARD), with a ``UserWarning``.

    Args:
        ard: learn one prior precision per weight (IVON-ARD).
        ard_warmup: epochs of plain IVON before the precisions are learned (default: a
            quarter of ``epochs``; :class:`~pyro_sparse_bnn.infer.ivon.IVONARD` says why).
        epochs, batch_size: passes over the data and rows per step (default: full batch).
        lr: IVON's step size (scaled by ``hess_init + delta`` as in ``ivon-opt``). The default
            is 0.1, lowered to ``1 / lambda`` where the mean minibatch NLL's largest Hessian
            eigenvalue ``lambda`` at the start needs it
            (:func:`~pyro_sparse_bnn.infer.ivon.step_size.stable_lr`: correlated inputs).
        lr_schedule: ``"linear_decay"`` (constant for the first half of the epochs, then
            linearly to 0, so the means settle) or ``"constant"``; it scales ``point_lr`` too.
        point_lr: the Adam step size of the point estimates.
        hess_init: the initial Hessian estimate ``h``: the posterior starts at precision
            ``ess (hess_init + delta)``.
        beta1, beta2: decay rates of the gradient momentum and of the Hessian estimate. The
            Hessian forgets over about ``1 / (1 - beta2)`` steps: IVON's default ``0.99999``
            suits long runs; short ones keep ``h`` near ``hess_init``.
        num_particles: weight draws (model evaluations) per step.
        prior_precision: the Gaussian prior's precision (the initial ``psi`` with ``ard=True``);
            ``None`` takes each site's from a fixed Normal prior in the model, else 1.
        kl_weight: ``beta`` of the tempered objective: IVON runs with ``ess = N / beta``.
        num_posterior_samples: draws per weight stored in the result (at least 2).
        seed: seeds the data order, the weight noise and the stored draws.
        progress, callback, checkpoint, checkpoint_every, resume: the training loop's
            (:class:`~pyro_sparse_bnn.infer.loop.LoopOptions`).

    ``result.info`` holds ``mu``, ``sigma``, ``relevance`` and ``prior_precision`` per weight
    site, ``point_estimates``, ``history``, ``seconds``, ``epochs_run``, the ``lr`` used and the
    ``optimizer``.

    >>> import pyro_sparse_bnn as psb
    >>> X, y = psb.datasets.load("iris")
    >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    >>> result = fit_ivon(bnn, X, y, epochs=300, progress=False)
    >>> result.evaluate(X, y)["accuracy"] > 0.9
    True
    """
    x, y, batch_size = check_common(
        model,
        X,
        y,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        num_particles=num_particles,
        prior_precision=prior_precision,
        kl_weight=kl_weight,
        num_posterior_samples=num_posterior_samples,
    )
    check_bool(ard, "ard")
    if ard_warmup is None:
        ard_warmup = epochs // 4
    check_nonnegative(ard_warmup, "ard_warmup", integer=True)
    if lr is not None:
        check_positive(lr, "lr")
    check_positive(point_lr, "point_lr")
    check_choice(lr_schedule, "lr_schedule", tuple(LR_SCHEDULES))
    check_positive(hess_init, "hess_init")
    check_number(beta1, "beta1", low=0.0, high=1.0, high_open=True)
    check_number(beta2, "beta2", low=0.0, high=1.0, high_open=True)
    loop = LoopOptions(
        epochs,
        progress,
        callback,
        checkpoint,
        checkpoint_every,
        resume,
        desc="ivon",
        loss_name="NLL",
    )
    problem = read_problem(
        model,
        x,
        y,
        method="IVON-ARD" if ard else "IVON",
        ard=ard,
        prior_precision=prior_precision,
        kl_weight=kl_weight,
        seed=seed,
    )
    ess = problem.num_data
    if lr is None:
        lr = _default_lr(problem, batch_size, seed)
    common = {"lr": lr, "ess": ess, "hess_init": hess_init, "beta1": beta1, "beta2": beta2}
    names = problem.names
    groups = [
        {"params": [problem.weights[n]], "prior_precision": problem.precision[n]} for n in names
    ]
    opt: IVON
    if ard:
        steps_per_epoch = -(-x.shape[0] // batch_size)
        opt = IVONARD(groups, warmup_steps=ard_warmup * steps_per_epoch, **common)
    else:
        for group in groups:
            group["weight_decay"] = group.pop("prior_precision") / ess
        opt = IVON(groups, **common)
    nll = problem.nll

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        losses = []
        for _ in range(num_particles):
            with opt.sampled_params(train=True):
                opt.zero_grad()
                with torch.enable_grad():
                    loss = nll(problem.weights, xb, yb).mean()
                    (loss + nll.penalty(ess)).backward()
                losses.append(loss.detach())
        opt.step()
        if not all(bool(torch.isfinite(w).all()) for w in problem.weights.values()):
            raise FloatingPointError(
                "IVON's weight means became non-finite: lower lr or raise hess_init"
            )
        for p in problem.points:
            if p.grad is not None:
                p.grad /= num_particles
        return torch.stack(losses).mean()

    run = train(
        problem,
        loop,
        step,
        optimizer=opt,
        lr=point_lr,
        betas=(0.9, 0.999),
        batch_size=batch_size,
        seed=seed,
        lr_schedule=lr_schedule,
    )
    if isinstance(opt, IVONARD):
        precision: dict[str, Any] = dict(zip(names, opt.precision(), strict=True))
    else:
        precision = dict(problem.precision)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return gaussian_result(
        problem,
        method="ivon",
        sigma=opt.posterior_scale(),
        prior_precision=precision,
        ard=ard,
        num_posterior_samples=num_posterior_samples,
        generator=generator,
        info={"kl_weight": kl_weight, "lr": lr, **run, "optimizer": opt},
    )


def _default_lr(problem: Problem, batch_size: int, seed: int) -> float:
    """:func:`stable_lr` on one seeded minibatch at the initial weights; ``DEFAULT_LR`` where
    the NLL has no second derivative in torch (an operation without double backward)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(problem.x.shape[0], generator=generator)[:batch_size]
    x, y = problem.x[rows.to(problem.x.device)], problem.y[rows.to(problem.x.device)]
    weights = problem.weights
    try:
        return stable_lr(
            lambda: problem.nll(weights, x, y).mean(), list(weights.values()), generator=generator
        )
    except (RuntimeError, NotImplementedError):
        return DEFAULT_LR
