"""Pareto fronts of test error against kept parameters on IRIS 4-8(ReLU)-3 (67 parameters).

    python benchmarks/pareto_iris.py [--quick] [--seeds 5] [--jobs 2]

Every one of the 67 parameters counts and can be pruned: 32 + 24 weights *and* the 8 + 3 biases
(the thesis counts 67). The Bayesian methods therefore put their prior on the biases too
(``bias_prior``), and the L1 baseline penalises and prunes them. Data: ``datasets.load("iris")``
with its fixed split (seed 0, 112 train / 38 test rows); ``--seeds`` training seeds change the
initialisation, the weight noise and the minibatch order. Methods:

* ``l1``: 3000 full-batch Adam steps (lr 0.01) on ``mean NLL + lambda * sum |theta|`` over all
  67 parameters for each ``lambda`` in ``L1_LAMBDAS``, then magnitude pruning (keep the ``n``
  largest ``|theta|``, no retraining); the deterministic network predicts. (10,000 steps give
  the same front from 6 kept on and a worse one below.)
* ``vadam_ard``: ``fit(method="vadam", ard=True)`` with ARD on every parameter, 20,000 full-batch
  steps (the thesis ran 10k-20k: ARD keeps pruning long after the loss settles), three
  configurations (``VADAM_CONFIGS``): the default ``gamma`` variant with VOGN gradients and lr
  0.01 at ``kl_weight`` 1 (the Bayesian posterior) and 2 (a tempered one: VADAM-ARD's
  counterpart of a larger L1 ``lambda``, see docs/vadam.md), and the ``thesis`` variant with
  squared full-batch gradients (as the thesis code) at the thesis' lower lr 0.001; each pruned by
  both of VADAM-ARD's rules: ``|mu| > k sigma`` for a sweep of ``k`` (config suffix ``snr``) and
  learned prior variance ``1 / psi > t`` for a sweep of ``t`` (suffix ``ard``,
  ``result.masks(t, by="ard")``).
* ``horseshoe_svi``: ``fit(method="svi")`` with ``priors.Horseshoe(1.0)`` on every parameter,
  mean-field guide; keep posterior SNR ``> k`` for a sweep of ``k``.
* ``sparse_vd``: ``priors.LogUniform`` on every parameter with the ``"sparse_vd"`` guide (KL
  warm-up), if the guide registry has it (else reported as pending); keep SNR ``> k``.

Every threshold is swept so that each kept count ``n`` in ``COUNTS`` is reached; the Bayesian
methods predict with the posterior predictive of the masked weights (``DRAWS`` draws). Two
counts per pruned network: ``n_kept``, the unmasked parameters, and ``n_effective``, those left
after removing hidden units without a path from input (no kept incoming weight or bias) or to
output (no kept outgoing weight), whose parameters cannot change a prediction. A method's front
for one seed is ``front(n) = min test error over its configurations and over n' <= n``; the mean
front averages the per-seed fronts. Writes benchmarks/results/pareto_iris.json (rows: kind =
"point" with method, config, seed, n_kept, n_effective, test_error, threshold; kind = "front" with
method, count ("n_kept" or "n_effective"), n, test_error, the mean front, seed = "mean"; kind =
"network_front": the same for each VADAM-ARD network alone, with its config) and
benchmarks/results/pareto_iris.png (the mean fronts over n_kept). ``--jobs`` runs the (method,
seed) tasks in that many one-thread worker processes; every task seeds itself, so the rows do not
depend on it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable

import _pareto
import pandas as pd
import torch
from _common import RESULTS, print_table, write_results
from torch import Tensor, nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.vadam import ARDOptions

SIZES = [4, 8, 3]
N_PARAMS = 67
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]
COUNTS = [*range(1, 21), 22, 25, 30, 35, 40, 50, 60, 67]
L1_LAMBDAS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
# VADAM-ARD: (variant, per-example gradients, lr, kl_weight)
VADAM_CONFIGS = [
    ("gamma", True, 0.01, 1.0),
    ("gamma", True, 0.01, 2.0),
    ("thesis", False, 0.001, 1.0),
]
DRAWS = 32
Data = tuple[Tensor, Tensor, Tensor, Tensor]


def load() -> Data:
    x, y = psb.datasets.load("iris", split="train", seed=0)
    x_test, y_test = psb.datasets.load("iris", split="test", seed=0)
    return x, y, x_test, y_test


def network(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return psb.mlp(SIZES)


def thresholds(scores: Tensor) -> list[float]:
    """One threshold per count in COUNTS: keep the ``n`` highest scores (``score > threshold``)."""
    return _pareto.thresholds(scores, COUNTS)


def effective(masks: dict[str, Tensor]) -> int:
    """Kept parameters on a path from input to output (dead hidden units removed)."""
    w1, b1, w2, b2 = (masks[k] for k in NAMES)
    alive = (w1.any(1) | b1) & w2.any(0)
    return int(w1[alive].sum() + b1[alive].sum() + w2[:, alive].sum() + b2.sum())


def _row(method: str, config: str, seed: int, masks: dict[str, Tensor], error: float,
         threshold: float) -> dict:  # fmt: skip
    return _pareto.point(method, config, seed, masks, effective(masks), error, threshold)


def run_l1(seed: int, steps: int, data: Data) -> list[dict]:
    x, y, x_test, y_test = data
    rows = []
    for lam in L1_LAMBDAS:
        net = _pareto.train_l1(network(seed), x, y, lam, steps)
        params = dict(net.named_parameters())
        flat = torch.cat([params[k].detach().abs().flatten() for k in NAMES])
        for cut in thresholds(flat):
            masks = {k: params[k].detach().abs() > cut for k in NAMES}
            pruned = network(seed)
            with torch.no_grad():
                for k in NAMES:
                    pruned.get_parameter(k).copy_(params[k] * masks[k])
                error = float((pruned(x_test).argmax(-1) != y_test).float().mean())
            rows.append(_row("l1", f"lambda={lam:g}", seed, masks, error, cut))
    return rows


def bayesian_sweep(method: str, config: str, seed: int, result: psb.FitResult, data: Data,
                   by: str = "snr") -> list[dict]:  # fmt: skip
    """One point per count: keep the ``n`` most relevant parameters (``result.relevance(by)``)
    and evaluate the posterior predictive of the masked draws."""
    _, _, x_test, y_test = data
    if sorted(result.weight_sites) != sorted(NAMES):
        raise RuntimeError(f"{method}: expected weight sites {NAMES}, got {result.weight_sites}")
    relevance = result.relevance(by)
    rows = []
    for k in thresholds(torch.cat([relevance[name].flatten() for name in NAMES])):
        masks = result.masks(k, by)
        accuracy = result.evaluate(x_test, y_test, masked=masks)["accuracy"]
        rows.append(_row(method, config, seed, masks, 1.0 - accuracy, k))
    return rows


def run_vadam_ard(seed: int, epochs: int, data: Data) -> list[dict]:
    x, y = data[:2]
    rows = []
    for variant, per_example, lr, kl_weight in VADAM_CONFIGS:
        bnn = psb.SparseBNN(
            network(seed), psb.priors.ARD(), psb.likelihoods.Categorical(),
            bias_prior=psb.priors.ARD(),
        )  # fmt: skip
        result = psb.fit(
            bnn, x, y, method="vadam", ard=ARDOptions(variant), per_example_grads=per_example,
            kl_weight=kl_weight, epochs=epochs, lr=lr, seed=seed, num_posterior_samples=DRAWS,
            progress=False,
        )  # fmt: skip
        grads = "vogn" if per_example else "mean_grads"
        config = f"{variant},{grads},lr={lr:g},kl_weight={kl_weight:g}"
        for by in ("snr", "ard"):
            rows += bayesian_sweep("vadam_ard", f"{config},{by}", seed, result, data, by)
    return rows


def run_horseshoe(seed: int, epochs: int, data: Data) -> list[dict]:
    x, y = data[:2]
    prior = psb.priors.Horseshoe(1.0)
    bnn = psb.SparseBNN(network(seed), prior, psb.likelihoods.Categorical(), bias_prior=prior)
    result = psb.fit(
        bnn, x, y, method="svi", epochs=epochs, lr=0.02, seed=seed,
        num_posterior_samples=DRAWS, progress=False,
    )  # fmt: skip
    return bayesian_sweep("horseshoe_svi", "tau0=1,mean_field,lr=0.02", seed, result, data)


def run_sparse_vd(seed: int, epochs: int, data: Data) -> list[dict]:
    x, y = data[:2]
    prior = psb.priors.LogUniform()
    bnn = psb.SparseBNN(network(seed), prior, psb.likelihoods.Categorical(), bias_prior=prior)
    result = psb.fit(
        bnn, x, y, method="svi", guide="sparse_vd", epochs=epochs, lr=0.01,
        kl_warmup=epochs // 5, seed=seed, num_posterior_samples=DRAWS, progress=False,
    )  # fmt: skip
    return bayesian_sweep("sparse_vd", "log_uniform,lr=0.01,warmup", seed, result, data)


def fronts(points: list[dict], count: str) -> tuple[dict[str, dict[int, float]], pd.DataFrame]:
    """The mean and per-seed fronts over ``count`` at COUNTS (see ``_pareto.fronts``)."""
    return _pareto.fronts(points, count, COUNTS, N_PARAMS)


def plot(mean: dict[str, dict[int, float]], per_seed: pd.DataFrame) -> None:
    _pareto.plot_fronts(
        mean, per_seed, RESULTS / "pareto_iris.png", hlines=[0.05], vlines=[12],
        xlabel="kept parameters (of 67, biases included)", ylabel="test error",
        title="IRIS 4-8-3 Pareto fronts: mean over seeds (thin: each seed)",
    )  # fmt: skip


def network_fronts(points: list[dict]) -> dict[str, dict[int, float]]:
    """VADAM-ARD's mean front over ``n_kept`` for each trained network alone (both rules)."""
    alone = [
        {**row, "method": row["config"].rsplit(",", 1)[0]}
        for row in points
        if row["method"] == "vadam_ard"
    ]
    return fronts(alone, "n_kept")[0]


def compare(mean: dict[str, dict[int, float]], per_seed: pd.DataFrame, count: str) -> dict:
    vadam, l1 = mean["vadam_ard"], mean["l1"]
    worse = [n for n in COUNTS if vadam[n] > l1[n] + 1e-9]
    at12 = per_seed[(per_seed["method"] == "vadam_ard") & (per_seed["n"] == 12)]
    summary = {
        "count": count,
        "vadam_dominates_or_matches_l1": not worse,
        "vadam_worse_than_l1_at": worse,
        "vadam_front_error_at_12": vadam[12],
        "l1_front_error_at_12": l1[12],
        "vadam_front_error_at_12_per_seed": at12["test_error"].tolist(),
    }
    print(f"[{count}] VADAM-ARD front dominates or matches L1's at every count: {not worse}"
          + (f" (worse at n = {worse})" if worse else ""))  # fmt: skip
    seeds12 = [round(e, 3) for e in summary["vadam_front_error_at_12_per_seed"]]
    print(f"[{count}] mean front error at <= 12 kept: VADAM-ARD {vadam[12]:.3f} (goal <= 0.05), "
          f"L1 {l1[12]:.3f}; VADAM-ARD per seed {seeds12}")  # fmt: skip
    return summary


def runners() -> dict[str, Callable[[int, int, Data], list[dict]]]:
    """The methods to run, in table order (SparseVD only if the guide registry has it)."""
    found = {"l1": run_l1, "vadam_ard": run_vadam_ard, "horseshoe_svi": run_horseshoe}
    if "sparse_vd" in psb.guides.GUIDES:
        found["sparse_vd"] = run_sparse_vd
    return found


def run_task(task: tuple[str, int, int]) -> tuple[str, int, list[dict], float]:
    """One method on one seed, on one thread (a worker process of the pool)."""
    method, seed, epochs = task
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = runners()[method](seed, epochs, load())
    return method, seed, rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 seeds, shorter training")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    args = parser.parse_args()
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    seeds = range(2 if args.quick else args.seeds)
    budget = {"l1": 1000, "vadam_ard": 800, "horseshoe_svi": 300, "sparse_vd": 300}
    if not args.quick:
        budget = {"l1": 3000, "vadam_ard": 20000, "horseshoe_svi": 800, "sparse_vd": 800}
    methods = list(runners())
    pending = [] if "sparse_vd" in methods else ["sparse_vd (no 'sparsevd' guide)"]
    # the longest tasks (VADAM-ARD) first, so that the pool's workers finish together
    tasks = sorted(((m, s, budget[m]) for m in methods for s in seeds),
                   key=lambda t: t[0] != "vadam_ard")  # fmt: skip
    done: dict[tuple[str, int], list[dict]] = {}
    seconds = dict.fromkeys(methods, 0.0)
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for method, seed, rows, secs in pool.imap_unordered(run_task, tasks):
            done[method, seed] = rows
            seconds[method] += secs
            print(f"{method}, seed {seed}: {secs:.0f} s", flush=True)
    points = [row for m in methods for s in seeds for row in done[m, s]]
    summaries, front_rows = [], []
    for count in ("n_kept", "n_effective"):
        mean, per_seed = fronts(points, count)
        print(f"\nmean Pareto front over seeds, test error against {count}:")
        print_table([{"n": n, **{m: mean[m][n] for m in mean}} for n in COUNTS], ["n", *mean])
        summaries.append(compare(mean, per_seed, count))
        front_rows += [
            {"kind": "front", "method": m, "count": count, "seed": "mean", "n": n,
             "test_error": e}
            for m, f in mean.items() for n, e in f.items()
        ]  # fmt: skip
        if count == "n_kept":
            plot(mean, per_seed)
    alone = network_fronts(points)
    print("\nVADAM-ARD's mean front over n_kept, each trained network alone:")
    print_table([{"n": n, **{c: alone[c][n] for c in alone}} for n in COUNTS if n <= 12],
                ["n", *alone])  # fmt: skip
    front_rows += [
        {"kind": "network_front", "method": "vadam_ard", "config": c, "count": "n_kept",
         "seed": "mean", "n": n, "test_error": e}
        for c, f in alone.items() for n, e in f.items()
    ]  # fmt: skip
    if pending:
        print("pending:", *pending)
    path = write_results(
        "pareto_iris",
        points + front_rows,
        seeds=list(seeds),
        data_split="datasets.load('iris', split='train'|'test', seed=0): 112 train / 38 test",
        network="4-8(ReLU)-3, 67 parameters; biases counted and prunable",
        budget_epochs=budget,
        jobs=args.jobs,
        seconds_per_method=seconds,
        pending=pending,
        summary=summaries,
    )
    print(f"wrote {path} and {RESULTS / 'pareto_iris.png'}")


if __name__ == "__main__":
    main()
