"""IVON, IVON-ARD, VADAM (VOGN) and Adam side by side: step cost, accuracy and compression.

    python benchmarks/ivon_compare.py [--quick] [--parts speed digits mnist compress iris]

One torch thread throughout. Parts (each writes its rows, ``part`` naming it):

* ``speed``: milliseconds per optimiser step on plain torch MLPs, 784-400-400-10 (batch 128,
  random inputs) and 64-300-100-10 (batch 64, digits), every optimiser stepping in turn on the
  same minibatch, in a random order each round (a fixed rotation makes each optimiser follow the
  same one, whose memory traffic it then pays for); the median over rounds of CPU time. Optimisers:
  ``adam``; ``ivon`` (ours, :class:`~pyro_sparse_bnn.infer.ivon.IVON`) and ``ivon_opt`` (the
  ``ivon-opt`` package it wraps); ``vogn`` (per-example squares in closed form) and
  ``vogn_vmap`` (the same optimiser through ``torch.func.vmap``); ``vadam`` (minibatch-mean
  squares). Rows hold ``ms_per_step`` and the ratios to Adam, IVON/VOGN and ours/ivon-opt.
* ``digits``: ``fit`` on scikit-learn digits (64-300-100-10, batch 64, ``EPOCHS`` epochs; data
  split and network seeds 0, 1, 2) with Adam (``method="l1"``, ``l1=0``), VADAM (VOGN) at its
  defaults, IVON and IVON-ARD at theirs: test error, NLL and ECE of the posterior predictive;
  IVON-ARD also the weights it keeps (SNR > ``exp(-1.5)``, SparseVD's ``log_alpha < 3``) and the
  error of its masked network.
* ``mnist``: the same on MNIST-10k (8,000 / 2,000 split of the official test set, seeds 0, 1)
  with LeNet-300-100 (batch 100).
* ``compress``: LeNet-300-100 on MNIST-10k at ``compress_mnist.py``'s settings and scoring
  (``_compress.run_method``, ``COMPRESS_EPOCHS`` epochs): IVON-ARD, VADAM-ARD, SparseVD and
  dense Adam, each pruned physically; the summary row gives each method's most compressed point
  with error at most dense + 0.5 pp.
* ``iris``: IVON-ARD's Pareto front (test error against kept parameters, 5 seeds, 67-parameter
  4-8-3 network, ``pareto_iris.py``'s sweep) next to the L1 and VADAM-ARD fronts stored in
  ``results/pareto_iris.json`` by that script (same split, seeds and scoring).

Writes benchmarks/results/ivon_compare.json. (Not ``ivon.py``: a script of that name would
shadow the ``ivon`` package for every benchmark run from this folder.)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable

import ivon
import torch
import torch.nn.functional as F
from _common import RESULTS, print_table, write_results
from torch import Tensor, nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.ivon import IVON
from pyro_sparse_bnn.infer.vadam import VOGN, Vadam

EPOCHS = 50
COMPRESS_EPOCHS = 100
SNR = math.exp(-1.5)
PARTS = ("speed", "digits", "mnist", "compress", "iris")


# -- speed -----------------------------------------------------------------------------------


def _optimisers(base: nn.Module, n: int) -> dict[str, tuple[nn.Module, Callable]]:
    """Each optimiser with its own copy of ``base``, as ``name: (net, step(x, y))``."""
    nets = {
        name: copy.deepcopy(base)
        for name in ("adam", "ivon", "ivon_opt", "vogn", "vogn_vmap", "vadam")
    }
    adam = torch.optim.Adam(nets["adam"].parameters(), lr=1e-3)
    ours = IVON(nets["ivon"].parameters(), lr=0.1, ess=n)
    theirs = ivon.IVON(nets["ivon_opt"].parameters(), lr=0.1, ess=n)
    vogn = VOGN(nets["vogn"].parameters(), num_data=n, lr=1e-3)
    vmapped = VOGN(nets["vogn_vmap"].parameters(), num_data=n, lr=1e-3)
    vadam = Vadam(nets["vadam"].parameters(), num_data=n, lr=1e-3)
    names = [name for name, _ in base.named_parameters()]

    def adam_step(x: Tensor, y: Tensor) -> None:
        adam.zero_grad()
        F.cross_entropy(nets["adam"](x), y).backward()
        adam.step()

    def ivon_step(opt: ivon.IVON, net: nn.Module) -> Callable[[Tensor, Tensor], None]:
        def step(x: Tensor, y: Tensor) -> None:
            with opt.sampled_params(train=True):
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
            opt.step()

        return step

    def vogn_step(x: Tensor, y: Tensor) -> None:
        vogn.step(lambda: F.cross_entropy(nets["vogn"](x), y, reduction="none"))

    def one(params: tuple[Tensor, ...], xi: Tensor, yi: Tensor) -> Tensor:
        out = torch.func.functional_call(
            nets["vogn_vmap"], dict(zip(names, params, strict=True)), (xi[None],)
        )
        return F.cross_entropy(out, yi[None])

    def vadam_step(x: Tensor, y: Tensor) -> None:
        def closure() -> Tensor:
            loss = F.cross_entropy(nets["vadam"](x), y)
            loss.backward()
            return loss

        vadam.step(closure)

    return {
        "adam": adam_step,
        "ivon": ivon_step(ours, nets["ivon"]),
        "ivon_opt": ivon_step(theirs, nets["ivon_opt"]),
        "vogn": vogn_step,
        "vogn_vmap": lambda x, y: vmapped.step(one, (x, y)),
        "vadam": vadam_step,
    }


def speed(quick: bool) -> list[dict]:
    rounds = 15 if quick else 120
    digits = psb.datasets.load("digits", split="train")
    gen = torch.Generator().manual_seed(0)
    nets = {
        "784-400-400-10": ([784, 400, 400, 10], torch.rand(2000, 784, generator=gen),
                           torch.randint(0, 10, (2000,), generator=gen), 128),
        "64-300-100-10": ([64, 300, 100, 10], *digits, 64),
    }  # fmt: skip
    rows = []
    for net_name, (sizes, x, y, batch) in nets.items():
        torch.manual_seed(0)
        steps = _optimisers(psb.mlp(sizes), len(x))
        times: dict[str, list[float]] = {name: [] for name in steps}
        order = list(steps)
        for r in range(rounds + 5):
            idx = torch.randint(0, len(x), (batch,), generator=gen)
            xb, yb = x[idx], y[idx]
            for i in torch.randperm(len(order), generator=gen).tolist():
                name = order[i]
                start = time.process_time()
                steps[name](xb, yb)
                if r >= 5:  # warm-up
                    times[name].append(time.process_time() - start)
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        row = {"part": "speed", "net": net_name, "batch_size": batch, "rounds": rounds}
        row |= {f"{name}_ms_per_step": round(v, 3) for name, v in ms.items()}
        row |= {
            "ivon_over_adam": ms["ivon"] / ms["adam"],
            "vogn_over_adam": ms["vogn"] / ms["adam"],
            "vadam_over_adam": ms["vadam"] / ms["adam"],
            "ivon_over_vogn": ms["ivon"] / ms["vogn"],
            "ivon_over_ivon_opt": ms["ivon"] / ms["ivon_opt"],
            "vogn_vmap_over_vogn": ms["vogn_vmap"] / ms["vogn"],
        }
        rows.append(row)
    print_table(rows, ["net", "adam_ms_per_step", "ivon_ms_per_step", "ivon_opt_ms_per_step",
                       "vogn_ms_per_step", "vogn_vmap_ms_per_step", "vadam_ms_per_step",
                       "ivon_over_adam", "vogn_over_adam", "ivon_over_ivon_opt"])  # fmt: skip
    return rows


# -- accuracy at equal epochs ------------------------------------------------------------------


def _fit(method: str, bnn: psb.SparseBNN, x: Tensor, y: Tensor, epochs: int, batch: int,
         seed: int) -> psb.FitResult:  # fmt: skip
    common = {"epochs": epochs, "batch_size": batch, "seed": seed, "progress": False}
    if method == "adam":
        return psb.fit(bnn, x, y, method="l1", l1=0.0, threshold=0.0, **common)
    if method == "vadam":
        return psb.fit(bnn, x, y, method="vadam", num_posterior_samples=20, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # IVON-ARD replaces the Normal prior
        return psb.fit(bnn, x, y, method="ivon", ard=method == "ivon_ard",
                       num_posterior_samples=20, **common)  # fmt: skip


def accuracy(part: str, data: Callable[[int], tuple], sizes: list[int], batch: int,
             seeds: list[int], epochs: int) -> list[dict]:  # fmt: skip
    rows = []
    for seed in seeds:
        x, y, x_test, y_test = data(seed)
        for method in ("adam", "vadam", "ivon", "ivon_ard"):
            torch.manual_seed(seed)
            bnn = psb.SparseBNN(psb.mlp(sizes), psb.priors.Normal(), psb.likelihoods.Categorical())
            start = time.perf_counter()
            fit = _fit(method, bnn, x, y, epochs, batch, seed)
            seconds = time.perf_counter() - start
            metrics = fit.evaluate(x_test, y_test)
            row = {"part": part, "method": method, "seed": seed, "epochs": epochs,
                   "test_error": 1 - metrics["accuracy"], "nll": metrics["nll"],
                   "ece": metrics["ece"], "seconds": seconds}  # fmt: skip
            if method == "ivon_ard":
                masks = fit.masks(SNR)
                row["n_weights"] = sum(m.numel() for m in masks.values())
                row["n_kept"] = sum(int(m.sum()) for m in masks.values())
                masked = fit.evaluate(x_test, y_test, masked=masks)
                row["masked_test_error"] = 1 - masked["accuracy"]
                row["masked_nll"] = masked["nll"]
            rows.append(row)
            print_table([row], ["part", "method", "seed", "test_error", "nll", "ece", "seconds"])
    summary = []
    for method in ("adam", "vadam", "ivon", "ivon_ard"):
        mine = [r for r in rows if r["method"] == method]
        out = {"part": part, "method": method, "kind": "summary", "seeds": len(mine)}
        for key in ("test_error", "nll", "ece", "n_kept", "masked_test_error"):
            values = [r[key] for r in mine if key in r]
            if values:
                out[f"{key}_mean"] = statistics.mean(values)
                out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
        summary.append(out)
    print_table(summary, ["part", "method", "test_error_mean", "nll_mean", "ece_mean",
                          "n_kept_mean", "masked_test_error_mean"])  # fmt: skip
    return rows + summary


def digits_data(seed: int) -> tuple:
    return (*psb.datasets.load("digits", split="train", seed=seed),
            *psb.datasets.load("digits", split="test", seed=seed))  # fmt: skip


def mnist_data(seed: int) -> tuple:
    return (*psb.datasets.load_mnist(split="train", seed=seed, progress=False),
            *psb.datasets.load_mnist(split="test", seed=seed, progress=False))  # fmt: skip


# -- compression -------------------------------------------------------------------------------


def compress(quick: bool) -> list[dict]:
    from _compress import best_point, run_method
    from compress_mnist import SETTINGS, lenet300

    epochs = 2 if quick else COMPRESS_EPOCHS
    settings = SETTINGS | {"epochs": epochs, "kl_warmup": max(1, epochs // 10)}
    data = mnist_data(0)

    def make_net() -> nn.Module:
        torch.manual_seed(SETTINGS["seed"])
        return lenet300()

    rows = []
    for method in ("dense", "sparsevd", "vadam_ard", "ivon_ard"):
        row = {
            "part": "compress",
            "net": "lenet300",
            **run_method(method, make_net, data, settings),
        }
        row.pop("pruned_network")
        rows.append(row)
        print_table([row], ["method", "test_error", "compression", "n_kept", "seconds"])
    budget = rows[0]["test_error"] + 0.005
    summary = {"part": "compress", "kind": "summary", "max_error": budget}
    for row in rows[1:]:
        best = best_point(row, budget)
        summary[f"{row['method']}_best_compression"] = None if best is None else best["compression"]
        summary[f"{row['method']}_best_error"] = None if best is None else best["test_error"]
    print(summary)
    return [*rows, summary]


# -- iris Pareto front -------------------------------------------------------------------------


def iris(quick: bool) -> list[dict]:
    from pareto_iris import COUNTS, DRAWS, bayesian_sweep, fronts, load, network

    stored = json.loads((RESULTS / "pareto_iris.json").read_text())["rows"]
    data = load()
    x, y = data[:2]
    points = []
    for seed in range(2 if quick else 5):
        prior = psb.priors.ARD()
        bnn = psb.SparseBNN(network(seed), prior, psb.likelihoods.Categorical(), bias_prior=prior)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = psb.fit(bnn, x, y, method="ivon", ard=True, epochs=300 if quick else 5000,
                             seed=seed, num_posterior_samples=DRAWS, progress=False)  # fmt: skip
        points += bayesian_sweep("ivon_ard", "defaults", seed, result, data)
    mean, _ = fronts(points, "n_kept")
    rows = []
    for n in COUNTS:
        row = {"part": "iris", "n": n, "ivon_ard": mean["ivon_ard"][n]}
        for other in ("l1", "vadam_ard"):
            match = [r for r in stored if r.get("kind") == "front" and r["method"] == other
                     and r["count"] == "n_kept" and r["n"] == n]  # fmt: skip
            row[other] = match[0]["test_error"] if match else None
        rows.append(row)
    print_table(rows, ["n", "ivon_ard", "vadam_ard", "l1"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized run")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = 2 if args.quick else EPOCHS
    runs = {
        "speed": lambda: speed(args.quick),
        "digits": lambda: accuracy("digits", digits_data, [64, 300, 100, 10], 64,
                                   [0] if args.quick else [0, 1, 2], epochs),
        "mnist": lambda: accuracy("mnist", mnist_data, [784, 300, 100, 10], 100,
                                  [0] if args.quick else [0, 1], epochs),
        "compress": lambda: compress(args.quick),
        "iris": lambda: iris(args.quick),
    }  # fmt: skip
    rows = []
    for part in args.parts:
        rows += runs[part]()
    previous = RESULTS / "ivon_compare.json"
    if not args.quick and previous.exists():  # keep the rows of parts not rerun
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["part"] not in args.parts]
        rows = kept + rows
    write_results(
        "ivon_compare", rows, epochs=epochs, compress_epochs=COMPRESS_EPOCHS, quick=args.quick
    )


if __name__ == "__main__":
    main()
