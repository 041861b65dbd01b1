"""Time per training step of LeNet-300-100 (784-300-100-10), batch 100: plain torch against
local-reparameterisation SVI and naive weight-sampling SVI, side by side in one run.

    python benchmarks/speed_lrt.py [--quick]

Steps, all with Adam on the same network and MNIST-10k minibatches, one torch thread:

* ``plain``: a deterministic ``nn.Sequential`` step on the cross-entropy;
* ``lrt``: ``SparseBNN`` (Normal prior) with the mean-field guide (``guides.mean_field``) and
  ``LocalReparameterizationELBO`` (pre-activations sampled, analytic KL): the step
  ``fit(..., elbo="lrt", graph="traced")`` takes, replayed from its traced graph (``TracedELBO``);
* ``lrt_compiled``: ``lrt`` with the traced graph compiled by Inductor
  (``fit(..., elbo="lrt", graph="compiled")``: fused elementwise kernels);
* ``lrt_sparsevd``, ``lrt_sparsevd_compiled``: the same with the log-uniform prior and the SparseVD
  guide;
* ``lrt_eager``: ``lrt`` run through Pyro's handlers every step (``graph="eager"``);
* ``naive``: the stock Pyro step, mean-field guide and ``TraceMeanField_ELBO`` run eagerly: one
  weight draw per minibatch, shared by its 100 examples;
* ``naive_traced``: ``naive`` replayed from its traced graph, the arithmetic of a shared draw;
* ``lrt_matrix_products``: only the 16 matrix products any LRT step of this network needs (per
  layer the mean and variance pre-activations and their two weight gradients; below the first
  layer two input gradients), on the same minibatches: a floor for the ``lrt`` steps;
* ``lrt_floor``: those products, plus the least per-weight arithmetic of the mean-field guide
  (``sigma = softplus(rho)``, ``log sigma^2`` in the KL, ``sigmoid(rho)`` in its gradient),
  compiled by Inductor into one loop, plus fused Adam on both parameter tensors: what any
  ``lrt`` step of this guide costs before its noise draw and activations.

The variants run in interleaved rounds (``ROUNDS`` x ``STEPS`` steps each) so that load from other
processes hits them alike; the median round gives ms per step. Writes
benchmarks/results/speed_lrt.json with one row per variant and a ``comparison`` row holding
``ratio_lrt_over_plain`` and ``ratio_naive_over_lrt``, taken with the faster of ``lrt`` and
``lrt_compiled`` (named in ``lrt_variant``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import pyro
import torch
import torch.nn.functional as F
from _common import print_table, write_results
from pyro.infer import TraceMeanField_ELBO
from torch import Tensor, nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.traced_elbo import TracedELBO
from pyro_sparse_bnn.lrt import LocalReparameterizationELBO

BATCH = 100
ROUNDS, STEPS = 40, 10


def svi_step(
    prior, guide_name: str, elbo, x: torch.Tensor, y: torch.Tensor, n: int, graph: str
) -> Callable:
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp([784, 300, 100, 10]), prior, psb.likelihoods.Categorical())
    guide = psb.guides.make_guide(guide_name, bnn)
    guide(x[:BATCH], y[:BATCH])
    params = [*bnn.parameters(), *guide.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=graph != "eager")  # as fit_svi
    loss = TracedELBO(elbo.differentiable_loss, bnn, guide, params, graph=graph)
    batches = x.split(BATCH), y.split(BATCH)
    state = {"i": 0}

    def step() -> None:  # fit_svi's step: the loss per training row, then Adam
        i = state["i"] = (state["i"] + 1) % len(batches[0])
        loss(batches[0][i], batches[1][i], observed=1 / BATCH, latent=1 / n)
        optimizer.step()

    return step


def plain_step(x: torch.Tensor, y: torch.Tensor) -> Callable:
    torch.manual_seed(0)
    net = copy.deepcopy(psb.mlp([784, 300, 100, 10]))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    batches = x.split(BATCH), y.split(BATCH)
    state = {"i": 0}

    def step() -> None:
        i = state["i"] = (state["i"] + 1) % len(batches[0])
        optimizer.zero_grad()
        F.cross_entropy(net(batches[0][i]), batches[1][i]).backward()
        optimizer.step()

    return step


def lrt_matrix_products(x: torch.Tensor) -> Callable:
    torch.manual_seed(0)
    shapes = [(300, 784), (100, 300), (10, 100)]
    means, variances = [torch.randn(s) for s in shapes], [torch.rand(s) for s in shapes]
    batches = x.split(BATCH)
    state = {"i": 0}

    def step() -> None:
        i = state["i"] = (state["i"] + 1) % len(batches)
        inputs, h = [], batches[i]
        for mean, variance in zip(means, variances, strict=True):
            inputs.append(h)
            h = torch.relu(h @ mean.T + (h * h) @ variance.T)  # the draw's arithmetic aside
        grad = torch.ones_like(h)
        for layer in reversed(range(len(shapes))):
            a = inputs[layer]
            _ = grad.T @ a, grad.T @ (a * a)  # the weight gradients
            if layer:
                grad = grad @ means[layer] + (grad @ variances[layer]) * a

    return step


def _mean_field_arithmetic(rho: Tensor, loc: Tensor, grad_variance: Tensor) -> list[Tensor]:
    """The guide's scales, the KL to N(0, 1) and the gradient with respect to ``rho``."""
    scale = F.softplus(rho)
    variance = scale * scale
    kl = 0.5 * (variance + loc * loc - 1 - variance.log()).sum()
    grad_rho = (2 * grad_variance * scale + scale - 1 / scale) * torch.sigmoid(rho)
    return [kl, variance, grad_rho]


def lrt_floor(x: Tensor) -> Callable:
    products = lrt_matrix_products(x)
    n_weights = 784 * 300 + 300 * 100 + 100 * 10
    torch.manual_seed(0)
    rho, loc = nn.Parameter(torch.full((n_weights,), -5.0)), nn.Parameter(torch.randn(n_weights))
    grad_variance = torch.randn(n_weights)
    rho.grad, loc.grad = torch.randn(n_weights), torch.randn(n_weights)
    optimizer = torch.optim.Adam([rho, loc], lr=1e-3, fused=True)
    arithmetic = torch.compile(_mean_field_arithmetic, dynamic=False)

    def step() -> None:
        products()
        with torch.no_grad():
            arithmetic(rho, loc, grad_variance)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 steps")
    args = parser.parse_args()
    rounds, steps = (3, 3) if args.quick else (ROUNDS, STEPS)
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    x, y = psb.datasets.load_mnist(split="train")
    n = x.shape[0]
    normal, log_uniform = psb.priors.Normal(), psb.priors.LogUniform()
    lrt, naive = LocalReparameterizationELBO(), TraceMeanField_ELBO()
    variants = {
        "plain": plain_step(x, y),
        "lrt": svi_step(normal, "mean_field", lrt, x, y, n, graph="traced"),
        "lrt_compiled": svi_step(normal, "mean_field", lrt, x, y, n, graph="compiled"),
        "lrt_sparsevd": svi_step(log_uniform, "sparse_vd", lrt, x, y, n, graph="traced"),
        "lrt_sparsevd_compiled": svi_step(log_uniform, "sparse_vd", lrt, x, y, n, graph="compiled"),
        "lrt_eager": svi_step(normal, "mean_field", lrt, x, y, n, graph="eager"),
        "naive": svi_step(normal, "mean_field", naive, x, y, n, graph="eager"),
        "naive_traced": svi_step(normal, "mean_field", naive, x, y, n, graph="traced"),
        "lrt_matrix_products": lrt_matrix_products(x),
        "lrt_floor": lrt_floor(x),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for step in variants.values():  # warm-up
        for _ in range(3):
            step()
    for _ in range(rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    best = min(("lrt", "lrt_compiled"), key=ms.__getitem__)
    rows = [
        {"variant": k, "ms_per_step": ms[k], "ms_per_step_min": min(times[k])} for k in variants
    ]
    rows.append(
        {
            "variant": "comparison",
            "plain_ms": ms["plain"],
            "lrt_variant": best,
            "lrt_ms": ms[best],
            "naive_ms": ms["naive"],
            "ratio_lrt_over_plain": ms[best] / ms["plain"],
            "ratio_naive_over_lrt": ms["naive"] / ms[best],
            "ratio_sparsevd_lrt_over_plain": ms["lrt_sparsevd"] / ms["plain"],
            "ratio_sparsevd_compiled_over_plain": ms["lrt_sparsevd_compiled"] / ms["plain"],
            "ratio_lrt_traced_over_compiled": ms["lrt"] / ms["lrt_compiled"],
            "ratio_lrt_eager_over_lrt": ms["lrt_eager"] / ms["lrt"],
            "ratio_naive_traced_over_lrt": ms["naive_traced"] / ms["lrt"],
            "ratio_lrt_matrix_products_over_plain": ms["lrt_matrix_products"] / ms["plain"],
            "ratio_lrt_floor_over_plain": ms["lrt_floor"] / ms["plain"],
        }
    )
    print_table(rows[:-1], ["variant", "ms_per_step", "ms_per_step_min"])
    print_table(rows[-1:], [k for k in rows[-1] if k.startswith("ratio")])
    write_results(
        "speed_lrt",
        rows,
        seed=0,
        data_split="MNIST t10k via load_mnist(seed=0), 8000 train rows, batch 100",
        network="784-300-100-10 ReLU",
        rounds=rounds,
        steps_per_round=steps,
        threads=1,
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
