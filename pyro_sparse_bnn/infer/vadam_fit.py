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
  differentiates. For VOGN the same conditioned model is traced under ``torch.func.vmap`` over the
  rows of a minibatch (one row each), which gives per-example gradients in one vectorised call.
  That works because every latent site is conditioned, so nothing is sampled inside ``vmap``; a
  model with data-dependent Python control flow cannot be vmapped: pass
  ``per_example_grads=False`` for it.
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

import copy
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide.initialization import (
    InitMessenger,
    init_to_median,
    init_to_sample,
    init_to_value,
)
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import Gamma, Normal, biject_to

from ..distributions import ARDNormal
from ..isolation import check_seed, isolated
from ..priors import WEIGHT_TAG
from ..sites import unwrap
from ..validation import (
    check_bool,
    check_choice,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_xy,
)
from .loop import LoopOptions, TensorState, check_step
from .posterior import ARDPosterior
from .result import FitResult
from .vadam import Vadam, VadamARD, _check_betas

__all__ = ["VARIANTS", "fit_vadam"]

VARIANTS = ("gamma", "thesis")
"""VADAM-ARD updates (see :class:`~pyro_sparse_bnn.infer.vadam.VadamARD`)."""


def _is_latent(node: dict) -> bool:
    return node["type"] == "sample" and not site_is_subsample(node) and not node["is_observed"]


@dataclass
class _Sites:
    """What one trace of the model says about its sites (see the module docstring)."""

    weights: dict[str, Tensor]
    observed: str
    fixed: dict[str, Tensor]
    points: dict[str, tuple[Any, Tensor]]
    priors: dict[str, tuple[str, float | None]]


def _inspect(model: Callable, x: Tensor, y: Tensor) -> _Sites:
    """Trace ``model`` on a few rows and sort its sites; raise ``ValueError`` for what VADAM
    cannot fit."""
    rows = min(x.shape[0], 3)
    x, y = x[:rows], y[:rows]
    initial = getattr(model, "initial_weights", None)
    if callable(initial):
        start = {k: v.detach() for k, v in initial().items()}
        init = init_to_value(values=start, fallback=init_to_median(num_samples=15))
    else:
        init = init_to_sample
    with torch.no_grad():
        trace = poutine.trace(InitMessenger(init)(model)).get_trace(x, y)
    nodes = {name: n for name, n in trace.nodes.items() if n["type"] == "sample"}
    weights = {
        name: n["value"].detach().clone()
        for name, n in nodes.items()
        if n["infer"].get(WEIGHT_TAG) and not site_is_subsample(n)
    }
    if not weights:
        raise ValueError(
            "model has no weight sites: draw the weights with a prior from pyro_sparse_bnn.priors "
            "or tag their sample sites with infer={'psb_weight': True}"
        )
    for name, value in weights.items():
        if not value.dtype.is_floating_point:
            raise ValueError(f"weight site {name!r} must be real-valued, got dtype {value.dtype}")
    observed = [
        name
        for name, n in nodes.items()
        if n["is_observed"]
        and name not in weights
        and not site_is_subsample(n)
        and not n["infer"].get("_deterministic")
    ]
    if len(observed) != 1:
        raise ValueError(f"the model must have exactly one observed site, found {observed}")
    latent = {name: n for name, n in nodes.items() if _is_latent(n) and name not in weights}
    data_plates = {f.name for f in nodes[observed[0]]["cond_indep_stack"]}
    for name, n in latent.items():
        if not n["value"].dtype.is_floating_point:
            raise ValueError(f"VADAM needs continuous latent sites; {name!r} is discrete")
        if any(f.name in data_plates for f in n["cond_indep_stack"]):
            raise ValueError(
                f"VADAM cannot fit the per-row latent site {name!r} (it shares the data plate)"
            )
    leaves = {name: n["value"].detach().clone().requires_grad_() for name, n in latent.items()}
    with torch.enable_grad():
        trace = poutine.trace(poutine.condition(model, {**weights, **leaves})).get_trace(x, y)
        uses = _dependencies(_row_log_prob(trace.nodes[observed[0]], rows).sum(), leaves)
        centred = {k: v for k, v in weights.items() if not nodes[k]["infer"].get("_deterministic")}
        trace = poutine.trace(poutine.condition(model, {**centred, **leaves})).get_trace(x, y)
        priors = {name: _prior_family(trace.nodes[name], leaves, latent) for name in weights}
    points = {name: (latent[name]["fn"], leaves[name].detach()) for name in uses}
    fixed = {name: v.detach() for name, v in leaves.items() if name not in uses}
    return _Sites(weights, observed[0], fixed, points, priors)


def _dependencies(value: Tensor, leaves: dict[str, Tensor]) -> list[str]:
    """Names of the ``leaves`` that ``value`` depends on (through autograd)."""
    if not leaves or not value.requires_grad:
        return []
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True, retain_graph=True)
    return [name for name, g in zip(leaves, grads, strict=True) if g is not None]


def _prior_family(
    node: dict, leaves: dict[str, Tensor], latent: dict[str, dict]
) -> tuple[str, float | None]:
    """The family of a weight's prior: ``("normal", precision)`` for a fixed zero-mean Normal with
    one scale; ``("ard", None)`` for a Normal whose precision has a Gamma prior, centred or
    non-centred (``w = z / sqrt(psi)``), or an :class:`ARDNormal`; else ``("other", None)``."""
    fn = unwrap(node["fn"])
    if node["infer"].get("_deterministic"):
        deps = _dependencies(node["value"].sum(), leaves)
        standard = [d for d in deps if _is_standard_normal(latent[d], node["value"].shape)]
        rest = [d for d in deps if d not in standard]
        gamma = all(isinstance(unwrap(latent[d]["fn"]), Gamma) for d in rest)
        return ("ard", None) if len(standard) == 1 and rest and gamma else ("other", None)
    if isinstance(fn, ARDNormal):
        return "ard", None
    if not isinstance(fn, Normal):
        return "other", None
    deps = _dependencies(node["fn"].log_prob(node["value"]).sum(), leaves)
    if deps:
        gamma = all(isinstance(unwrap(latent[d]["fn"]), Gamma) for d in deps)
        return ("ard", None) if gamma else ("other", None)
    scale = fn.scale.detach().reshape(-1)
    if bool((fn.loc != 0).any()) or bool((scale != scale[0]).any()):
        return "other", None
    return "normal", float(scale[0]) ** -2


def _is_standard_normal(node: dict, shape: torch.Size) -> bool:
    fn = unwrap(node["fn"])
    return (
        isinstance(fn, Normal)
        and node["value"].shape == shape
        and bool((fn.loc == 0).all())
        and bool((fn.scale == 1).all())
    )


def _row_log_prob(node: dict, rows: int) -> Tensor:
    """The observed site's log-likelihood per row, shape ``(rows,)``."""
    lp = scale_and_mask(node["fn"].log_prob(node["value"]), node["scale"], node["mask"])
    if lp.dim() == 0 or lp.shape[0] != rows:
        raise ValueError(
            f"the observed site {node['name']!r} must sit inside a pyro.plate over the rows of X "
            f"(its log_prob must have shape ({rows}, ...)), got shape {tuple(lp.shape)}"
        )
    return lp.reshape(rows, -1).sum(1)


class _NLL:
    """Per-row NLL of the observed site with every latent site conditioned."""

    def __init__(self, model: Callable, sites: _Sites) -> None:
        self.model = model
        self.observed = sites.observed
        self.fixed = sites.fixed
        self.priors = {name: fn for name, (fn, _) in sites.points.items()}
        self.unconstrained = {
            name: nn.Parameter(biject_to(fn.support).inv(value).detach())
            for name, (fn, value) in sites.points.items()
        }

    def points(self) -> dict[str, Tensor]:
        """Current values of the point-estimated latent sites."""
        return {
            name: biject_to(self.priors[name].support)(u) for name, u in self.unconstrained.items()
        }

    def penalty(self, num_data: float) -> Tensor | float:
        """``-log prior / N`` of the point-estimated latent sites."""
        return sum(
            (-self.priors[name].log_prob(v).sum() / num_data for name, v in self.points().items()),
            0.0,
        )

    def __call__(self, weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        data = {**self.fixed, **self.points(), **weights}
        trace = poutine.trace(poutine.condition(self.model, data)).get_trace(x, y)
        return -_row_log_prob(trace.nodes[self.observed], x.shape[0])


def _warn_replaced(sites: _Sites, ard: bool, prior_precision: float | None) -> None:
    if ard:
        replaced = [n for n, (family, _) in sites.priors.items() if family != "ard"]
        message = (
            "VADAM-ARD replaces the model's prior on weight sites {} (not a Normal with a "
            "Gamma-distributed precision) by N(0, 1/psi_j), psi_j ~ Gamma(a0, b0), per weight"
        )
    else:
        replaced = [n for n, (family, _) in sites.priors.items() if family != "normal"]
        message = (
            "VADAM replaces the model's prior on weight sites {} (not a fixed zero-mean Normal) "
            "by its Gaussian N(0, 1/prior_precision)"
        )
    if replaced:
        warnings.warn(message.format(replaced), UserWarning, stacklevel=3)
    if not ard and prior_precision is not None:
        differs = [
            n
            for n, (family, lam) in sites.priors.items()
            if family == "normal" and abs(lam - prior_precision) > 1e-6 * lam
        ]
        if differs:
            warnings.warn(
                f"prior_precision={prior_precision} overrides the precision of the model's Normal "
                f"prior on weight sites {differs}",
                UserWarning,
                stacklevel=3,
            )


@isolated
def fit_vadam(
    model: Callable,
    X: Tensor,
    y: Tensor,
    *,
    ard: bool = False,
    variant: str = "gamma",
    epochs: int = 100,
    batch_size: int | None = None,
    lr: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    num_particles: int = 1,
    prior_precision: float | None = None,
    per_example_grads: bool | None = None,
    a0: float = 0.0,
    b0: float = 0.0,
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
        ard: learn one prior precision per weight and prune by ``|mu| / sigma``.
        variant: VADAM-ARD update, ``"gamma"`` (mean-field optimum, default) or ``"thesis"``.
        epochs: passes over the data; ``batch_size`` rows per step (default: full batch).
        lr, betas: step size and moment decay rates of the VADAM and Adam updates.
        num_particles: ``K``, weight samples (model evaluations) per step.
        prior_precision: ``lambda`` (the initial ``psi`` with ``ard=True``). ``None`` takes each
            site's precision from a fixed Normal prior in the model, else 1.
        per_example_grads: build ``s`` from per-example squared gradients (VOGN; correct at any
            batch size) instead of squared minibatch means (Vadam; correct at batch size 1, too
            wide posteriors for larger batches). ``None``: VOGN unless ``batch_size == 1``.
        a0, b0: Gamma shape and rate of each ARD precision (0, 0: the ARD limit). These are
            VADAM-ARD's own, not read from the model.
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
    >>> result = fit_vadam(bnn, X, y, epochs=300, lr=0.05, progress=False)
    >>> result.evaluate(X, y)["accuracy"] > 0.9
    True
    >>> sorted(result.info["sigma"])
    ['0.weight']
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    x, y = check_xy(X, y, model=model)
    check_seed(seed)
    if y is None:
        raise ValueError("y is required for fitting")
    check_bool(ard, "ard")
    check_choice(variant, "variant", VARIANTS)
    epochs = check_positive_int(epochs, "epochs")
    n = x.shape[0]
    batch_size = n if batch_size is None else min(check_positive_int(batch_size, "batch_size"), n)
    check_positive(lr, "lr")
    _check_betas(betas)
    check_positive_int(num_particles, "num_particles")
    if prior_precision is not None:
        check_positive(prior_precision, "prior_precision")
    if per_example_grads is None:
        per_example_grads = batch_size > 1
    check_bool(per_example_grads, "per_example_grads")
    check_nonnegative(a0, "a0")
    check_nonnegative(b0, "b0")
    check_positive(kl_weight, "kl_weight")
    if not ard:
        ard_only = {"variant": variant != "gamma", "a0": a0 != 0.0, "b0": b0 != 0.0}
        if any(ard_only.values()):
            names = ", ".join(k for k, v in ard_only.items() if v)
            raise ValueError(f"{names} only apply to VADAM-ARD: pass ard=True")
    if check_positive_int(num_posterior_samples, "num_posterior_samples") < 2:
        raise ValueError(f"num_posterior_samples must be at least 2, got {num_posterior_samples}")
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
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model)
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    sites = _inspect(model, x, y)
    _warn_replaced(sites, ard, prior_precision)
    nll = _NLL(model, sites)
    names = list(sites.weights)
    weights = {name: nn.Parameter(value) for name, value in sites.weights.items()}
    groups = []
    for name in names:
        family, lam = sites.priors[name]
        default = lam if family == "normal" else 1.0
        lam = default if prior_precision is None else float(prior_precision)
        groups.append({"params": [weights[name]], "prior_precision": lam})
    generator = torch.Generator(device=x.device).manual_seed(seed)
    tempered_n = n / kl_weight
    common = {
        "num_data": tempered_n,
        "lr": lr,
        "betas": tuple(betas),
        "num_particles": num_particles,
        "per_example_grads": per_example_grads,
        "generator": generator,
    }
    if ard:
        opt: Vadam = VadamARD(groups, a0=a0, b0=b0, variant=variant, **common)
    else:
        opt = Vadam(groups, **common)
    own = list(model.parameters()) if isinstance(model, nn.Module) else []
    point_params = own + list(nll.unconstrained.values())
    point_opt = torch.optim.Adam(point_params, lr=lr, betas=tuple(betas)) if point_params else None

    def closure(xb: Tensor, yb: Tensor) -> Tensor:
        loss = nll(weights, xb, yb).mean()
        (loss + nll.penalty(tempered_n)).backward()
        return loss

    def per_example(params: tuple[Tensor, ...], xi: Tensor, yi: Tensor) -> Tensor:
        return nll(dict(zip(names, params, strict=True)), xi[None], yi[None]).sum()

    order = torch.Generator().manual_seed(seed)

    def epoch(e: int) -> float:
        total = 0.0
        for idx in torch.randperm(n, generator=order).to(x.device).split(batch_size):
            xb, yb = x[idx], y[idx]
            if point_opt is not None:
                point_opt.zero_grad()
            if per_example_grads:
                loss = _vmapped_step(opt, per_example, (xb, yb))
                if point_opt is not None:
                    with opt.sampled_params(), torch.enable_grad():
                        objective = nll(weights, xb, yb).mean() + nll.penalty(tempered_n)
                        grads = torch.autograd.grad(objective, point_params, allow_unused=True)
                    for p, g in zip(point_params, grads, strict=True):
                        p.grad = g
            else:
                loss = opt.step(lambda xb=xb, yb=yb: closure(xb, yb))
                for p in point_params:
                    if p.grad is not None:
                        p.grad /= num_particles
            check_step(loss, point_params, e, "NLL")
            if point_opt is not None:
                point_opt.step()
            total += loss.item() * len(idx) / n
        return total

    parts = {"weights": TensorState(weights), "optimizer": opt}
    parts |= {"points": TensorState(dict(enumerate(point_params)))} if point_params else {}
    parts |= {"point_optimizer": point_opt} if point_opt is not None else {}
    run = loop.run(epoch, parts=parts, generators={"order": order, "noise": generator})
    run["seconds"] = time.perf_counter() - start

    with torch.no_grad():
        mu = {name: weights[name].detach().clone() for name in names}
        sigma = dict(zip(names, opt.posterior_scale(), strict=True))
        samples = {
            name: _moment_matched(mu[name], sigma[name], num_posterior_samples, generator)
            for name in names
        }
        points = {name: v.detach().clone() for name, v in nll.points().items()}
        for name, value in (sites.fixed | points).items():
            samples[name] = value.expand(1, num_posterior_samples, *value.shape).clone()
    if ard:
        assert isinstance(opt, VadamARD)
        precision: dict[str, Any] = dict(zip(names, opt.precision(), strict=True))
    else:
        precision = {
            name: g["prior_precision"] for name, g in zip(names, opt.param_groups, strict=True)
        }
    info = {
        "mu": mu,
        "sigma": sigma,
        "relevance": {name: mu[name].abs() / sigma[name] for name in names},
        "prior_precision": precision,
        "point_estimates": points,
        "ard": ard,
        "variant": variant if ard else None,
        "per_example_grads": per_example_grads,
        "kl_weight": kl_weight,
        **run,
        "optimizer": opt,
    }
    posterior = ARDPosterior({k: 1.0 / v for k, v in precision.items()}) if ard else None
    return FitResult(model, samples, method="vadam", x=x, y=y, info=info, posterior=posterior)


def _vmapped_step(opt: Vadam, closure: Callable[..., Tensor], batch: tuple[Tensor, ...]) -> Tensor:
    try:
        return opt.step(closure, batch)
    except RuntimeError as error:
        raise RuntimeError(
            "per-example gradients (VOGN) need a model that torch.func.vmap can run one row at a "
            "time; pass per_example_grads=False to use minibatch-mean gradients instead"
        ) from error


def _moment_matched(mu: Tensor, sigma: Tensor, num: int, generator: torch.Generator) -> Tensor:
    """``(1, num, ...)`` draws ``mu + sigma * eps``, ``eps`` standardised over the draws."""
    eps = torch.randn((num, *mu.shape), generator=generator, device=mu.device, dtype=torch.float64)
    eps = (eps - eps.mean(0)) / eps.std(0)
    return (mu + sigma * eps.to(mu.dtype)).unsqueeze(0)
