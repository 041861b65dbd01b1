"""Penalised point-estimate training for compression baselines: L1 + magnitude pruning, L0 gates.

Both train the network of a :class:`~pyro_sparse_bnn.SparseBNN` (its priors are not used) with
Adam on ``mean NLL + penalty`` over minibatches and return a
:class:`~pyro_sparse_bnn.FitResult` whose weight draws are conditioned into a ``SparseBNN`` with a
placeholder ``Normal`` prior:

* ``fit_l1`` (``method="l1"``): penalty ``l1 * sum |w|``; afterwards weights with
  ``|w| < threshold`` are zeroed. One draw (the pruned weights); ``l1=0, threshold=0`` is the
  dense baseline.
* ``fit_l0`` (``method="l0"``): hard-concrete gates (:class:`~pyro_sparse_bnn.gates.L0Network`),
  penalty ``L0Network.penalty / N``, ``log_alpha`` clamped after every step. Draws are the gated
  weights ``w * z`` with ``z`` from the gates; ``info["network"]`` is the trained gated network
  (``.eval()`` or ``.plain_network()`` for the deterministic test-time network) and
  ``info["gate_masks"]`` the groups with ``P(z != 0)`` above the default threshold.

>>> import pyro_sparse_bnn as psb
>>> X, y = psb.datasets.load("iris")
>>> bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
>>> result = fit_l1(bnn, X, y, epochs=5, l1=1e-3, threshold=1e-2, progress=False)
>>> result.method, result.num_draws
('l1', 1)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from ..baselines import magnitude_prune
from ..dtypes import float_dtype
from ..gates import L0Network
from ..isolation import check_seed, isolated
from ..likelihoods import Categorical, Gaussian
from ..nn import BAYESIAN_LAYERS, BIAS_PARAMS, SparseBNN, weight_name
from ..penalties import Penalty, glorot_penalties, total_penalty
from ..priors import Normal
from ..sparsity import gate_masks
from ..validation import (
    check_choice,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_xy,
)
from .loop import LR_SCHEDULES, LoopOptions, check_step, lr_scheduler
from .posterior import GatedPosterior, Posterior
from .result import FitResult

__all__ = ["fit_l0", "fit_l1"]


def _trainable_net(model: Any) -> nn.Module:
    """A copy of ``model.net`` whose weights (buffers inside a SparseBNN) are parameters again."""
    if not isinstance(model, SparseBNN):
        raise TypeError(f"model must be a SparseBNN, got {type(model).__name__}")
    if isinstance(model.likelihood, Gaussian) and model.likelihood.learn_noise:
        raise ValueError("penalised fits need a fixed-noise likelihood: use Gaussian(noise=...)")
    net = copy.deepcopy(model.net)
    for layer in model.layer_names + model.norm_names:
        module = net.get_submodule(layer)
        buffers = dict(module.named_buffers(recurse=False))
        for name in (weight_name(module), *BIAS_PARAMS):
            if name in buffers:
                value = buffers[name].detach().clone()
                delattr(module, name)
                module.register_parameter(name, nn.Parameter(value))
    return net


def _check_common(
    model: Any,
    X: Any,
    y: Any,
    batch_size: int | None,
    lr: float,
    schedule: str,
    seed: int,
) -> tuple[Tensor, Tensor, int]:
    x, y = check_xy(X, y, model=model)
    check_seed(seed)
    if y is None:
        raise ValueError("y is required for fitting")
    check_positive(lr, "lr")
    check_choice(schedule, "lr_schedule", tuple(LR_SCHEDULES))
    n = x.shape[0]
    size = n if batch_size is None else min(check_positive_int(batch_size, "batch_size"), n)
    return x, y, size


def _train(
    module: nn.Module,
    nll: Callable[[Tensor, Tensor], Tensor],
    penalty: Callable[[], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    loop: LoopOptions,
    batch_size: int,
    lr: float,
    lr_schedule: str,
    seed: int,
    after_step: Callable[[], None] | None = None,
    groups: list[dict] | None = None,
) -> dict[str, Any]:
    """Adam on ``nll(module(xb), yb) + penalty()`` over shuffled minibatches, run by ``loop``.

    ``groups`` (optional) are Adam parameter groups; by default all of ``module``'s parameters.
    """
    optimizer = torch.optim.Adam(groups or module.parameters(), lr=lr)
    scheduler = lr_scheduler(optimizer, lr_schedule, loop.epochs)
    order = torch.Generator().manual_seed(seed)
    n = x.shape[0]

    def epoch(e: int) -> float:
        total = 0.0
        for idx in torch.randperm(n, generator=order).to(x.device).split(batch_size):
            optimizer.zero_grad()
            loss = nll(module(x[idx]), y[idx]) + penalty()
            check_step(loss, [], e)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total += loss.item() * len(idx) / n
        scheduler.step()
        return total

    module.train()
    parts = {"module": module, "optimizer": optimizer, "scheduler": scheduler}
    info = loop.run(epoch, parts=parts, generators={"order": order})
    module.eval()
    return info


def _nll(model: SparseBNN) -> Callable[[Tensor, Tensor], Tensor]:
    """Mean negative log-likelihood of the observation law (cross-entropy if Categorical)."""
    if isinstance(model.likelihood, Categorical):
        return nn.functional.cross_entropy
    return lambda out, y: -model.likelihood.distribution(out).log_prob(y.to(out.dtype)).mean()


def _result(
    model: SparseBNN,
    net: nn.Module,
    draws: dict[str, Tensor],
    method: str,
    x: Tensor,
    y: Tensor,
    info: dict[str, Any],
    posterior: Posterior | None = None,
) -> FitResult:
    plain = SparseBNN(net, Normal(), model.likelihood)
    samples = {k: v.unsqueeze(0) for k, v in draws.items()}
    return FitResult(plain, samples, method=method, x=x, y=y, info=info, posterior=posterior)


def _l1_factors(l1: Any, net: nn.Module, n_data: int) -> dict[str, float]:
    """The L1 factor of every Linear/Conv layer of ``net`` from ``fit_l1``'s ``l1`` option."""
    layers = [name for name, m in net.named_modules() if isinstance(m, BAYESIAN_LAYERS)]
    if isinstance(l1, str):
        if l1 != "glorot":
            raise ValueError(
                f"l1 must be a number >= 0, a {{layer: number}} dict or 'glorot', got {l1!r}"
            )
        return {k: p.lam for k, p in glorot_penalties(net, "l1", lam=1.0 / n_data).items()}
    if isinstance(l1, Mapping):
        unknown = set(l1) - set(layers)
        if unknown:
            raise ValueError(f"l1 names layers {sorted(unknown)}; the network's are {layers}")
        values = dict(l1)
    else:
        values = dict.fromkeys(layers, l1)
    for name, value in values.items():
        check_nonnegative(value, f"l1 (layer {name!r})")
    return {k: float(values.get(k, 0.0)) for k in layers}


@isolated
def fit_l1(
    model: SparseBNN,
    X: Tensor,
    y: Tensor,
    *,
    l1: float | str | Mapping[str, float] = 1e-4,
    threshold: float = 1e-2,
    epochs: int = 100,
    batch_size: int | None = None,
    lr: float = 1e-3,
    lr_schedule: str = "constant",
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: str | os.PathLike | None = None,
) -> FitResult:
    """Train with ``mean NLL + sum_l l1_l * sum |w_l|``, then zero weights with ``|w| < threshold``.

    ``l1`` is one factor for every layer, a mapping ``{layer: factor}`` (layers by module path,
    as in ``SparseBNN``; layers left out are not penalised), or ``"glorot"``: the Bayesian
    factors ``sqrt(2 P_l) / N`` (:func:`~pyro_sparse_bnn.penalties.glorot_penalties` with
    ``lam = 1/N``, ``P_l`` the fan-in), under which the penalty is the negative log density of
    Laplace priors giving each weight the Glorot variance ``1 / P_l``. ``info`` holds
    ``history``, ``seconds``, ``l1`` (the factor per layer), ``masks`` (kept weights) and
    ``network`` (the pruned plain network). ``progress``, ``callback``, ``checkpoint``,
    ``checkpoint_every`` and ``resume`` are the training loop's
    (:class:`~pyro_sparse_bnn.infer.loop.LoopOptions`).
    """
    x, y, size = _check_common(model, X, y, batch_size, lr, lr_schedule, seed)
    loop = LoopOptions(epochs, progress, callback, checkpoint, checkpoint_every, resume, desc="l1")
    threshold = check_nonnegative(threshold, "threshold")
    net = _trainable_net(model).to(device=x.device, dtype=float_dtype(x))
    factors = _l1_factors(l1, net, x.shape[0])
    pyro.set_rng_seed(seed)
    penalties = {k: Penalty("l1", v) for k, v in factors.items() if v > 0}
    info = _train(
        net,
        _nll(model),
        lambda: total_penalty(net, penalties) if penalties else torch.zeros((), device=x.device),
        x,
        y,
        loop=loop,
        batch_size=size,
        lr=lr,
        lr_schedule=lr_schedule,
        seed=seed,
    )
    pruned, masks = magnitude_prune(net, threshold)
    draws = {k: pruned.get_parameter(k).detach().unsqueeze(0) for k in masks}
    info |= {"masks": masks, "network": pruned, "l1": factors, "threshold": threshold}
    return _result(model, pruned, draws, "l1", x, y, info)


@isolated
def fit_l0(
    model: SparseBNN,
    X: Tensor,
    y: Tensor,
    *,
    lambdas: float | Sequence[float] = 0.1,
    weight_decay: float = 5e-4,
    droprate_init: float = 0.5,
    input_droprate_init: float = 0.2,
    epochs: int = 100,
    batch_size: int | None = None,
    lr: float = 1e-3,
    gate_lr: float | None = None,
    lr_schedule: str = "constant",
    num_posterior_samples: int = 100,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: str | os.PathLike | None = None,
) -> FitResult:
    """L0 regularisation: ``mean NLL + L0Network.penalty(lambdas, weight_decay) / N``.

    Gates sit on the input features of Linear layers and the output channels of conv layers;
    ``lambdas`` is one value or one per layer (Louizos et al. use 0.1 for an MLP). ``gate_lr``
    is the learning rate of the gates' ``log_alpha`` (default ``lr``): with Adam a gate moves
    at most about ``gate_lr`` per step, so short runs need a larger one to close gates.
    ``info`` holds ``history``, ``seconds``, ``network`` (the trained
    :class:`~pyro_sparse_bnn.gates.L0Network`), ``prob_nonzero`` and ``gate_masks`` per layer.
    The loop options are those of :func:`fit_l1`.
    """
    x, y, size = _check_common(model, X, y, batch_size, lr, lr_schedule, seed)
    loop = LoopOptions(epochs, progress, callback, checkpoint, checkpoint_every, resume, desc="l0")
    check_positive_int(num_posterior_samples, "num_posterior_samples")
    gate_lr = lr if gate_lr is None else check_positive(gate_lr, "gate_lr")
    pyro.set_rng_seed(seed)
    gated = L0Network(
        _trainable_net(model),
        droprate_init=droprate_init,
        input_droprate_init=input_droprate_init,
        seed=seed,
    ).to(device=x.device, dtype=float_dtype(x))
    gated.penalty(lambdas, weight_decay)  # validates lambdas and weight_decay before training
    gates = [gated.gated(k).log_alpha for k in gated.layer_names]
    gate_ids = {id(p) for p in gates}
    weights = [p for p in gated.parameters() if id(p) not in gate_ids]
    groups = [{"params": weights, "lr": lr}, {"params": gates, "lr": gate_lr}]
    n = x.shape[0]
    info = _train(
        gated,
        _nll(model),
        lambda: gated.penalty(lambdas, weight_decay) / n,
        x,
        y,
        loop=loop,
        batch_size=size,
        lr=lr,
        lr_schedule=lr_schedule,
        seed=seed,
        after_step=gated.clamp_,
        groups=groups,
    )
    probs = {k: v.detach() for k, v in gated.prob_nonzero().items()}
    draws = gated.sample_weights(num_posterior_samples)
    log_alphas = {k: gated.gated(k).log_alpha for k in gated.layer_names}
    info |= {"network": gated, "prob_nonzero": probs, "gate_masks": gate_masks(log_alphas)}
    return _result(model, gated.plain_network(), draws, "l0", x, y, info, GatedPosterior(gated))
