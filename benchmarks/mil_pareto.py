"""Pareto fronts of test error against kept parameters for the seed's MeanMax bag network on
MNIST-bags: VADAM-ARD against L1 with magnitude pruning.

    python benchmarks/mil_pareto.py [--quick] [--seeds 5] [--jobs 2] [--musk clean2.data]

Data: ``mil.mnist_bags`` from scikit-learn's 8x8 digits (the raw 64 pixels, standardised with the
training images; no projection): a bag is positive when it holds a 9; bag sizes
``round(Normal(10, sqrt 2))``; 200 training bags drawn with seed ``s`` and 1000 test bags with
seed ``1000 + s`` from disjoint image pools, so each seed ``s`` is a new data draw *and* a new
initialisation, weight noise and data order. About 63 % of the test bags are positive.
Network: ``mil.musk_net(in_features=64)``, 64 -> 10 (tanh) -> MeanMax -> 10 (tanh) -> 2, the
seed's Musk architecture with 64 inputs instead of 166: 882 parameters, biases counted and
prunable (as in pareto_iris.py).

``--musk PATH`` runs the seed's own experiment on a UCI Musk file (``clean1.data`` or
``clean2.data``, not shipped: ``mil.load_musk``): the seed's exact network, 166 -> 10 (tanh) ->
MeanMax -> 10 (tanh) -> 2 (1,902 parameters), the same methods and sweeps, each seed ``s`` a new
stratified split of the molecules (75 % train, 25 % test, ``load_musk(seed=s)``) and a new
initialisation. It writes ``mil_pareto_musk.json``/``.png``.

Methods:

* ``l1``: 1000 full-batch Adam steps (lr 0.01) on ``mean NLL + lambda * sum |theta|`` over all
  882 parameters for each ``lambda`` in ``L1_LAMBDAS``, then magnitude pruning (keep the ``n``
  largest ``|theta|``, no retraining); the deterministic network predicts.
* ``vadam_ard``: ``fit(method="vadam", ard=True)`` with ARD on every parameter, 3000 full-batch
  VOGN steps at lr 0.01, for each ``kl_weight`` in ``KL_WEIGHTS`` (1 is the Bayesian posterior;
  below 1 the likelihood weighs more, VADAM-ARD's counterpart of a smaller L1 ``lambda``: at
  ``kl_weight`` 1 and 0.3 on 200 bags the posterior mean network stays at the majority rule, see
  the rows); each pruned by ``|mu| > k sigma`` (suffix ``snr``) and by the learned prior variance
  ``1 / psi > t`` (suffix ``ard``) for a sweep of thresholds; the posterior predictive of the
  masked draws (``DRAWS``) predicts.
* ``ivon_ard``: ``fit(method="ivon", ard=True)`` at ``kl_weight`` 1, 3000 full-batch steps at
  lr 0.1, pruned and evaluated as VADAM-ARD (context: the goal compares VADAM-ARD with L1).

Every threshold is swept so that each count in ``COUNTS`` is reached. ``n_kept`` counts unmasked
parameters, ``n_effective`` those on a path from input to output (``result.compression()``'s
rule, through the pruned bag network). Goal: VADAM-ARD's mean front at or below L1's at 80 % of
the counts. Writes benchmarks/results/mil_pareto.json (rows as pareto_iris.json's: kind "point",
"front") and benchmarks/results/mil_pareto.png (``--quick``: ``mil_pareto_quick.*``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import _pareto
import pandas as pd
import torch
from _common import RESULTS, print_table, write_results
from torch import Tensor, nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.prune import prune

COUNTS = [*range(2, 21, 2), 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000, 1500]
"""Kept counts at which the fronts are read (those below the network's size, then its size)."""
L1_LAMBDAS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
KL_WEIGHTS = [0.03, 0.1, 0.3, 1.0]
DRAWS = 32
GOAL_SHARE = 0.8
Data = tuple[Tensor, Tensor, Tensor, Tensor]


def load(seed: int, n_train: int, musk: str | None = None) -> Data:
    """MNIST-bags (``n_train`` training bags), or a seeded split of a Musk file's molecules."""
    if musk is not None:
        return (*psb.mil.load_musk(musk, "train", seed=seed),
                *psb.mil.load_musk(musk, "test", seed=seed))  # fmt: skip
    x, y = psb.mil.mnist_bags("train", n_bags=n_train, seed=seed)
    x_test, y_test = psb.mil.mnist_bags("test", n_bags=1000, seed=1000 + seed)
    return x, y, x_test, y_test


def network(seed: int, data: Data) -> psb.mil.MILNet:
    """The seed's MeanMax network for the instances of ``data`` (64 or 166 features)."""
    torch.manual_seed(seed)
    return psb.mil.musk_net(in_features=data[0].shape[-1] - 1)  # the first column is the mask


def counts_for(n_params: int) -> list[int]:
    return [c for c in COUNTS if c < n_params] + [n_params]


def effective(net: nn.Module, masks: dict[str, Tensor]) -> int:
    """Kept parameters left in the pruned bag network (dead units removed, constants folded)."""
    masked = psb.prune.masked_network(net, masks=masks)
    numbered = {k: torch.arange(1, v.numel() + 1, dtype=torch.float64).reshape(v.shape) * masks[k]
                for k, v in masked.state_dict().items()}  # fmt: skip
    small = prune(psb.prune.masked_network(masked.double(), numbered))
    return sum(int((p != 0).sum()) for p in small.parameters())


def _row(method: str, config: str, seed: int, net: nn.Module, masks: dict[str, Tensor],
         error: float, threshold: float) -> dict:  # fmt: skip
    return _pareto.point(method, config, seed, masks, effective(net, masks), error, threshold)


def run_l1(seed: int, steps: int, data: Data) -> list[dict]:
    x, y, x_test, y_test = data
    rows = []
    for lam in L1_LAMBDAS:
        net = _pareto.train_l1(network(seed, data), x, y, lam, steps)
        params = {k: p.detach() for k, p in net.named_parameters()}
        flat = torch.cat([p.abs().flatten() for p in params.values()])
        for cut in _pareto.thresholds(flat, counts_for(len(flat))):
            masks = {k: p.abs() > cut for k, p in params.items()}
            pruned = psb.prune.masked_network(net, masks=masks)
            with torch.no_grad():
                error = float((pruned(x_test).argmax(-1) != y_test).float().mean())
            rows.append(_row("l1", f"lambda={lam:g}", seed, net, masks, error, cut))
    return rows


def bayesian_sweep(method: str, config: str, seed: int, result: psb.FitResult,
                   data: Data) -> list[dict]:  # fmt: skip
    """Points at every count for both of ARD's pruning rules: the posterior predictive of the
    masked draws on the test bags."""
    x_test, y_test = data[2:]
    net, rows = network(seed, data), []
    for by in ("snr", "ard"):
        relevance = result.relevance(by)
        flat = torch.cat([r.flatten() for r in relevance.values()])
        for k in _pareto.thresholds(flat, counts_for(len(flat))):
            masks = result.masks(k, by)
            accuracy = result.evaluate(x_test, y_test, masked=masks)["accuracy"]
            rows.append(_row(method, f"{config},{by}", seed, net, masks, 1.0 - accuracy, k))
    return rows


def ard_network(seed: int, data: Data) -> psb.SparseBNN:
    return psb.SparseBNN(network(seed, data), psb.priors.ARD(), psb.likelihoods.Categorical(),
                         bias_prior=psb.priors.ARD())  # fmt: skip


def run_vadam_ard(seed: int, steps: int, data: Data) -> list[dict]:
    x, y = data[:2]
    rows = []
    for kl_weight in KL_WEIGHTS:
        result = psb.fit(
            ard_network(seed, data), x, y, method="vadam", ard=True, kl_weight=kl_weight,
            epochs=steps, lr=0.01, seed=seed, num_posterior_samples=DRAWS, progress=False,
        )  # fmt: skip
        rows += bayesian_sweep("vadam_ard", f"kl_weight={kl_weight:g}", seed, result, data)
    return rows


def run_ivon_ard(seed: int, steps: int, data: Data) -> list[dict]:
    x, y = data[:2]
    result = psb.fit(
        ard_network(seed, data), x, y, method="ivon", ard=True, epochs=steps, lr=0.1, seed=seed,
        num_posterior_samples=DRAWS, progress=False,
    )  # fmt: skip
    return bayesian_sweep("ivon_ard", "kl_weight=1,lr=0.1", seed, result, data)


RUNNERS = {"vadam_ard": run_vadam_ard, "ivon_ard": run_ivon_ard, "l1": run_l1}


def run_task(task: tuple[str, int, int, int, str | None]) -> tuple[str, int, list[dict], float]:
    """One method on one seed, on one thread (a worker process of the pool)."""
    method, seed, steps, n_train, musk = task
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = RUNNERS[method](seed, steps, load(seed, n_train, musk))
    return method, seed, rows, time.perf_counter() - start


def plot(mean: dict[str, dict[int, float]], per_seed: pd.DataFrame, name: str, n_params: int,
         data: str) -> None:  # fmt: skip
    _pareto.plot_fronts(
        mean, per_seed, RESULTS / f"{name}.png",
        xlabel=f"kept parameters (of {n_params}, biases included)",
        ylabel="test error (test bags)",
        title=f"{data} MeanMax net: mean fronts over seeds (thin: each seed)",
    )  # fmt: skip


def compare(mean: dict[str, dict[int, float]], per_seed: pd.DataFrame, count: str,
            counts: list[int]) -> dict:  # fmt: skip
    vadam, l1 = mean["vadam_ard"], mean["l1"]
    at_or_below = [n for n in counts if vadam[n] <= l1[n] + 1e-9]
    share = len(at_or_below) / len(counts)
    spread = per_seed.groupby(["method", "n"])["test_error"].std().unstack(0)
    summary = {
        "count": count,
        "share_of_counts_vadam_at_or_below_l1": share,
        "goal_met": share >= GOAL_SHARE,
        "vadam_above_l1_at": [n for n in counts if n not in at_or_below],
        "front_sd_over_seeds": {m: spread[m].to_dict() for m in spread},
    }
    print(f"[{count}] VADAM-ARD's mean front at or below L1's at {share:.0%} of the counts "
          f"(goal {GOAL_SHARE:.0%}): {'met' if summary['goal_met'] else 'NOT met'}; above at "
          f"n = {summary['vadam_above_l1_at']}")  # fmt: skip
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 seeds, shorter training")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    parser.add_argument("--musk", help="a UCI Musk file (clean1.data, clean2.data) instead of "
                        "MNIST-bags: the seed's 166-input network")  # fmt: skip
    args = parser.parse_args()
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")
    musk = None if args.musk is None else str(Path(args.musk).resolve())
    seeds = range(2 if args.quick else args.seeds)
    name = "mil_pareto" + ("_musk" if musk else "") + ("_quick" if args.quick else "")
    steps = {"l1": 1000, "vadam_ard": 3000, "ivon_ard": 3000}
    if args.quick:
        steps = {"l1": 300, "vadam_ard": 600, "ivon_ard": 600}
    n_train = 200
    tasks = [(m, s, steps[m], n_train, musk) for m in RUNNERS for s in seeds]  # longest first
    done: dict[tuple[str, int], list[dict]] = {}
    seconds = dict.fromkeys(RUNNERS, 0.0)
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for method, seed, rows, secs in pool.imap_unordered(run_task, tasks):
            done[method, seed] = rows
            seconds[method] += secs
            print(f"{method}, seed {seed}: {secs:.0f} s", flush=True)
    points = [row for m in RUNNERS for s in seeds for row in done[m, s]]
    frame = pd.DataFrame(points)
    best = frame.groupby(["method", "config", "seed"])["test_error"].min().unstack("seed")
    print("\nlowest test error of each configuration at any count, per seed:")
    print(best.round(3).to_string())
    sample = load(0, 2, musk)
    inputs = sample[0].shape[-1] - 1
    n_params = sum(p.numel() for p in network(0, sample).parameters())
    counts = counts_for(n_params)
    if musk:
        data = f"UCI Musk {Path(musk).name}: molecules as bags, 75 / 25 % split (seed s)"
    else:
        data = ("mil.mnist_bags(source='digits'): raw 64 standardised pixels, target digit 9, "
                f"{n_train} train bags (seed s), 1000 test bags (seed 1000 + s)")  # fmt: skip
    summaries, front_rows = [], []
    for count in ("n_kept", "n_effective"):
        mean, per_seed = _pareto.fronts(points, count, counts, n_params)
        print(f"\nmean Pareto front over seeds, test error against {count}:")
        print_table([{"n": n, **{m: mean[m][n] for m in mean}} for n in counts], ["n", *mean])
        summaries.append(compare(mean, per_seed, count, counts))
        front_rows += [
            {"kind": "front", "method": m, "count": count, "seed": "mean", "n": n,
             "test_error": e}
            for m, f in mean.items() for n, e in f.items()
        ]  # fmt: skip
        if count == "n_kept":
            plot(mean, per_seed, name, n_params, "Musk" if musk else "MNIST-bags")
    path = write_results(
        name,
        points + front_rows,
        seeds=list(seeds),
        data=data,
        network=f"mil.musk_net(in_features={inputs}): {inputs}-10(tanh)-MeanMax-10(tanh)-2, "
        f"{n_params} parameters",
        steps=steps,
        jobs=args.jobs,
        seconds_per_method=seconds,
        summary=summaries,
    )
    print(f"wrote {path} and {RESULTS / f'{name}.png'}")


if __name__ == "__main__":
    main()
