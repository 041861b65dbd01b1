"""Stochastic variational inference with minibatches, KL warm-up and a torch optimiser."""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta
from torch import Tensor, nn

from ..dtypes import float_dtype
from ..elbo import MeanFieldELBO
from ..guides import draw, make_guide
from ..isolation import check_seed, isolated
from ..lrt import LocalReparameterizationELBO
from ..priors import Centring, set_centring
from ..validation import (
    check_choice,
    check_graph,
    check_positive,
    check_positive_int,
    check_xy,
)
from .loop import LR_SCHEDULES, LoopOptions, check_step, lr_scheduler
from .loop import kl_weight as warmup_weight  # `kl_weight` is fit_svi's tempering option
from .result import FitResult
from .traced_elbo import TracedELBO

__all__ = ["check_svi_options", "fit_svi"]

TRACE_FROM_STEPS = 200
"""``fit_svi(graph=None)`` traces fits of at least this many steps (docs/architecture.md)."""

ELBOS = {
    "mean_field": MeanFieldELBO,
    "trace": Trace_ELBO,
    "lrt": LocalReparameterizationELBO,
}


def check_svi_options(
    *,
    epochs: int,
    lr: float,
    lr_schedule: str,
    num_particles: int,
    elbo: str,
    kl_warmup: int | None,
    num_posterior_samples: int = 1,
    guide: Any = None,
) -> int:
    """Validate the optimisation options shared by the SVI fits (in memory, streaming, Lightning)
    and return the KL warm-up in epochs (``None``: a third of the epochs, none for a point
    estimate, ``guide="map"``); warn when it outlasts the fit."""
    check_positive_int(epochs, "epochs")
    check_positive(lr, "lr")
    check_choice(lr_schedule, "lr_schedule", tuple(LR_SCHEDULES))
    check_positive_int(num_particles, "num_particles")
    check_choice(elbo, "elbo", tuple(ELBOS))
    if kl_warmup is None:
        point = guide == "map" or isinstance(guide, AutoDelta)
        kl_warmup = 0 if point else epochs // 3
    if isinstance(kl_warmup, bool) or not isinstance(kl_warmup, int) or kl_warmup < 0:
        raise ValueError(f"kl_warmup must be a non-negative int or None, got {kl_warmup!r}")
    if kl_warmup > epochs:
        warnings.warn(
            f"kl_warmup={kl_warmup} is longer than the {epochs} epochs: the fit ends before the "
            "KL reaches its full weight, so the result is not the posterior (lower kl_warmup)",
            stacklevel=3,
        )
    check_positive_int(num_posterior_samples, "num_posterior_samples")
    return kl_warmup


@isolated
def fit_svi(
    model: Callable,
    X: Tensor,
    y: Tensor,
    *,
    guide: str | Callable = "mean_field",
    guide_options: dict[str, Any] | None = None,
    epochs: int = 100,
    batch_size: int | None = None,
    lr: float = 1e-2,
    lr_schedule: str = "constant",
    num_particles: int = 1,
    elbo: str = "mean_field",
    kl_warmup: int | None = None,
    kl_weight: float = 1.0,
    num_posterior_samples: int = 200,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: str | os.PathLike | None = None,
    graph: str | None = None,
    centered: Centring | None = None,
) -> FitResult:
    """Fit ``model`` by maximising the ELBO with Adam over minibatches.

    Args:
        guide: ``"mean_field"``, ``"map"`` or any Pyro guide callable.
        epochs: passes over the data; ``batch_size`` rows per step (default: full batch).
        lr_schedule: ``"constant"`` or ``"linear_decay"`` (constant for the first half of the
            epochs, then linearly to 0: the sparse variational dropout recipe).
        elbo: ``"mean_field"`` (analytic KL where registered), ``"trace"`` (Monte Carlo) or
            ``"lrt"`` (local reparameterisation: pre-activations sampled per example, analytic KLs).
        kl_warmup: epochs over which the KL weight rises linearly from ``1/kl_warmup`` to 1;
            ``None`` (default): a third of the epochs (none for ``guide="map"``), 0: none. The
            last epochs run at full weight, so the fit ends on the ELBO. Without a warm-up,
            shrinkage priors can settle in the optimum that explains all data as noise (a
            mean-field horseshoe with p > n: every coefficient at zero).
        kl_weight: ``beta`` of the tempered objective ``E_q[NLL] + beta KL(q || prior)`` (the
            warm-up scales it too), as in ``vadam`` and ``ivon``: its optimum is
            ``q ∝ prior * likelihood^(1 / beta)``. 1 (the default) is the ELBO; above 1 the
            prior weighs more (sparser fits, the role of L1's ``lambda``). The loss history is
            then the tempered objective.
        num_posterior_samples: guide draws stored in the result.
        progress, callback, checkpoint, checkpoint_every, resume: the training loop's
            (:class:`~pyro_sparse_bnn.infer.loop.LoopOptions`): a progress bar, a per-epoch
            ``callback(epoch, loss)`` that stops the fit by returning ``True``, atomic
            checkpoints and exact resume.
        graph: ``"eager"`` runs the model and guide under Pyro's handlers each step; ``"traced"``
            replays each step from a graph of tensor operations traced once per minibatch shape
            (:class:`~pyro_sparse_bnn.infer.traced_elbo.TracedELBO`): the same loss and gradients,
            2-4x faster steps (``benchmarks/speed_svi.py``), Adam fused (one kernel per parameter);
            steps that cannot be traced run eagerly with a warning. ``"compiled"`` also compiles
            each graph with ``torch.compile`` (Inductor fuses the elementwise work; costs seconds to
            a minute per minibatch shape, worth it for long fits of large layers). ``None``
            (default): for a fit of at least :data:`TRACE_FROM_STEPS` optimiser steps (tracing and
            checking a graph costs the time of many eager steps) the step is traced, timed against
            the eager step on its first few steps, and replayed from then on unless eager was at
            least 20 % faster (``TracedELBO``'s ``"auto"``); shorter fits run eagerly.
            ``result.info["graph"]`` says which ran. Every method's ``graph``:
            :data:`~pyro_sparse_bnn.validation.GRAPH_MODES`.

        centered: ``None`` keeps each prior's own parameterisation; ``True``, ``False`` or
            ``"learned"`` sets it on every scale-mixture prior of the fitted copy of an
            ``nn.Module`` model. ``"learned"`` learns per weight how far to centre it
            (:class:`~pyro_sparse_bnn.priors.Prior`; Gorinova, Moore & Hoffman 2020): on the
            validation panel (docs/panel.md) it fixes most of mean-field SVI's horseshoe fits,
            but with p = 1000 and n = 100 it can settle with every weight at zero
            (docs/choosing-an-inference-method.md).

    The loss is the negative ELBO per training row; the history is in ``result.info["history"]``.

    >>> import pyro_sparse_bnn as psb
    >>> X, y = psb.datasets.load("iris")
    >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    >>> result = fit_svi(bnn, X, y, epochs=300, lr=0.05, progress=False)
    >>> result.info["epochs_run"], result.info["history"][-1] < result.info["history"][0]
    (300, True)
    >>> result.evaluate(X, y)["accuracy"] > 0.9
    True
    """
    x, y = check_xy(X, y, model=model)
    if y is None:
        raise ValueError("y is required for fitting")
    n = x.shape[0]
    batch_size = n if batch_size is None else min(check_positive_int(batch_size, "batch_size"), n)
    kl_warmup = check_svi_options(
        epochs=epochs,
        lr=lr,
        lr_schedule=lr_schedule,
        num_particles=num_particles,
        elbo=elbo,
        kl_warmup=kl_warmup,
        num_posterior_samples=num_posterior_samples,
        guide=guide,
    )
    check_positive(kl_weight, "kl_weight")
    check_seed(seed)
    if graph is None:
        steps = epochs * -(-n // batch_size)
        chosen = "auto" if steps >= TRACE_FROM_STEPS else "eager"
    else:
        chosen = check_graph(graph)
    loop = LoopOptions(
        epochs,
        progress,
        callback,
        checkpoint,
        checkpoint_every,
        resume,
        desc="svi",
        loss_name="ELBO",
    )
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model).to(device=x.device, dtype=float_dtype(x))
    if centered is not None:
        set_centring(model, centered)
    pyro.set_rng_seed(seed)
    guide = make_guide(guide, model, **(guide_options or {}))
    start = time.perf_counter()
    guide(x[:batch_size], y[:batch_size])
    params = list({id(p): p for m in (model, guide) for p in _parameters(m)}.values())
    optimizer = torch.optim.Adam(params, lr=lr, fused=chosen != "eager")  # one kernel per parameter
    scheduler = lr_scheduler(optimizer, lr_schedule, epochs)
    loss_fn = ELBOS[elbo](num_particles=num_particles).differentiable_loss
    step = TracedELBO(loss_fn, model, guide, params, graph=chosen)
    order = torch.Generator().manual_seed(seed)

    def epoch(e: int) -> float:
        beta = kl_weight * warmup_weight(e, kl_warmup)
        total = 0.0
        for idx in torch.randperm(n, generator=order).to(x.device).split(batch_size):
            loss = step(x[idx], y[idx], observed=1 / len(idx), latent=beta / n)  # per row
            check_step(loss, params, e, "ELBO")
            optimizer.step()
            total += loss.item() * len(idx) / n
        scheduler.step()
        return total

    parts = {"model": model, "guide": guide, "optimizer": optimizer, "scheduler": scheduler}
    info = loop.run(epoch, parts=parts, generators={"order": order})
    info["seconds"] = time.perf_counter() - start
    info["kl_weight"] = kl_weight
    info["graph"] = ("traced" if step.replays else "eager") if chosen == "auto" else chosen
    draws = draw(model, guide, x[:1], num_posterior_samples)
    return FitResult(model, draws, method="svi", x=x, y=y, info=info, guide=guide)


def _parameters(module: Any) -> list[nn.Parameter]:
    return list(module.parameters()) if isinstance(module, nn.Module) else []
