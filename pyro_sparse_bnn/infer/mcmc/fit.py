"""``fit_mcmc``: NUTS and HMC for sparse BNNs and any Pyro model ``model(x, y=None)``.

Two backends run the same algorithm (Pyro's multinomial NUTS with Stan's warm-up):

* ``backend="fast"`` (default) lays the latent sites out in one unconstrained vector, traces the
  batched potential and its gradient once into an ATen graph (:mod:`.potential`) and runs all
  chains in lockstep through one batched evaluation per leapfrog step (:mod:`.sampler`).
  ``graph="compiled"`` also fuses the leapfrog steps with their bookkeeping through Inductor
  (:mod:`.compiled`: seconds of compilation that pay off on long runs), which the default
  ``graph=None`` switches to once a run is long enough;
  ``graph="eager"`` evaluates the potential under Pyro's handlers instead of the traced graph.
* ``backend="pyro"`` runs Pyro's own :class:`~pyro.infer.NUTS`/:class:`~pyro.infer.HMC` kernels,
  chain after chain, from the same starting values (``graph="compiled"`` maps to Pyro's
  ``jit_compile``; the other modes run Pyro's kernels as they are).

Deterministic sites (the weights of non-centred priors) are not sampled; they are recomputed by
replaying the model on every draw, so the result holds every latent and deterministic site.

>>> import pyro_sparse_bnn as psb
>>> X, y = psb.datasets.load("iris")
>>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
>>> fit = psb.fit(bnn, X, y, method="nuts", num_samples=20, warmup=20, num_chains=2,
...               progress=False)
>>> tuple(fit.samples["0.weight"].shape), tuple(fit.sample_stats["diverging"].shape)
((2, 20, 3, 4), (2, 20))
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import HMC, MCMC, NUTS
from pyro.infer.autoguide.initialization import (
    InitMessenger,
    init_to_feasible,
    init_to_median,
    init_to_uniform,
    init_to_value,
)
from torch import Tensor, nn

from ...dtypes import float_dtype
from ...io import check_writable
from ...isolation import check_seed, isolated
from ...validation import check_choice, check_graph, check_positive, check_positive_int, check_xy
from ..loop import load_run, run_state, save_run
from ..potential import FlatPotential, check_latent_sites, latent_nodes
from ..result import FitResult
from ..svi import fit_svi
from .run import sample
from .sampler import KERNELS

BACKENDS = ("fast", "pyro")


INITS = ("median", "uniform", "svi")


_INIT_TRIES = 20


_REPLAY_CHUNK = 256


def _compile_option(graph: str | None, traced: bool) -> bool | None:
    """``sample``'s ``compile``: decided during the run (``None``) only over a traced potential."""
    if graph is None:
        return None if traced else False
    return graph == "compiled"


def _chain_seeds(seed: int, num_chains: int) -> list[int]:
    """Independent per-chain seeds derived from ``seed`` (NumPy's ``SeedSequence``)."""
    return [int(np.random.SeedSequence([seed, c]).generate_state(1)[0]) for c in range(num_chains)]


def _trace(model: Callable, args: tuple, strategy: Callable) -> poutine.Trace:
    with torch.no_grad(), pyro.validation_enabled(False):
        return poutine.trace(InitMessenger(strategy)(model)).get_trace(*args)


def _initial_traces(
    model: Callable,
    args: tuple,
    init: str | Mapping[str, Tensor],
    seeds: list[int],
    svi_draws: list[dict[str, Tensor]] | None,
) -> list[poutine.Trace]:
    """One starting trace per chain, redrawn (for random strategies) until its density is finite."""
    fallback = init_to_median(num_samples=15)
    pyro.set_rng_seed(seeds[0])  # initial weights estimate prior medians from random draws
    base = dict(getattr(model, "initial_weights", dict)()) if init == "median" else {}
    traces = []
    for c, seed in enumerate(seeds):
        for attempt in range(_INIT_TRIES):
            pyro.set_rng_seed(seed + attempt)
            if isinstance(init, Mapping):
                strategy = init_to_value(values=dict(init), fallback=fallback)
            elif init == "uniform":
                strategy = init_to_uniform(radius=2.0)
            elif init == "svi":
                strategy = init_to_value(values=svi_draws[c], fallback=fallback)
            else:
                strategy = init_to_value(values=base, fallback=fallback)
            trace = _trace(model, args, strategy)
            with torch.no_grad(), pyro.validation_enabled(False):
                log_p = trace.log_prob_sum()
            if torch.isfinite(log_p):
                break
        else:
            raise ValueError(
                f"no finite log density at the starting values of chain {c} after "
                f"{_INIT_TRIES} tries; give finite starting values with init={{site: value}}"
            )
        traces.append(trace)
    return traces


def _deterministic_names(trace: poutine.Trace) -> list[str]:
    return [
        name
        for name, node in trace.nodes.items()
        if node["type"] == "sample" and node["infer"].get("_deterministic")
    ]


def replay_deterministic(
    model: Callable, args: tuple, draws: Mapping[str, Tensor], names: list[str]
) -> dict[str, Tensor]:
    """Values of the deterministic sites ``names`` at every draw ``{site: (chain, draw, ...)}``.

    The model runs conditioned on the draws, vectorised over draws with ``torch.func.vmap`` (in
    chunks); a model that does not vectorise runs draw by draw.
    """
    if not names:
        return {}
    first = next(iter(draws.values()))
    lead = first.shape[:2]
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in draws.items()}

    def run(values: dict[str, Tensor]) -> dict[str, Tensor]:
        trace = poutine.trace(poutine.condition(model, values)).get_trace(*args)
        return {n: trace.nodes[n]["value"] for n in names}

    total = first.shape[0] * first.shape[1]
    with torch.no_grad(), pyro.validation_enabled(False):
        try:
            parts = [
                torch.func.vmap(run)({k: v[i : i + _REPLAY_CHUNK] for k, v in flat.items()})
                for i in range(0, total, _REPLAY_CHUNK)
            ]
            out = {n: torch.cat([p[n] for p in parts]) for n in names}
        except Exception:  # a model vmap cannot batch: replay draw by draw
            rows = [run({k: v[i] for k, v in flat.items()}) for i in range(total)]
            out = {n: torch.stack([r[n] for r in rows]) for n in names}
    return {n: v.reshape(*lead, *v.shape[1:]) for n, v in out.items()}


def _run_pyro(
    model: Callable,
    args: tuple,
    traces: list[poutine.Trace],
    seeds: list[int],
    *,
    kernel: str,
    num_samples: int,
    warmup: int,
    options: dict[str, Any],
    progress: bool,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Pyro's own kernel, one chain after another: latent draws and sampler statistics."""
    draws: dict[str, list[Tensor]] = {}
    stats: dict[str, list[Tensor]] = {"diverging": [], "step_size": []}
    for trace, seed in zip(traces, seeds, strict=True):
        pyro.set_rng_seed(seed)
        values = {k: n["value"] for k, n in latent_nodes(trace).items()}
        common = {
            "step_size": options["step_size"],
            "full_mass": options["dense_mass"],
            "target_accept_prob": options["target_accept"],
            "jit_compile": options["graph"] == "compiled",
            "ignore_jit_warnings": True,
            "init_strategy": init_to_value(values=values),
        }
        if kernel == "nuts":
            sampler = NUTS(model, max_tree_depth=options["max_tree_depth"], **common)
        else:
            sampler = HMC(
                model,
                trajectory_length=options["trajectory_length"],
                num_steps=options["num_steps"],
                **common,
            )
        step_sizes: list[float] = []

        def hook(kern: Any, _params: Any, stage: str, _i: int, sizes: list = step_sizes) -> None:
            if stage == "Sample":
                sizes.append(kern.step_size)

        mcmc = MCMC(
            sampler, num_samples, warmup_steps=warmup, disable_progbar=not progress, hook_fn=hook
        )
        mcmc.run(*args)
        for k, v in mcmc.get_samples().items():
            draws.setdefault(k, []).append(v)
        diverging = torch.zeros(num_samples, dtype=torch.bool)
        diverging[mcmc.diagnostics()["divergences"]["chain 0"]] = True
        stats["diverging"].append(diverging)
        stats["step_size"].append(torch.tensor(step_sizes))
    return (
        {k: torch.stack(v) for k, v in draws.items()},
        {k: torch.stack(v) for k, v in stats.items()},
    )


def _svi_start(
    model: Callable, x: Tensor, y: Tensor, num_chains: int, seed: int, options: dict, progress: bool
) -> tuple[Callable, list[dict[str, Tensor]]]:
    """A short mean-field SVI run: its (fitted) model and one guide draw per chain."""
    settings = {"epochs": 300, "lr": 0.02} | options
    fitted = fit_svi(model, x, y, seed=seed, progress=progress, **settings)
    draws = fitted.sample_posterior(num_chains)
    latent = {k for k, n in _trace(fitted.model, (x, y), init_to_median()).nodes.items()
              if n["type"] == "sample" and not n["is_observed"]}  # fmt: skip
    starts = [{k: v[c] for k, v in draws.items() if k in latent} for c in range(num_chains)]
    return fitted.model, starts


def _check_init(init: Mapping[str, Any], latent: Mapping[str, dict]) -> None:
    """``init`` names latent sample sites only, each with a value of the site's shape."""
    unknown = sorted(set(init) - set(latent))
    if unknown:
        raise ValueError(
            f"init names {unknown}, which are not latent sample sites (those are "
            f"{sorted(latent)}; deterministic weights of non-centred priors are set through "
            "their '_decentered' sites)"
        )
    for name, value in init.items():
        shape = tuple(latent[name]["value"].shape)
        if tuple(torch.as_tensor(value).shape) != shape:
            raise ValueError(f"init[{name!r}] must have shape {shape}")


def _check_options(
    *,
    kernel: str,
    backend: str,
    init: Any,
    num_samples: int,
    warmup: int,
    num_chains: int,
    target_accept: float,
    max_tree_depth: int,
    step_size: float,
    trajectory_length: float | None,
    num_steps: int | None,
    dense_mass: bool,
    graph: str | None,
    seed: int,
    init_options: dict | None,
) -> None:
    check_choice(kernel, "kernel", KERNELS)
    check_choice(backend, "backend", BACKENDS)
    if not isinstance(init, Mapping):
        check_choice(init, "init", INITS)
    check_positive_int(num_samples, "num_samples")
    check_positive_int(num_chains, "num_chains")
    check_positive_int(max_tree_depth, "max_tree_depth")
    check_positive(step_size, "step_size")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    check_seed(seed)
    if not isinstance(target_accept, int | float) or not 0 < target_accept < 1:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept!r}")
    if trajectory_length is not None:
        check_positive(trajectory_length, "trajectory_length")
    if num_steps is not None:
        check_positive_int(num_steps, "num_steps")
    if not isinstance(dense_mass, bool):
        raise TypeError(f"dense_mass must be a bool, got {dense_mass!r}")
    if graph is not None:
        check_graph(graph)
    if init_options is not None and not isinstance(init_options, Mapping):
        raise TypeError(f"init_options must be a dict, got {type(init_options).__name__}")
    if init_options is not None and init != "svi":
        raise ValueError("init_options only apply to init='svi'")
    if kernel == "nuts" and (trajectory_length is not None or num_steps is not None):
        raise ValueError("trajectory_length and num_steps only apply to kernel='hmc'")
    if trajectory_length is not None and num_steps is not None:
        raise ValueError("give trajectory_length or num_steps, not both")


@isolated
def fit_mcmc(
    model: Callable,
    X: Tensor,
    y: Tensor,
    *,
    kernel: str = "nuts",
    num_samples: int = 1000,
    warmup: int = 1000,
    num_chains: int = 4,
    init: str | Mapping[str, Tensor] = "median",
    init_options: dict[str, Any] | None = None,
    dense_mass: bool = False,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    step_size: float = 1.0,
    trajectory_length: float | None = None,
    num_steps: int | None = None,
    backend: str = "fast",
    graph: str | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: str | os.PathLike | None = None,
) -> FitResult:
    """Sample the posterior of ``model`` given ``(X, y)`` with NUTS or HMC.

    Args:
        kernel: ``"nuts"`` or ``"hmc"`` (static trajectories of ``trajectory_length``, default
            ``2 pi``, or of ``num_steps`` leapfrog steps).
        num_samples, warmup: draws kept per chain, and warm-up (adaptation) iterations per chain.
        num_chains: independent chains, each seeded from ``seed`` and its index.
        init: ``"median"`` (prior medians; a SparseBNN's weights start at its network's
            current weights, so build the network under a fixed torch seed to repeat a run),
            ``"uniform"`` (Pyro's uniform(-2, 2) in unconstrained space),
            ``"svi"`` (one draw per chain from a short mean-field SVI fit, which also fits the
            model's non-Bayesian parameters; ``init_options`` go to :func:`fit_svi`, default
            ``epochs=300, lr=0.02``) or a dict ``{site: value}``.
        dense_mass: adapt a dense inverse mass matrix instead of a diagonal one.
        target_accept: the step-size adaptation's target acceptance statistic.
        max_tree_depth: NUTS's maximum number of trajectory doublings.
        step_size: the initial step size (then searched and adapted during warm-up).
        backend: ``"fast"`` (batched, traced potential) or ``"pyro"`` (Pyro's kernels).
        graph: ``"traced"`` (the potential and its gradient replayed from a checked ATen
            graph), ``"eager"`` or ``"compiled"`` (the leapfrog steps compiled by Inductor;
            Pyro's ``jit_compile`` for ``backend="pyro"``): see
            :data:`~pyro_sparse_bnn.validation.GRAPH_MODES`. ``None`` (default): traced, and
            compiled from iteration :data:`~.run.COMPILE_AFTER` on when the rest of the run is
            projected to take at least :data:`~.run.COMPILE_FROM_LEAVES` leapfrog steps per
            chain (docs/mcmc.md); ``info["compiled"]`` says whether it was.
        progress: one progress bar per chain.
        checkpoint, checkpoint_every: write the run's state (positions, adaptation, the draws so
            far, generator states) to this file, atomically, every ``checkpoint_every``
            iterations (fast backend).
        resume: a checkpoint of the same call to continue from: the run ends with exactly the
            draws of an uninterrupted one.

    Returns a :class:`FitResult` with draws ``(chain, draw, ...)`` of every latent and
    deterministic site, and ``sample_stats`` ``(chain, draw)``: ``diverging``, ``step_size`` and,
    for the fast backend, ``tree_depth`` (NUTS), ``n_steps``, ``acceptance_rate``, ``energy``,
    ``lp`` (log density in unconstrained space). ``info`` holds ``seconds``, ``step_size`` and
    ``inverse_mass_matrix`` per chain, ``divergences`` and ``warmup_divergences``; the fast
    backend adds ``leapfrog_steps`` per chain, ``compiled``, and the process's CPU seconds of the
    warm-up and of the sampling iterations (``warmup_cpu_seconds``, ``sampling_cpu_seconds``,
    as CmdStan reports its phases; compilation falls in the warm-up). Non-Bayesian
    parameters of the model (e.g. biases without a prior) stay fixed at their current values.
    Ctrl-C during sampling (fast backend) returns the draws made so far
    (``info["interrupted"]``).
    """
    x, y = check_xy(X, y, model=model)
    if y is None:
        raise ValueError("y is required for fitting")
    _check_options(
        kernel=kernel, backend=backend, init=init, num_samples=num_samples, warmup=warmup,
        num_chains=num_chains, target_accept=target_accept, max_tree_depth=max_tree_depth,
        step_size=step_size, trajectory_length=trajectory_length, num_steps=num_steps,
        dense_mass=dense_mass, graph=graph, seed=seed, init_options=init_options,
    )  # fmt: skip
    check_positive_int(checkpoint_every, "checkpoint_every")
    if (checkpoint is not None or resume is not None) and backend != "fast":
        raise ValueError("checkpoint and resume need backend='fast'")
    if checkpoint is not None:
        check_writable(checkpoint, "checkpoint")
    saved = None if resume is None else load_run(resume, "mcmc")

    if isinstance(model, nn.Module):
        model = copy.deepcopy(model).to(device=x.device, dtype=float_dtype(x))
    cuda = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):  # checks leave the caller's random state alone
            latent = latent_nodes(_trace(model, (x, y), init_to_feasible))
            check_latent_sites(latent)
    except NotImplementedError as error:  # a site that cannot be sampled: an improper prior
        raise ValueError(
            "the model has an improper prior, which has no posterior for MCMC to sample "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from error
    if isinstance(init, Mapping):
        _check_init(init, latent)
    start = time.perf_counter()
    seeds = _chain_seeds(seed, num_chains)
    svi_draws = None
    if init == "svi":
        model, svi_draws = _svi_start(
            model, x, y, num_chains, seed, dict(init_options or {}), progress
        )
    elif isinstance(model, nn.Module) and any(p.requires_grad for p in model.parameters()):
        warnings.warn(
            "the model has non-Bayesian parameters (e.g. biases without a prior); MCMC keeps "
            "them fixed at their current values (init='svi' fits them first)",
            stacklevel=2,
        )
    args = (x, y)
    traces = _initial_traces(model, args, init, seeds, svi_draws)
    trajectory = 2 * math.pi if trajectory_length is None else float(trajectory_length)
    info: dict[str, Any] = {"backend": backend, "kernel": kernel, "init": init, "seeds": seeds}
    if backend == "pyro":
        options = {
            "step_size": step_size, "dense_mass": dense_mass, "target_accept": target_accept,
            "graph": graph or "traced", "max_tree_depth": max_tree_depth,
            "trajectory_length": trajectory_length, "num_steps": num_steps,
        }  # fmt: skip
        latent, stats = _run_pyro(
            model, args, traces, seeds, kernel=kernel, num_samples=num_samples, warmup=warmup,
            options=options, progress=progress,
        )  # fmt: skip
        info["step_size"] = stats["step_size"][:, -1]
    else:
        flat = FlatPotential(
            model, args, num_chains=num_chains, trace=traces[0], traced=graph != "eager"
        )
        theta = torch.stack(
            [flat.flatten({k: n["value"] for k, n in latent_nodes(t).items()}) for t in traces]
        )
        signature = {
            "kernel": kernel, "num_chains": num_chains, "dim": flat.dim, "warmup": warmup,
            "num_samples": num_samples, "seeds": list(seeds), "dense_mass": dense_mass,
        }  # fmt: skip
        saved = None if resume is None else run_state(saved, signature)
        save = None if checkpoint is None else partial(save_run, checkpoint, "mcmc", signature)
        with torch.no_grad():
            draws = sample(
                flat.potential_and_grad, theta, num_warmup=warmup, num_samples=num_samples,
                seeds=seeds, kernel=kernel, step_size=step_size, dense_mass=dense_mass,
                target_accept=target_accept, max_tree_depth=max_tree_depth,
                trajectory_length=trajectory, num_steps=num_steps,
                compile=_compile_option(graph, flat.traced),
                progress=progress, checkpoint_every=checkpoint_every,
                checkpoint=save, resume=saved,
            )  # fmt: skip
        latent, stats = flat.constrain(draws.theta), draws.stats
        info |= {
            "step_size": draws.step_size,
            "inverse_mass_matrix": draws.inverse_mass,
            "warmup_divergences": draws.warmup_divergences,
            "interrupted": draws.interrupted,
            "traced": flat.traced,
            "compiled": draws.info["compiled"],
            "warmup_cpu_seconds": draws.info["warmup_cpu_seconds"],
            "sampling_cpu_seconds": draws.info["sampling_cpu_seconds"],
            "leapfrog_steps": draws.info["warmup_steps"] + stats["n_steps"].sum(1),
            "dim": flat.dim,
        }
    samples = dict(latent)
    samples |= replay_deterministic(model, args, latent, _deterministic_names(traces[0]))
    info["seconds"] = time.perf_counter() - start
    info["divergences"] = int(stats["diverging"].sum()) if "diverging" in stats else 0
    return FitResult(model, samples, method=kernel, x=x, y=y, info=info, sample_stats=stats)
