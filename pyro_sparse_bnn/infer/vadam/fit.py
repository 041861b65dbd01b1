"""``fit_vadam``: VADAM, VOGN and VADAM-ARD for a SparseBNN or any Pyro model ``model(x, y=None)``.

The optimisers live in :mod:`pyro_sparse_bnn.infer.vadam`; this module connects them to a Pyro
model and returns the shared :class:`~pyro_sparse_bnn.infer.result.FitResult`.

How the Pyro model is used. One trace of the model sorts its sites. It starts from
``model.initial_weights()`` when the model has that method (as :class:`~pyro_sparse_bnn.SparseBNN`
does; other latent sites at a prior median), else from one draw of the model's prior:

* **weight sites** (tagged ``infer={"psb_weight": True}``, as every prior in
  :mod:`pyro_sparse_bnn.priors` tags them) get VADAM's mean-field Gaussian posterior
  ``N(mu, 1 / (N s + lambda))``. ``mu`` starts at the traced value: the network's own
  initialisation for a SparseBNN, one prior draw for a hand-written model.
* **the observed site** (exactly one, inside a ``pyro.plate`` over the rows): its per-row
  ``log_prob``, with all latent sites conditioned, is the negative log-likelihood (NLL) that VADAM
  differentiates. VOGN needs each row's squared gradient: for a weight site that is the weight of
  one Linear or Conv layer call (every weight of a SparseBNN built from such layers) it comes in
  closed form from the layer's input and output gradient
  (:mod:`~pyro_sparse_bnn.infer.vadam.per_example`); any other weight site gets it from one
  batched backward pass over the rows, which some models cannot run: pass
  ``per_example_grads=False`` for them.
* **other latent sites the likelihood ignores** (the scale and decentred sites of a shrinkage
  prior) are held at their traced value and not used: VADAM's prior on the weights is its own
  Gaussian with precision ``prior_precision`` or, with ``ard=True``, one ARD precision ``psi_j``
  per weight. When the model's weight prior is a different family (a horseshoe, a log-uniform,
  ...), VADAM *replaces* it and says so with a ``UserWarning``; the model is still used for the
  likelihood, and for predictions. These sites are stored in the result as constant draws at the
  held value (``FitResult`` conditions on every latent site); they are not posterior draws.
* **other latent sites the likelihood uses** (such as the learned noise of
  ``likelihoods.Gaussian()``) are fitted as point estimates (MAP under their traced prior, in
  their unconstrained space) and stored in the result as constant draws.
* **non-Bayesian parameters** (the plain ``nn.Parameter`` biases of a SparseBNN, or any parameter
  of an ``nn.Module`` model) are point estimates too. They and the point latents take Adam steps
  with the same ``lr`` on the mean NLL at the sampled weights (plus the point latents'
  ``-log prior / N``), one per VADAM step.

The result stores ``num_posterior_samples`` moment-matched draws ``mu + sigma * eps`` of every
weight site (``eps`` standardised per weight to mean 0 and sd 1 over the draws), so the shared
SNR rule ``result.masks(k)`` (``|mean| / sd > k`` over the draws) is exactly VADAM-ARD's
``|mu| > k sigma`` rule, and predictions average over the same draws.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...isolation import isolated
from ...norms import has_running_statistics
from ...validation import (
    check_bool,
    check_choice,
    check_nonnegative,
    check_positive,
)
from ..loop import LR_SCHEDULES, LoopOptions
from ..perturbation.training import check_common, gaussian_result, read_problem, train
from ..result import FitResult
from .optimizer import Vadam, _check_betas
from .variants import VadamARD

VARIANTS = ("gamma", "thesis")


"""VADAM-ARD updates (see :class:`~pyro_sparse_bnn.infer.vadam.VadamARD`)."""


@dataclass(frozen=True)
class ARDOptions:
    """VADAM-ARD's settings: the ``variant`` of its update (``"gamma"``, the mean-field optimum,
    or ``"thesis"``) and the Gamma shape ``a0`` and rate ``b0`` of each ARD precision (0, 0: the
    ARD limit; VADAM-ARD's own, not read from the model). ``fit(..., ard=True)`` is
    ``ard=ARDOptions()``.

    >>> ARDOptions(variant="thesis").variant
    'thesis'
    >>> ARDOptions(a0=-1.0)
    Traceback (most recent call last):
    ValueError: a0 must be >= 0, got -1.0
    """

    variant: str = "gamma"
    a0: float = 0.0
    b0: float = 0.0

    def __post_init__(self) -> None:
        check_choice(self.variant, "variant", VARIANTS)
        check_nonnegative(self.a0, "a0")
        check_nonnegative(self.b0, "b0")


@isolated
def fit_vadam(
    model: Callable,
    X: Tensor,
    y: Tensor,
    *,
    ard: bool | ARDOptions = False,
    epochs: int = 100,
    batch_size: int | None = None,
    lr: float | None = None,
    lr_schedule: str | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    num_particles: int = 1,
    prior_precision: float | None = None,
    prec_init: float | None = None,
    per_example_grads: bool | None = None,
    kl_weight: float = 1.0,
    num_posterior_samples: int = 200,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: str | os.PathLike | None = None,
) -> FitResult:
    """Mean-field Gaussian VI of the weight sites by natural gradients (VADAM, VOGN, VADAM-ARD).

    The posterior of each weight is ``N(mu, 1 / (N s + lambda))`` (Khan et al., 2018), fitted with
    :class:`~pyro_sparse_bnn.infer.vadam.Vadam` or, with ``ard=True``,
    :class:`~pyro_sparse_bnn.infer.vadam.VadamARD` (one prior precision ``psi_j`` per weight,
    updated in closed form after every step). The module docstring says how the Pyro model is
    used. **VADAM's prior replaces the model's weight prior**: a fixed Normal prior is used as
    it is; any other family (horseshoe, log-uniform, ...) is replaced by VADAM's Gaussian
    (``ard=False``) or by the ARD prior (``ard=True``; a Normal whose precision has a Gamma prior,
    such as ``priors.ARD``, counts as ARD), with a ``UserWarning`` naming the sites.

    Args:
        ard: learn one prior precision per weight and prune by ``|mu| / sigma``: ``True`` or
            an :class:`ARDOptions` (update variant, Gamma hyperparameters).
        epochs: passes over the data; ``batch_size`` rows per step (default: full batch).
        lr, betas: step size and moment decay rates of the VADAM and Adam updates. ``lr=None``:
            0.1 (IVON's default step) without ARD, 0.01 with ARD.
        lr_schedule: ``"constant"`` or ``"linear_decay"`` (constant for the first half of the
            epochs, then linearly to 0), for both. ``None``: ``"linear_decay"`` (IVON's)
            without ARD, ``"constant"`` with ARD.
        num_particles: ``K``, weight samples (model evaluations) per step.
        prior_precision: ``lambda`` (the initial ``psi`` with ``ard=True``). ``None`` takes each
            site's precision from a fixed Normal prior in the model, else 1.
        prec_init: the posterior precision ``N s + lambda`` at the start, at least
            ``prior_precision``. ``None``: without ARD ``lambda + N / beta``, one unit of
            curvature per example (IVON's ``hess_init=1``): the first draws stay near the
            initial network instead of coming from the prior, whose spread a wide layer cannot
            take; ``s`` then moves to the data's squared gradients over about
            ``1 / (1 - betas[1])`` steps. With ARD the prior precision, as published: the first
            precision updates ``psi = 1 / (mu^2 + sigma^2)`` then see the prior's spread, not a
            narrow start that would prune hard from the first step (docs/vadam.md).
        per_example_grads: build ``s`` from per-example squared gradients (VOGN; correct at any
            batch size) instead of squared minibatch means (Vadam; correct at batch size 1, too
            wide posteriors for larger batches). ``None``: VOGN unless ``batch_size == 1`` or
            the model has BatchNorm layers (whose rows interact: VOGN is refused there).
        kl_weight: ``beta`` of the tempered objective ``E_q[NLL] + beta KL(q || prior)``: the
            optimiser runs with ``N / beta`` examples, so the posterior precision is
            ``N s / beta + lambda``. Above 1 the prior weighs more (sparser networks: the role
            of L1's ``lambda``, whose objective ``mean NLL + lambda |theta|`` matches
            ``mean NLL + (beta / N) KL``); 1 is the Bayesian posterior.
        num_posterior_samples: draws per weight stored in the result (at least 2).
        seed: seeds the initial prior draw, the weight noise, the data order and the draws.
        progress, callback, checkpoint, checkpoint_every, resume: the training loop's
            (:class:`~pyro_sparse_bnn.infer.loop.LoopOptions`).

    ``result.info`` holds ``mu``, ``sigma``, ``relevance`` (``|mu| / sigma``) per weight site,
    ``prior_precision`` per site (``psi`` tensors with ``ard=True``), ``point_estimates``,
    ``history`` (mean NLL per row at the sampled weights, per epoch), ``seconds``,
    ``epochs_run`` and the ``optimizer``.

    >>> import pyro_sparse_bnn as psb
    >>> X, y = psb.datasets.load("iris")
    >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    >>> result = fit_vadam(bnn, X, y, epochs=1000, progress=False)
    >>> result.evaluate(X, y)["accuracy"] > 0.9
    True
    >>> sorted(result.info["sigma"])
    ['0.weight']
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
    if not isinstance(ard, bool | ARDOptions):
        raise TypeError(f"ard must be a bool or an ARDOptions, got {ard!r}")
    ard = ARDOptions() if ard is True else ard
    if lr is None:
        lr = 0.01 if ard else 0.1
    lr_schedule = ("constant" if ard else "linear_decay") if lr_schedule is None else lr_schedule
    check_positive(lr, "lr")
    check_choice(lr_schedule, "lr_schedule", tuple(LR_SCHEDULES))
    _check_betas(betas)
    if prec_init is not None:
        check_positive(prec_init, "prec_init")
        if prior_precision is not None and prec_init < prior_precision:
            raise ValueError(
                f"prec_init must be at least prior_precision ({prior_precision}), got {prec_init!r}"
            )
    batch_norm = isinstance(model, nn.Module) and has_running_statistics(model)
    if per_example_grads is None:
        per_example_grads = batch_size > 1 and not batch_norm
    check_bool(per_example_grads, "per_example_grads")
    if per_example_grads and batch_norm:
        raise ValueError(
            "per_example_grads=True (VOGN) needs rows that do not interact, but the model's "
            "BatchNorm layers normalise each row by its batch: pass per_example_grads=False"
        )
    loop = LoopOptions(
        epochs,
        progress,
        callback,
        checkpoint,
        checkpoint_every,
        resume,
        desc="vadam",
        loss_name="NLL",
    )
    problem = read_problem(
        model,
        x,
        y,
        method="VADAM-ARD" if ard else "VADAM",
        ard=bool(ard),
        prior_precision=prior_precision,
        kl_weight=kl_weight,
        seed=seed,
    )
    names, weights = problem.names, problem.weights
    groups = [
        {"params": [weights[n]], "prior_precision": problem.precision[n],
         "prec_init": _start_precision(prec_init, problem.precision[n], problem.num_data, ard)}
        for n in names
    ]  # fmt: skip
    generator = torch.Generator(device=x.device).manual_seed(seed)
    common = {
        "num_data": problem.num_data,
        "lr": lr,
        "betas": tuple(betas),
        "num_particles": num_particles,
        "per_example_grads": per_example_grads,
        "generator": generator,
    }
    if ard:
        opt: Vadam = VadamARD(groups, a0=ard.a0, b0=ard.b0, variant=ard.variant, **common)
    else:
        opt = Vadam(groups, **common)
    nll = problem.nll

    def closure(xb: Tensor, yb: Tensor) -> Tensor:
        loss = nll(weights, xb, yb).mean()
        (loss + nll.penalty(problem.num_data)).backward()
        return loss

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        if per_example_grads:
            loss = _per_example_step(opt, lambda: nll(weights, xb, yb))
        else:
            loss = opt.step(lambda: closure(xb, yb))
        for p in problem.points:
            if p.grad is not None:
                p.grad /= num_particles
        penalty = nll.penalty(problem.num_data) if per_example_grads else 0.0
        if isinstance(penalty, Tensor) and penalty.requires_grad:
            penalty.backward()
        return loss

    run = train(
        problem,
        loop,
        step,
        optimizer=opt,
        lr=lr,
        betas=tuple(betas),
        batch_size=batch_size,
        seed=seed,
        lr_schedule=lr_schedule,
        generators={"noise": generator},
    )
    if ard:
        assert isinstance(opt, VadamARD)
        precision: dict[str, Any] = dict(zip(names, opt.precision(), strict=True))
    else:
        precision = {
            name: g["prior_precision"] for name, g in zip(names, opt.param_groups, strict=True)
        }
    info = {
        "variant": ard.variant if ard else None,
        "per_example_grads": per_example_grads,
        "kl_weight": kl_weight,
        **run,
        "optimizer": opt,
    }
    return gaussian_result(
        problem,
        method="vadam",
        sigma=opt.posterior_scale(),
        prior_precision=precision,
        ard=bool(ard),
        num_posterior_samples=num_posterior_samples,
        generator=generator,
        info=info,
    )


def _start_precision(
    prec_init: float | None, prior_precision: float, num_data: float, ard: bool
) -> float | None:
    """The posterior precision a site starts at: ``prec_init``; by default, without ARD, one
    unit of curvature per example above the prior precision, with ARD the prior's (``None``)."""
    if prec_init is not None or ard:
        return prec_init
    return float(prior_precision) + num_data


def _per_example_step(opt: Vadam, closure: Callable[[], Tensor]) -> Tensor:
    try:
        return opt.step(closure)
    except RuntimeError as error:
        raise RuntimeError(
            "per-example gradients (VOGN) of a weight that is not the weight of one Linear or Conv "
            "layer call need torch's batched backward pass, which failed for this model; pass "
            "per_example_grads=False to use minibatch-mean gradients instead"
        ) from error
