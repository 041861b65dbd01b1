"""``fit_sgmcmc``: SGLD, SGHMC and the SSGL adaptive empirical Bayes samplers for any Pyro model.

The sampler moves the model's latent sites in an unconstrained space (``biject_to(support)``,
with the log-Jacobian added), so the scale sites of a shrinkage prior are sampled along with the
weights. The log density comes from the Pyro model itself: the model is run conditioned on the
current values of every chain and the ``log_prob`` of its sites is summed; the observed site's
minibatch sum is scaled by ``N / n``.

* ``prior="model"`` samples every latent site under the model's own prior.
* ``prior=SSGLPrior(...)`` replaces the prior of the weight sites (tagged ``psb_weight``) by the
  spike-and-slab Gaussian-Laplace prior of :class:`~pyro_sparse_bnn.infer.sgmcmc.SSGL`, whose
  latent state (inclusion probabilities ``rho``, rates ``delta``, scale ``sigma``) follows
  stochastic-approximation (``update="sa"``) or EM (``update="em"``) updates after every step.
  Latent sites that only shape the weights' prior (horseshoe scales, non-centred draws, ...) no
  longer matter and keep their starting values; other latent sites the likelihood uses are
  sampled under their model prior, except the Gaussian noise scale (``noise_site``), which is
  set to ``sigma`` (the paper's regression form).

All chains run at once through ``torch.func.vmap`` of the one-chain log density (any model that
runs for one chain vectorises; one that vmap cannot run is run chain by chain). With
``graph="traced"`` (the default) the gradient is traced once into an ATen graph (``make_fx``),
simplified, checked against eager autograd at a second point and minibatch, and replayed without
Pyro's per-step tracing; a model that cannot be traced (Python branches on tensor values) runs
eagerly.
See docs/sgmcmc.md.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import pyro
from torch import Tensor, nn

from ...dtypes import float_dtype
from ...io import check_writable
from ...isolation import check_seed, isolated, loop_threads
from ...validation import (
    as_tensor,
    check_choice,
    check_graph,
    check_number,
    check_positive,
    check_positive_int,
    check_xy,
)
from ..loop import load_run, run_state, save_run
from ..result import FitResult
from .kernels import (
    SGHMC,
    SGLD,
    LangevinIntegrator,
    RMSPreconditioner,
    Schedule,
    as_schedule,
)
from .model import SAMPLERS, _layout
from .options import InclusionPruning, MagnitudePruning, SSGLPrior
from .run import Chains, Plan, _Run

# --------------------------------------------------------------------------------------------
# Options


def _integrator(
    sampler: str,
    step_size: float | Schedule,
    temperature: float,
    friction: float | None,
    preconditioner: str | RMSPreconditioner | None,
    warmup: int,
) -> LangevinIntegrator:
    if preconditioner == "rmsprop":
        preconditioner = RMSPreconditioner(adapt_until=warmup or None)
    elif preconditioner is not None and not isinstance(preconditioner, RMSPreconditioner):
        raise ValueError(
            "preconditioner must be None, 'rmsprop' or an RMSPreconditioner, "
            f"got {preconditioner!r}"
        )
    if sampler == "sgld":
        if friction is not None:
            raise ValueError("friction applies to sampler='sghmc' only")
        return SGLD(step_size, temperature=temperature, preconditioner=preconditioner)
    friction = 0.1 if friction is None else float(check_number(friction, "friction", low=0, high=1))
    if friction == 0.0:
        raise ValueError("friction must be in (0, 1], got 0")
    return SGHMC(step_size, friction, temperature=temperature, preconditioner=preconditioner)


# --------------------------------------------------------------------------------------------
# The sampler


@isolated
def fit_sgmcmc(
    model: Callable,
    X: Tensor,
    y: Tensor,
    *,
    sampler: str = "sgld",
    prior: str | SSGLPrior = "model",
    step_size: float | Schedule | None = None,
    num_samples: int = 1000,
    warmup: int = 1000,
    thin: int = 1,
    batch_size: int | None = None,
    num_chains: int = 4,
    temperature: float = 1.0,
    friction: float | None = None,
    preconditioner: str | RMSPreconditioner | None = None,
    pruning: MagnitudePruning | InclusionPruning | None = None,
    init: Mapping[str, Any] | None = None,
    param_lr: float = 1e-2,
    graph: str = "traced",
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: str | os.PathLike | None = None,
) -> FitResult:
    """Sample the posterior of ``model`` with stochastic-gradient Langevin dynamics.

    Args:
        sampler: ``"sgld"`` or ``"sghmc"`` (SGD-with-momentum form: ``step_size`` is the
            learning rate, ``friction`` is ``1 - momentum``, default 0.1).
        prior: ``"model"`` (the model's own prior on every latent site) or an
            :class:`~pyro_sparse_bnn.infer.sgmcmc.SSGLPrior` (the SSGL prior on the weight
            sites, its hyperparameters, SA or EM update and noise site; see the module
            docstring).
        step_size: a number or a schedule ``k -> eps`` (``k`` from 1). Default ``0.1 / N`` for
            SGLD (the SSGL paper's 1e-3 at N = 100) and ``0.01 / N`` for SGHMC; tune it.
        num_samples, warmup, thin: ``warmup + num_samples * thin`` iterations; every ``thin``-th
            after warm-up is kept, per chain.
        batch_size: rows per gradient (drawn without replacement each step; default all ``N``);
            the minibatch log-likelihood is scaled by ``N / batch_size``.
        num_chains: independent chains, vectorised when the model allows.
        temperature: ``T``; the chains target ``posterior ** (1 / T)`` (noise variance
            ``2 eps T``).
        preconditioner: ``None``, ``"rmsprop"`` (pSGLD, adapting during warm-up, then frozen)
            or an :class:`~pyro_sparse_bnn.infer.sgmcmc.RMSPreconditioner`.
        pruning: ``None``, a :class:`~pyro_sparse_bnn.infer.sgmcmc.MagnitudePruning` or (with
            an ``SSGLPrior``) an :class:`~pyro_sparse_bnn.infer.sgmcmc.InclusionPruning`.
        init: starting values of latent sites (constrained), shared by all chains; others start
            at the network's initial weights (SparseBNN) or the prior median.
        param_lr: Adam learning rate for the model's non-sample parameters (e.g. plain network
            biases); they are fitted during warm-up and fixed afterwards.
        graph: ``"traced"``: trace the gradient into an ATen graph once (checked; eager
            fallback), or ``"eager"`` (:data:`~pyro_sparse_bnn.validation.GRAPH_MODES`;
            ``"compiled"`` is not offered here).
        seed: seeds the starting values, the minibatches and the Langevin noise.
        callback: ``callback(iteration, lp)`` after each iteration with the chain-mean log
            density estimate; returning ``True`` stops (at least one draw must be kept).
        checkpoint, checkpoint_every, resume: write the run's state (chains, SSGL state, point
            parameters, masks, generator, draws so far) atomically every ``checkpoint_every``
            iterations; continue from such a file to exactly the draws of an uninterrupted run.

    Returns a :class:`~pyro_sparse_bnn.FitResult` with ``(chain, draw, ...)`` draws of every
    latent and deterministic site (SSGL: the sites that keep their starting values are stored as
    constant draws and listed in ``info["fixed_sites"]``), ``sample_stats`` ``lp`` (the
    minibatch log-density estimate the chain follows, SSGL penalty excluded) and ``step_size``
    (and ``ssgl_delta``, ``ssgl_sigma``), and ``info`` with ``seconds``, ``traced``,
    ``vectorised`` and, for SSGL, the final ``delta``, ``sigma`` (per chain), ``rho`` per weight
    site ``(chain, ...)`` and ``inclusion`` (chain-averaged ``rho`` above the inclusion threshold,
    0.5 unless ``InclusionPruning`` sets it).

    >>> import pyro_sparse_bnn as psb
    >>> X, y = psb.datasets.load("iris")
    >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    >>> fit = fit_sgmcmc(bnn, X, y, num_samples=20, warmup=20, num_chains=2, progress=False)
    >>> fit.samples["0.weight"].shape
    torch.Size([2, 20, 3, 4])
    """
    x, y = check_xy(X, y, model=model)
    if y is None:
        raise ValueError("y is required for fitting")
    x, y = x.contiguous(), y.contiguous()  # row gathers and matrix products want row-major data
    n = x.shape[0]
    check_choice(sampler, "sampler", SAMPLERS)
    if prior != "model" and not isinstance(prior, SSGLPrior):
        raise TypeError(f"prior must be 'model' or an SSGLPrior, got {prior!r}")
    ssgl = prior if isinstance(prior, SSGLPrior) else None
    num_samples = check_number(num_samples, "num_samples", integer=True, low=1)
    warmup = check_number(warmup, "warmup", integer=True, low=0)
    thin = check_number(thin, "thin", integer=True, low=1)
    num_chains = check_number(num_chains, "num_chains", integer=True, low=1)
    batch_size = n if batch_size is None else min(check_positive_int(batch_size, "batch_size"), n)
    if step_size is None:
        step_size = (0.1 if sampler == "sgld" else 0.01) / n
    step_size = as_schedule(step_size, "step_size")
    check_positive(temperature, "temperature")
    integrator = _integrator(sampler, step_size, temperature, friction, preconditioner, warmup)
    if not isinstance(pruning, MagnitudePruning | InclusionPruning | None):
        raise TypeError(
            f"pruning must be None, a MagnitudePruning or an InclusionPruning, got {pruning!r}"
        )
    if isinstance(pruning, InclusionPruning):
        if ssgl is None:
            raise ValueError(
                "InclusionPruning uses the SSGL inclusion probabilities: pass an SSGLPrior"
            )
        if warmup == 0:
            raise ValueError("InclusionPruning prunes at the end of warm-up: warmup must be > 0")
    check_positive(param_lr, "param_lr")
    check_graph(graph, ("eager", "traced"))
    check_seed(seed)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    check_positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint is not None:
        check_writable(checkpoint, "checkpoint")
    saved = None if resume is None else load_run(resume, "sgmcmc")
    dtype = float_dtype(x)
    init = {k: as_tensor(v, f"init[{k!r}]").to(x.device, dtype) for k, v in (init or {}).items()}

    if isinstance(model, nn.Module):
        model = copy.deepcopy(model).to(device=x.device, dtype=float_dtype(x))
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    layout = _layout(model, x, y, ssgl, init)
    if isinstance(pruning, MagnitudePruning):
        direct = [k for k in layout.weights if k in layout.sampled]
        if len(direct) != len(layout.weights):
            raise ValueError(
                "pruning needs the weight sites to be sampled directly: use centred priors "
                "(centered=True) or an SSGLPrior"
            )
    method = sampler if ssgl is None else f"{sampler}_{ssgl.update}"
    chains = Chains(num_chains, batch_size, seed, param_lr)
    sampler_run = _Run(model, layout, x, y, integrator, chains, ssgl)
    sampler_run.setup(trace=graph == "traced")
    signature = {
        "method": method, "num_chains": num_chains, "batch_size": batch_size, "seed": seed,
        "warmup": warmup, "num_samples": num_samples, "thin": thin,
        "sites": {k: list(layout.shapes[k]) for k in layout.sampled},
    }  # fmt: skip
    save = None if checkpoint is None else partial(save_run, checkpoint, "sgmcmc", signature)
    with loop_threads(sampler_run.work):  # one thread for a small model; the caller's restored
        draws, stats, stopped_at = sampler_run.loop(
            Plan(warmup, num_samples, thin), pruning, progress, callback, method,
            checkpoint=save, checkpoint_every=checkpoint_every,
            resume=None if saved is None else run_state(saved, signature),
        )  # fmt: skip
    seconds = time.perf_counter() - start
    info = {
        "seconds": seconds,
        "sampler": sampler,
        "prior": prior,
        "num_chains": num_chains,
        "iterations": stopped_at,
        "batch_size": batch_size,
        "traced": sampler_run.gradient.graph is not None,
        "trace_error": sampler_run.trace_error,
        "vectorised": sampler_run.gradient.chains.vectorised,
        "point_parameters": len(sampler_run.params),
        "fixed_sites": list(layout.fixed),
        "noise_site": layout.noise,
    }
    info |= sampler_run.ssgl_info(getattr(pruning, "threshold", 0.5))
    if sampler_run.masks is not None:
        info["masks"] = sampler_run.masks
    return FitResult(model, draws, method=method, x=x, y=y, info=info, sample_stats=stats)


# --------------------------------------------------------------------------------------------
# Method names for ``fit``


SGMCMC_METHODS: dict[str, dict[str, Any]] = {
    name: fixed
    for sampler in SAMPLERS
    for name, fixed in (
        (sampler, {"sampler": sampler}),
        (f"{sampler}_sa", {"sampler": sampler, "prior": SSGLPrior("sa")}),
        (f"{sampler}_em", {"sampler": sampler, "prior": SSGLPrior("em")}),
    )
}
"""``fit`` method names and the :func:`fit_sgmcmc` options each fixes: SGLD/SGHMC (under the
model's prior unless ``prior=SSGLPrior(...)`` is given) and the shorthands for the default SSGL
prior with SA or EM updates."""
