"""``fit_sgmcmc``: SGLD, SGHMC and the SSGL adaptive empirical Bayes samplers for any Pyro model.

The sampler moves the model's latent sites in an unconstrained space (``biject_to(support)``,
with the log-Jacobian added), so the scale sites of a shrinkage prior are sampled along with the
weights. The log density comes from the Pyro model itself: the model is run conditioned on the
current values of every chain and the ``log_prob`` of its sites is summed; the observed site's
minibatch sum is scaled by ``N / n``.

* ``prior="model"`` samples every latent site under the model's own prior.
* ``prior="ssgl"`` replaces the prior of the weight sites (those tagged ``psb_weight``) by the
  spike-and-slab Gaussian-Laplace prior of :class:`~pyro_sparse_bnn.infer.sgmcmc.SSGL`, whose
  latent state (inclusion probabilities ``rho``, rates ``delta``, scale ``sigma``) follows
  stochastic-approximation (``sa="sa"``) or EM (``sa="em"``) updates after every step. Latent
  sites that only shape the weights' prior (horseshoe scales, non-centred draws, ...) no longer
  matter and keep their starting values; other latent sites the likelihood uses are sampled under
  their model prior, except the Gaussian noise scale (``noise_site``), which is set to ``sigma``
  (the paper's regression form).

All chains run at once through ``torch.func.vmap`` of the one-chain log density (any model that
runs for one chain vectorises; one that vmap cannot run is run chain by chain). With
``compile=True`` the gradient is traced once into an ATen graph (``make_fx``), simplified, checked
against eager autograd at a second point and minibatch, and replayed without Pyro's per-step
tracing; a model that cannot be traced (Python branches on tensor values) runs eagerly.
See docs/sgmcmc.md.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyro
from torch import Tensor, nn

from ...isolation import check_seed, isolated
from ...validation import (
    as_tensor,
    check_choice,
    check_number,
    check_positive,
    check_positive_int,
    check_xy,
)
from ..result import FitResult
from .kernels import (
    EM_WEIGHTS,
    SGHMC,
    SGLD,
    SSGL_SA_WEIGHTS,
    ConstantSchedule,
    LangevinIntegrator,
    RMSPreconditioner,
    Schedule,
    SparseRateSchedule,
)
from .model import _SSGL_OPTIONS, PRIORS, PRUNING, SA_MODES, SAMPLERS, _layout
from .run import _Run

# --------------------------------------------------------------------------------------------
# Options


def _check_schedule(value: Any, name: str) -> Schedule:
    if callable(value):
        return value
    return ConstantSchedule(check_positive(value, name))


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
    prior: str = "model",
    sa: str | None = None,
    step_size: float | Schedule | None = None,
    num_samples: int = 1000,
    warmup: int = 1000,
    thin: int = 1,
    batch_size: int | None = None,
    num_chains: int = 4,
    temperature: float = 1.0,
    friction: float | None = None,
    preconditioner: str | RMSPreconditioner | None = None,
    ssgl_options: Mapping[str, float] | None = None,
    sa_weights: float | Schedule | None = None,
    noise_site: str | None = "auto",
    pruning: str | None = None,
    sparsity: float = 0.9,
    sparsity_damping: float = 0.99,
    sparsity_period: float | None = None,
    prune_every: int = 10,
    inclusion_threshold: float = 0.5,
    init: Mapping[str, Any] | None = None,
    param_lr: float = 1e-2,
    compile: bool = True,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
) -> FitResult:
    """Sample the posterior of ``model`` with stochastic-gradient Langevin dynamics.

    Args:
        sampler: ``"sgld"`` or ``"sghmc"`` (SGD-with-momentum form: ``step_size`` is the
            learning rate, ``friction`` is ``1 - momentum``, default 0.1).
        prior: ``"model"`` (the model's own prior on every latent site) or ``"ssgl"`` (the
            SSGL prior on the weight sites; see the module docstring).
        sa: ``"sa"`` (stochastic approximation, weights ``sa_weights``, default
            ``min(0.1, 1000 / (100 + k) ** 0.7)``) or ``"em"`` (weight 1); ``prior="ssgl"`` only.
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
        ssgl_options: SSGL hyperparameters ``v0, v1, nu, lam, a, b, delta, sigma`` (defaults
            0.1, 10, 1, 1, 1, p per weight site, 0.5, 1). Each weight site has its own ``delta``;
            ``sigma`` is shared.
        noise_site: the latent site holding the Gaussian noise standard deviation, set to the
            SSGL ``sigma`` (regression form); ``"auto"`` picks ``"noise"`` when the model has it
            and a Normal observation model; ``None`` uses the classification form.
        pruning: ``None``; ``"magnitude"`` zeroes the ``s_k`` smallest weights of each weight
            site, ``s_k = sparsity * (1 - sparsity_damping ** (k / sparsity_period))`` refreshed
            every ``prune_every`` iterations (default period: ``s_k`` reaches 99 % of
            ``sparsity`` at the end of warm-up); ``"inclusion"`` (``prior="ssgl"``) zeroes, from
            the end of warm-up on, the weights with ``rho <= inclusion_threshold`` in every
            chain (a weight that any chain still includes is kept in all of them); in the
            classification form only as many as keep the PSIS-LOO predictive of the last
            quarter of warm-up within the default budget of ``FitResult.masks``.
        init: starting values of latent sites (constrained), shared by all chains; others start
            at the network's initial weights (SparseBNN) or the prior median.
        param_lr: Adam learning rate for the model's non-sample parameters (e.g. plain network
            biases); they are fitted during warm-up and fixed afterwards.
        compile: trace the gradient into an ATen graph once (checked; eager fallback).
        seed: seeds the starting values, the minibatches and the Langevin noise.
        callback: ``callback(iteration, lp)`` after each iteration with the chain-mean log
            density estimate; returning ``True`` stops (at least one draw must be kept).

    Returns a :class:`~pyro_sparse_bnn.FitResult` with ``(chain, draw, ...)`` draws of every
    latent and deterministic site (SSGL: the sites that keep their starting values are stored as
    constant draws and listed in ``info["fixed_sites"]``), ``sample_stats`` ``lp`` (the
    minibatch log-density estimate the chain follows, SSGL penalty excluded) and ``step_size``
    (and ``ssgl_delta``, ``ssgl_sigma``), and ``info`` with ``seconds``, ``compiled``,
    ``vectorised`` and, for SSGL, the final ``delta``, ``sigma`` (per chain), ``rho`` per weight
    site ``(chain, ...)`` and ``inclusion`` (chain-averaged ``rho > inclusion_threshold``).

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
    check_choice(prior, "prior", PRIORS)
    if prior == "ssgl":
        check_choice(sa, "sa", SA_MODES)
    elif sa is not None:
        raise ValueError(
            f"sa={sa!r} needs prior='ssgl' (the SA/EM updates belong to the SSGL prior)"
        )
    num_samples = check_number(num_samples, "num_samples", integer=True, low=1)
    warmup = check_number(warmup, "warmup", integer=True, low=0)
    thin = check_number(thin, "thin", integer=True, low=1)
    num_chains = check_number(num_chains, "num_chains", integer=True, low=1)
    batch_size = n if batch_size is None else min(check_positive_int(batch_size, "batch_size"), n)
    if step_size is None:
        step_size = (0.1 if sampler == "sgld" else 0.01) / n
    step_size = _check_schedule(step_size, "step_size")
    check_positive(temperature, "temperature")
    integrator = _integrator(sampler, step_size, temperature, friction, preconditioner, warmup)
    ssgl_options = dict(ssgl_options or {})
    unknown = sorted(set(ssgl_options) - set(_SSGL_OPTIONS))
    if unknown:
        raise ValueError(f"ssgl_options has unknown keys {unknown}; allowed: {list(_SSGL_OPTIONS)}")
    if ssgl_options and prior != "ssgl":
        raise ValueError("ssgl_options need prior='ssgl'")
    if sa_weights is not None and prior != "ssgl":
        raise ValueError("sa_weights need prior='ssgl'")
    omega = (SSGL_SA_WEIGHTS if sa == "sa" else EM_WEIGHTS) if sa_weights is None else None
    omega = omega or _check_schedule(sa_weights, "sa_weights")
    if noise_site is not None and not isinstance(noise_site, str):
        raise TypeError(f"noise_site must be a site name, 'auto' or None, got {noise_site!r}")
    if pruning is not None:
        check_choice(pruning, "pruning", PRUNING)
        if pruning == "inclusion" and prior != "ssgl":
            raise ValueError(
                "pruning='inclusion' uses the SSGL inclusion probabilities: prior='ssgl'"
            )
        if pruning == "inclusion" and warmup == 0:
            raise ValueError("pruning='inclusion' prunes at the end of warm-up: warmup must be > 0")
    check_number(sparsity, "sparsity", low=0.0, high=1.0, high_open=True)
    check_number(sparsity_damping, "sparsity_damping", low=0, high=1, low_open=True, high_open=True)
    check_number(inclusion_threshold, "inclusion_threshold", low=0.0, high=1.0, high_open=True)
    prune_every = check_number(prune_every, "prune_every", integer=True, low=1)
    if sparsity_period is None:
        sparsity_period = max(warmup, 1) * math.log(sparsity_damping) / math.log(0.01)
    check_positive(sparsity_period, "sparsity_period")
    check_positive(param_lr, "param_lr")
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be a bool, got {compile!r}")
    check_seed(seed)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    init = {k: as_tensor(v, f"init[{k!r}]").to(x.device, x.dtype) for k, v in (init or {}).items()}

    if isinstance(model, nn.Module):
        model = copy.deepcopy(model).to(device=x.device, dtype=x.dtype)
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    layout = _layout(model, x, y, prior, noise_site, init)
    if pruning == "magnitude":
        direct = [k for k in layout.weights if k in layout.sampled]
        if len(direct) != len(layout.weights):
            raise ValueError(
                "pruning needs the weight sites to be sampled directly: use centred priors "
                "(centered=True) or prior='ssgl'"
            )
    method = sampler if prior == "model" else f"{sampler}_{sa}"
    sampler_run = _Run(
        model,
        layout,
        x,
        y,
        integrator,
        num_chains,
        batch_size,
        seed,
        ssgl_options if prior == "ssgl" else None,
        param_lr,
    )
    sampler_run.setup(compile)
    schedule = None
    if pruning == "magnitude":
        schedule = SparseRateSchedule(sparsity, sparsity_damping, sparsity_period)
    draws, stats, stopped_at = sampler_run.loop(
        warmup,
        num_samples,
        thin,
        omega,
        pruning,
        schedule,
        prune_every,
        inclusion_threshold,
        progress,
        callback,
        method,
    )
    seconds = time.perf_counter() - start
    info = {
        "seconds": seconds,
        "sampler": sampler,
        "prior": prior,
        "sa": sa,
        "num_chains": num_chains,
        "iterations": stopped_at,
        "batch_size": batch_size,
        "compiled": sampler_run.gradient.graph is not None,
        "compile_error": sampler_run.compile_error,
        "vectorised": sampler_run.density.vectorised,
        "point_parameters": len(sampler_run.params),
        "fixed_sites": list(layout.fixed),
        "noise_site": layout.noise,
    }
    info |= sampler_run.ssgl_info(inclusion_threshold)
    if sampler_run.masks is not None:
        info["pruning_masks"] = sampler_run.masks
    return FitResult(model, draws, method=method, x=x, y=y, info=info, sample_stats=stats)


# --------------------------------------------------------------------------------------------
# Method names for ``fit``


SGMCMC_METHODS: dict[str, dict[str, str | None]] = {
    f"{sampler}{suffix}": {"sampler": sampler, "prior": prior, "sa": sa}
    for sampler in SAMPLERS
    for suffix, prior, sa in (("", "model", None), ("_sa", "ssgl", "sa"), ("_em", "ssgl", "em"))
}
"""``fit`` method names and the :func:`fit_sgmcmc` options each fixes: plain SGLD/SGHMC under the
model's prior, and SSGL with SA or EM."""
