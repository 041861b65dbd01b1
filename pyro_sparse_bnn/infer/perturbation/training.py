"""What the weight-perturbation fits (``fit_vadam``, ``fit_ivon``) share.

Both fit a mean-field Gaussian ``N(mu, sigma**2)`` to each weight site of a Pyro model with an
optimiser that perturbs the weights (:mod:`~pyro_sparse_bnn.infer.perturbation.model` says how the
model is read): the same weight tensors and prior precisions, the same Adam steps for the point
estimates, the same epoch loop and the same result of moment-matched draws.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from ...isolation import check_seed
from ...validation import check_positive, check_positive_int, check_xy
from ..loop import LoopOptions, TensorState, check_step, lr_scheduler
from ..posterior import ARDPosterior
from ..result import FitResult
from .model import _NLL, _inspect, _Sites, _warn_replaced


@dataclass
class Problem:
    """A Pyro model read for a weight-perturbation fit.

    ``weights`` holds one ``nn.Parameter`` (the mean ``mu``) per weight site, ``precision`` the
    prior precision of each site (the model's fixed Normal prior, ``prior_precision``, or 1),
    ``points`` the point-estimated parameters (the model's own and latent sites the likelihood
    uses) and ``num_data`` the tempered data size ``N / kl_weight``.
    """

    model: Callable
    x: Tensor
    y: Tensor
    sites: _Sites
    nll: _NLL
    weights: dict[str, nn.Parameter]
    precision: dict[str, float]
    num_data: float
    points: list[Tensor] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.weights)


def check_common(
    model: Any,
    X: Any,
    y: Any,
    *,
    seed: Any,
    epochs: Any,
    batch_size: Any,
    num_particles: Any,
    prior_precision: Any,
    kl_weight: Any,
    num_posterior_samples: Any,
) -> tuple[Tensor, Tensor, int]:
    """Check the options both fits share, before any work; returns ``x``, ``y`` as tensors and
    the batch size (default: all rows)."""
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    x, y = check_xy(X, y, model=model)
    check_seed(seed)
    if y is None:
        raise ValueError("y is required for fitting")
    check_positive_int(epochs, "epochs")
    n = x.shape[0]
    batch_size = n if batch_size is None else min(check_positive_int(batch_size, "batch_size"), n)
    check_positive_int(num_particles, "num_particles")
    if prior_precision is not None:
        check_positive(prior_precision, "prior_precision")
    check_positive(kl_weight, "kl_weight")
    if check_positive_int(num_posterior_samples, "num_posterior_samples") < 2:
        raise ValueError(f"num_posterior_samples must be at least 2, got {num_posterior_samples}")
    return x, y, batch_size


def read_problem(
    model: Callable,
    x: Tensor,
    y: Tensor,
    *,
    method: str,
    ard: bool,
    prior_precision: float | None,
    kl_weight: float,
    seed: int,
) -> Problem:
    """Copy ``model`` (an ``nn.Module``), seed Pyro and read the model's sites; warns when the
    method's Gaussian (or ARD) prior replaces the model's weight prior."""
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model)
    pyro.set_rng_seed(seed)
    sites = _inspect(model, x, y)
    _warn_replaced(sites, ard, prior_precision, method)
    nll = _NLL(model, sites)
    precision = {}
    for name, (family, lam) in sites.priors.items():
        default = lam if family == "normal" and lam is not None else 1.0
        precision[name] = default if prior_precision is None else float(prior_precision)
    own = list(model.parameters()) if isinstance(model, nn.Module) else []
    return Problem(
        model,
        x,
        y,
        sites,
        nll,
        weights={name: nn.Parameter(value) for name, value in sites.weights.items()},
        precision=precision,
        num_data=x.shape[0] / kl_weight,
        points=own + list(nll.unconstrained.values()),
    )


def train(
    problem: Problem,
    loop: LoopOptions,
    step: Callable[[Tensor, Tensor], Tensor],
    *,
    optimizer: torch.optim.Optimizer,
    lr: float,
    betas: tuple[float, float],
    batch_size: int,
    seed: int,
    lr_schedule: str = "constant",
    generators: dict[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Run ``loop`` over shuffled minibatches: ``step(xb, yb)`` updates the weights and leaves
    the point estimates' gradients in ``.grad``; an Adam step (``lr``, ``betas``) follows.
    ``lr_schedule`` (:data:`~pyro_sparse_bnn.infer.loop.LR_SCHEDULES`) scales both optimisers'
    step sizes per epoch. Returns the loop's record plus ``seconds``."""
    start = time.perf_counter()
    points = problem.points
    point_opt = torch.optim.Adam(points, lr=lr, betas=betas) if points else None
    order = torch.Generator().manual_seed(seed)
    x, y, n = problem.x, problem.y, problem.x.shape[0]
    schedulers = []  # none for a constant rate: checkpoints keep their earlier parts
    if lr_schedule != "constant":
        optimizers = [optimizer] if point_opt is None else [optimizer, point_opt]
        schedulers = [lr_scheduler(opt, lr_schedule, loop.epochs) for opt in optimizers]

    def epoch(e: int) -> float:
        total = 0.0
        for idx in torch.randperm(n, generator=order).to(x.device).split(batch_size):
            if point_opt is not None:
                point_opt.zero_grad()
            loss = step(x[idx], y[idx])
            check_step(loss, points, e, "NLL")
            if point_opt is not None:
                point_opt.step()
            total += loss.item() * len(idx) / n
        for scheduler in schedulers:
            scheduler.step()
        return total

    parts = {"weights": TensorState(problem.weights), "optimizer": optimizer}
    parts |= {"points": TensorState(dict(enumerate(points)))} if points else {}
    parts |= {"point_optimizer": point_opt} if point_opt is not None else {}
    parts |= {f"schedule{i}": s for i, s in enumerate(schedulers)}
    run = loop.run(epoch, parts=parts, generators={"order": order, **(generators or {})})
    return run | {"seconds": time.perf_counter() - start}


def gaussian_result(
    problem: Problem,
    *,
    method: str,
    sigma: list[Tensor],
    prior_precision: dict[str, Any],
    ard: bool,
    num_posterior_samples: int,
    generator: torch.Generator | None,
    info: dict[str, Any],
) -> FitResult:
    """The fit's :class:`FitResult`: ``num_posterior_samples`` moment-matched draws
    ``mu + sigma * eps`` per weight site, constant draws of the held and point-estimated
    sites, and ``info`` extended by ``mu``, ``sigma``, ``relevance``, ``prior_precision``,
    ``point_estimates`` and ``ard``."""
    names = problem.names
    with torch.no_grad():
        mu = {name: problem.weights[name].detach().clone() for name in names}
        scales = {name: s.detach().clone() for name, s in zip(names, sigma, strict=True)}
        samples = {
            name: moment_matched(mu[name], scales[name], num_posterior_samples, generator)
            for name in names
        }
        points = {name: v.detach().clone() for name, v in problem.nll.points().items()}
        for name, value in (problem.sites.fixed | points).items():
            samples[name] = value.expand(1, num_posterior_samples, *value.shape).clone()
    info = {
        "mu": mu,
        "sigma": scales,
        "relevance": {name: mu[name].abs() / scales[name] for name in names},
        "prior_precision": prior_precision,
        "point_estimates": points,
        "ard": ard,
        **info,
    }
    posterior = ARDPosterior({k: 1.0 / v for k, v in prior_precision.items()}) if ard else None
    return FitResult(
        problem.model,
        samples,
        method=method,
        x=problem.x,
        y=problem.y,
        info=info,
        posterior=posterior,
    )


def moment_matched(
    mu: Tensor, sigma: Tensor, num: int, generator: torch.Generator | None
) -> Tensor:
    """``(1, num, ...)`` draws ``mu + sigma * eps``, ``eps`` standardised over the draws, so the
    draws' mean and sd are exactly ``mu`` and ``sigma``.

    >>> draws = moment_matched(torch.zeros(2), torch.ones(2), 50, torch.Generator().manual_seed(0))
    >>> torch.allclose(draws.mean(1), torch.zeros(2), atol=1e-6)
    True
    >>> torch.allclose(draws.std(1), torch.ones(2))
    True
    """
    eps = torch.randn((num, *mu.shape), generator=generator, device=mu.device, dtype=torch.float64)
    eps = (eps - eps.mean(0)) / eps.std(0)
    return (mu + sigma * eps.to(mu.dtype)).unsqueeze(0)
