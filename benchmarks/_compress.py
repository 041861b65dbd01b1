"""Shared runner of the compression benchmarks (compress_digits.py, compress_mnist.py).

Every method trains a plain network's weights (through a SparseBNN) and is scored the same way:
its *test-time network* (posterior means, pruned entries zeroed; L0: deterministic gates) is
physically pruned with ``prune.prune`` and evaluated on the test split. Reported per method:
``test_error``, ``compression = |W| / |W != 0|`` (weights of Linear/Conv layers), per-layer
sparsity, ``kept_neurons`` (inputs of each layer that the pruned network still reads) and
training ``seconds``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.penalties import glorot_penalties
from pyro_sparse_bnn.priors import GroupLogUniform, ProfiledARD
from pyro_sparse_bnn.prune import masked_network, prune

SPARSE_VD_SNR = math.exp(-1.5)
"""SparseVD's pruning point ``log_alpha > 3`` as a relevance threshold."""
THRESHOLDS = (0.05, 0.1, 0.5, 1.0, 2.0)
"""Relevance thresholds also scored for the variational methods (kept: ``|mean| / sd`` above)."""
METHODS = ("dense", "l1", "sparsevd", "ard", "group_sparsevd", "group_horseshoe", "l0")
NATURAL_GRADIENT = {"ivon_ard": "ivon", "vadam_ard": "vadam"}
"""ARD by natural-gradient VI at each method's defaults (benchmarks/ivon.py); pruned as SparseVD."""


def kept_neurons(small: nn.Module) -> list[int]:
    """Per Linear/Conv layer of a pruned network, its inputs (features, channels or flattened
    columns) that at least one non-zero weight reads: 784-300-100 style for an MLP."""
    counts = []
    for m in small:
        if isinstance(m, nn.Linear | nn.Conv2d):
            w = m.weight.detach()
            counts.append(int((w != 0).transpose(0, 1).reshape(w.shape[1], -1).any(1).sum()))
    return counts


def kept_channels(small: nn.Module) -> list[int]:
    """Output channels of each conv layer of a pruned network."""
    return [m.out_channels for m in small if isinstance(m, nn.Conv2d)]


def score(
    net: nn.Module,
    params: dict[str, Tensor],
    masks: dict[str, Tensor],
    x_test: Tensor,
    y_test: Tensor,
    example: Tensor,
) -> dict[str, Any]:
    """Test error of the pruned test-time network, compression and kept neurons."""
    masked = masked_network(net, params, masks).eval()
    small = prune(masked, example, inputs="select")
    with torch.no_grad():
        err = (small(x_test[:, small.kept_inputs]).argmax(1) != y_test).float().mean().item()
        full_err = (masked(x_test).argmax(1) != y_test).float().mean().item()
    if abs(err - full_err) > 1e-9:
        raise AssertionError(f"pruned network disagrees with the masked one: {err} vs {full_err}")
    n_weights = sum(m.numel() for m in masks.values())
    # non-zero weights of the network that ships: a kept weight into a neuron whose outputs were
    # all pruned is removed with the neuron
    layers = [m for m in small if isinstance(m, nn.Linear | nn.Conv2d)]
    n_kept = sum(int((m.weight != 0).sum()) for m in layers)
    return {
        "test_error": err,
        "compression": n_weights / max(n_kept, 1),
        "n_weights": n_weights,
        "n_kept": n_kept,
        "n_kept_before_neuron_removal": sum(int(m.sum()) for m in masks.values()),
        "layer_sparsity": [1 - float(m.float().mean()) for m in masks.values()],
        "kept_neurons": kept_neurons(small),
        "kept_channels": kept_channels(small),
        "pruned_parameters": sum(p.numel() for p in small.parameters()),
        "pruned_network": small,
    }


def any_network_options(settings: dict, epochs: int, seed: int) -> dict[str, Any]:
    """The options every fit of compress_resnet.py and compress_transformer.py shares."""
    return dict(epochs=epochs, batch_size=settings["batch_size"], lr_schedule="linear_decay",
                seed=seed, progress=False)  # fmt: skip


def fit_dense(net: nn.Module, x: Tensor, y: Tensor, lr: float, **options: Any) -> psb.FitResult:
    """The dense twin: the same network and steps, trained by Adam with no penalty."""
    bnn = psb.SparseBNN(net, psb.priors.Normal(), psb.likelihoods.Categorical())
    return psb.fit(bnn, x, y, method="l1", l1=0.0, lr=lr, **options)


def _svi_fit(bnn, x, y, settings: dict, guide: str = "sparse_vd") -> psb.FitResult:
    return psb.fit(
        bnn,
        x,
        y,
        method="svi",
        guide=guide,
        elbo="lrt",
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        lr=settings["lr_vi"],
        lr_schedule="linear_decay",
        kl_warmup=settings["kl_warmup"],
        num_posterior_samples=settings["num_posterior_samples"],
        seed=settings["seed"],
        progress=settings["progress"],
        graph="traced",
    )


def run_method(
    method: str,
    make_net: Callable[[], nn.Module],
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    settings: dict,
) -> dict[str, Any]:
    """Train ``method`` on ``make_net()`` and score its pruned test-time network."""
    x, y, x_test, y_test = data
    net = make_net()
    likelihood = psb.likelihoods.Categorical()
    example = x[:2]
    start = time.perf_counter()
    if method in ("dense", "l1"):
        bnn = psb.SparseBNN(net, psb.priors.Normal(), likelihood)
        l1, threshold = 0.0, 0.0
        if method == "l1":
            # each layer's Glorot-consistent Bayesian factor sqrt(2 P) / N, scaled down as the
            # validation sweep of scalp_width.py suggests (best ratios 0.003-0.03)
            bayes = glorot_penalties(net, "l1", lam=1.0 / x.shape[0])
            l1 = {k: settings["l1_glorot_ratio"] * p.lam for k, p in bayes.items()}
            threshold = settings["l1_threshold"]
        result = psb.fit(
            bnn, x, y, method="l1", l1=l1, threshold=threshold, epochs=settings["epochs"],
            batch_size=settings["batch_size"], lr=settings["lr"], lr_schedule="linear_decay",
            seed=settings["seed"], progress=settings["progress"],
        )  # fmt: skip
        seconds = time.perf_counter() - start
        pruned = result.info["network"]
        params = {k: v.detach() for k, v in pruned.state_dict().items()}
        masks = result.info["masks"]
        base = pruned
    elif method == "l0":
        bnn = psb.SparseBNN(net, psb.priors.Normal(), likelihood)
        result = psb.fit(
            bnn, x, y, method="l0", lambdas=settings["l0_lambdas"],
            weight_decay=settings["l0_weight_decay"], gate_lr=settings["l0_gate_lr"],
            epochs=settings["epochs"],
            batch_size=settings["batch_size"], lr=settings["lr"], lr_schedule="linear_decay",
            num_posterior_samples=2, seed=settings["seed"], progress=settings["progress"],
        )  # fmt: skip
        seconds = time.perf_counter() - start
        gated = result.info["network"]
        params = gated.deterministic_weights()
        masks = {k: v != 0 for k, v in params.items()}
        base = gated.plain_network()
    elif method in NATURAL_GRADIENT:
        bnn = psb.SparseBNN(net, psb.priors.ARD(), likelihood)
        with warnings.catch_warnings():  # the ARD prior is replaced by the method's own: meant
            warnings.simplefilter("ignore", UserWarning)
            result = psb.fit(
                bnn, x, y, method=NATURAL_GRADIENT[method], ard=True, epochs=settings["epochs"],
                batch_size=settings["batch_size"], num_posterior_samples=2, seed=settings["seed"],
                progress=settings["progress"],
            )  # fmt: skip
        seconds = time.perf_counter() - start
        params = {k: m for k, (m, _) in result.weight_moments().items()}
        masks = result.masks(SPARSE_VD_SNR)
        base = result.model.net
    else:
        prior = {
            "sparsevd": psb.priors.LogUniform(),
            "ard": ProfiledARD(),
            "group_sparsevd": GroupLogUniform(groups="in"),
            "group_horseshoe": psb.priors.Horseshoe(settings["horseshoe_scale"], groups="in"),
        }[method]
        bnn = psb.SparseBNN(net, prior, likelihood)
        result = _svi_fit(bnn, x, y, settings)
        seconds = time.perf_counter() - start
        params = {k: m for k, (m, _) in result.weight_moments().items()}
        masks = result.masks(SPARSE_VD_SNR)  # effective log_alpha = log(Var / E^2) < 3
        base = result.model.net
    row = {
        "method": method,
        "seconds": seconds,
        **score(base, params, masks, x_test, y_test, example),
    }
    row["train_epochs"] = settings["epochs"]
    if method not in ("dense", "l1", "l0"):
        # other operating points of the same posterior: relevance thresholds around SparseVD's
        row["threshold_sweep"] = []
        for threshold in THRESHOLDS:
            point = score(base, params, result.masks(threshold), x_test, y_test, example)
            row["threshold_sweep"].append(
                {"threshold": threshold, "test_error": point["test_error"],
                 "compression": point["compression"], "kept_neurons": point["kept_neurons"]}
            )  # fmt: skip
    return row


def best_point(row: dict[str, Any], max_error: float) -> dict[str, Any] | None:
    """The most compressed operating point of ``row`` with test error at most ``max_error``."""
    points = [row, *row.get("threshold_sweep", [])]
    ok = [p for p in points if p["test_error"] <= max_error + 1e-12]
    return max(ok, key=lambda p: p["compression"], default=None)
