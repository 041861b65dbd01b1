"""Seconds per training step with 1 and 2 torch intra-op threads, from tiny to large models: where
does a second thread start to pay, and does the loops' thread rule pick the faster count?

    python benchmarks/threads.py [--quick] [--rounds 3] [--busy 0,1]

Workloads: iris 4-8-3 with L1 and with horseshoe SVI (the README's ten-line fit), digits
64-300-100-10, LeNet-300-100 (784-300-100-10, MNIST-10k) and a wide 784-1200-1200-10 net, each
with SVI and L1 at batch 128 (LeNet also at 1024), plus NUTS (tree depth at most 5) and SGLD on
iris. Each fit runs with ``PSBNN_NUM_THREADS=1``, ``=2`` and unset (``auto``: the rule of the
loops and public calls, torch at 2 threads), in rounds that alternate the order; a fit's time per
step is the median over its epochs after the first (NUTS: the whole fit over its iterations), and
a row reports the median over rounds.

``--busy K`` adds K processes that spin on a core for the whole run (a busy machine, as when other
jobs share it); ``--busy 0,1`` measures both. The 1-minute load average before and after each
condition is in ``load_before`` / ``load_after``. ``work`` is what the rule sees: the trainable
values that one step updates (``isolation.trainable_elements``; SVI counts the guide's means and
scales). ``weights_x_rows`` is the multiply-adds of one forward pass.

``readme`` rows time the README's ten-line program (``python -c``, imports included) in a fresh
interpreter, torch at its default thread count: with the rule (``PSBNN_NUM_THREADS`` unset) and
with one thread everywhere (``OMP_NUM_THREADS=1``).

Writes benchmarks/results/threads.json (``--quick``: threads_quick.json): one row per
(condition, workload), and in ``meta`` the crossover: the smallest ``work`` from which 2 threads
were at least as fast as 1 in every measured workload and condition.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import print_table, write_results

import pyro_sparse_bnn as psb
from pyro_sparse_bnn import isolation
from pyro_sparse_bnn.infer import loop
from pyro_sparse_bnn.infer.mcmc import run as mcmc_run
from pyro_sparse_bnn.infer.sgmcmc import run as sgmcmc_run

LOOP_MODULES = (loop, mcmc_run, sgmcmc_run)


@dataclass
class Workload:
    name: str
    data: str
    sizes: list[int]
    method: str
    batch: int | None
    epochs: int
    rows: int | None = None  # training rows used (None: all)
    options: dict | None = None


WORKLOADS = [
    Workload("iris_l1", "iris", [4, 8, 3], "l1", None, 300),
    Workload("iris_svi", "iris", [4, 8, 3], "svi", None, 150),
    Workload("iris_nuts", "iris", [4, 8, 3], "nuts", None, 1, options={"num_chains": 2}),
    Workload("iris_sgld", "iris", [4, 8, 3], "sgld", 32, 400, options={"num_chains": 2}),
    Workload("digits_l1", "digits", [64, 300, 100, 10], "l1", 128, 12),
    Workload("digits_svi", "digits", [64, 300, 100, 10], "svi", 128, 6),
    Workload("lenet_l1", "mnist", [784, 300, 100, 10], "l1", 128, 6, rows=1024),
    Workload("lenet_svi", "mnist", [784, 300, 100, 10], "svi", 128, 3, rows=512),
    Workload("lenet_l1_b1024", "mnist", [784, 300, 100, 10], "l1", 1024, 6, rows=4096),
    Workload("lenet_svi_b1024", "mnist", [784, 300, 100, 10], "svi", 1024, 3, rows=2048),
    Workload("wide_l1", "mnist", [784, 1200, 1200, 10], "l1", 128, 4, rows=1024),
    Workload("wide_svi", "mnist", [784, 1200, 1200, 10], "svi", 128, 3, rows=256),
]
QUICK = ["iris_l1", "iris_svi", "digits_svi", "lenet_l1", "lenet_svi"]
CONFIGS = {"1": "1", "2": "2", "auto": "auto"}  # column -> PSBNN_NUM_THREADS


def weights(sizes: list[int]) -> int:
    return sum(a * b for a, b in itertools.pairwise(sizes))


def load_data(workload: Workload) -> tuple[torch.Tensor, torch.Tensor]:
    if workload.data == "mnist":
        x, y = psb.datasets.load_mnist(split="train")
    else:
        x, y = psb.datasets.load(workload.data, split="train")
    rows = workload.rows or x.shape[0]
    return x[:rows], y[:rows]


def fit_once(workload: Workload, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """Seconds per step of one fit (median over epochs after the first), and the work the rule
    saw."""
    torch.manual_seed(0)
    bnn = psb.SparseBNN(
        psb.mlp(workload.sizes), psb.priors.Horseshoe(0.1), psb.likelihoods.Categorical()
    )
    stamps: list[float] = []
    seen: list[int] = []

    def recording(work: int | None, num_threads: int | None = None) -> Any:
        seen.append(work)
        return isolation.loop_threads(work, num_threads)

    def callback(step: int, loss: float) -> None:
        stamps.append(time.perf_counter())

    options: dict = dict(workload.options or {})
    n = x.shape[0]
    if workload.method == "nuts":
        options |= {"warmup": 10, "num_samples": 10, "max_tree_depth": 5}
        steps = 20
    elif workload.method == "sgld":
        options |= {"warmup": workload.epochs // 2, "num_samples": workload.epochs // 2}
        options |= {"batch_size": workload.batch, "callback": callback}
        steps = 1
    else:
        options |= {"epochs": workload.epochs, "callback": callback}
        if workload.method == "svi":
            options["num_posterior_samples"] = 2
        if workload.batch is not None:
            options["batch_size"] = workload.batch
        steps = math.ceil(n / (workload.batch or n))
    for module in LOOP_MODULES:  # the work each training loop hands the rule
        module.loop_threads = recording
    try:
        start = time.perf_counter()
        psb.fit(bnn, x, y, method=workload.method, progress=False, **options)
        total = time.perf_counter() - start
    finally:
        for module in LOOP_MODULES:
            module.loop_threads = isolation.loop_threads
    if workload.method == "nuts":
        return total / steps, seen[0]
    per_epoch = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(per_epoch) / steps, seen[0]


def measure(names: list[str], rounds: int) -> list[dict]:
    rows = []
    for workload in [w for w in WORKLOADS if w.name in names]:
        x, y = load_data(workload)
        times: dict[str, list[float]] = {c: [] for c in CONFIGS}
        work = 0
        for r in range(rounds + 1):  # round 0 warms up (imports, allocator, traces)
            order = list(CONFIGS) if r % 2 else list(reversed(CONFIGS))
            for column in order if r else ["1"]:
                os.environ[isolation.THREADS_VARIABLE] = CONFIGS[column]
                torch.set_num_threads(1 if column == "1" else 2)
                seconds, work = fit_once(workload, x, y)
                if r:
                    times[column].append(seconds)
        t1, t2, auto = (statistics.median(times[c]) for c in CONFIGS)
        rows.append(
            {
                "workload": workload.name,
                "method": workload.method,
                "sizes": "-".join(map(str, workload.sizes)),
                "batch": workload.batch or x.shape[0],
                "work": work,
                "weights_x_rows": weights(workload.sizes) * (workload.batch or x.shape[0]),
                "ms_1_thread": 1e3 * t1,
                "ms_2_threads": 1e3 * t2,
                "speedup_2_over_1": t1 / t2,
                "ms_auto": 1e3 * auto,
                "auto_threads": isolation.threads_for(work),
                "ms_1_thread_all": [1e3 * t for t in times["1"]],
                "ms_2_threads_all": [1e3 * t for t in times["2"]],
            }
        )
        print(
            f"  {workload.name}: 1 thread {1e3 * t1:.3g} ms, 2 threads {1e3 * t2:.3g} ms, "
            f"auto {1e3 * auto:.3g} ms (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )
    return rows


def readme_program() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]


def readme_rows(rounds: int) -> list[dict]:
    """Wall seconds of the README's ten-line program in a fresh interpreter."""
    program = readme_program()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    base.pop(isolation.THREADS_VARIABLE, None)
    envs = {"auto": base, "one_thread_everywhere": base | {"OMP_NUM_THREADS": "1"}}
    times: dict[str, list[float]] = {name: [] for name in envs}
    for r in range(rounds):
        for name in list(envs) if r % 2 == 0 else list(reversed(envs)):
            start = time.perf_counter()
            command = [sys.executable, "-c", program]
            subprocess.run(command, env=envs[name], check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        rows.append({"workload": f"readme_{name}", "seconds": median, "seconds_all": samples})
        print(f"  README program, {name}: {median:.3g} s", flush=True)
    return rows


def crossover(rows: list[dict]) -> int | None:
    """The smallest ``work`` from which 2 threads were never slower than 1; None if the largest
    workload was still slower with 2."""
    ordered = sorted(rows, key=lambda r: r["work"])
    start = None
    for row in ordered:
        if row["speedup_2_over_1"] < 1.0:
            start = None
        elif start is None:
            start = row["work"]
    return start


def spinners(count: int) -> list[subprocess.Popen]:
    code = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 workloads, 1 round, no --busy 1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", default="0,1", help="extra spinning processes, e.g. 0,1")
    parser.add_argument("--readme-rounds", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="the model has non-Bayesian parameters")
    names = QUICK if args.quick else [w.name for w in WORKLOADS]
    rounds = 1 if args.quick else args.rounds
    busy = [0] if args.quick else [int(b) for b in args.busy.split(",")]
    saved_threads, saved_env = torch.get_num_threads(), os.environ.get(isolation.THREADS_VARIABLE)
    rows: list[dict] = []
    readmes: list[dict] = []
    try:
        for extra in busy:
            print(f"condition: {extra} extra spinning process(es)", flush=True)
            load_before = os.getloadavg()[0]
            procs = spinners(extra)
            try:
                condition = measure(names, rounds)
                readme = [] if args.quick else readme_rows(args.readme_rounds)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
            for row in condition + readme:
                row |= {"extra_busy_processes": extra, "load_before": load_before}
                row["load_after"] = os.getloadavg()[0]
            rows += condition
            readmes += readme
    finally:
        torch.set_num_threads(saved_threads)
        if saved_env is None:
            os.environ.pop(isolation.THREADS_VARIABLE, None)
        else:
            os.environ[isolation.THREADS_VARIABLE] = saved_env
    columns = [
        "extra_busy_processes", "workload", "batch", "work", "weights_x_rows", "ms_1_thread",
        "ms_2_threads", "speedup_2_over_1", "auto_threads", "ms_auto",
    ]  # fmt: skip
    print_table(rows, columns)
    if readmes:
        print_table(readmes, ["extra_busy_processes", "workload", "seconds", "load_before"])
    by_condition = {
        str(extra): crossover([r for r in rows if r["extra_busy_processes"] == extra])
        for extra in busy
    }
    overall = crossover(rows) if len(busy) == 1 else None
    if len(busy) > 1:
        values = list(by_condition.values())
        overall = None if None in values else max(values)
    largest = max(r["work"] for r in rows)
    print(f"2 threads never slower from work = {by_condition} (per extra busy processes)")
    print(
        f"crossover (all conditions): {overall if overall is not None else f'> {largest}'}; "
        f"the rule's threshold: isolation.SINGLE_THREAD_BELOW = {isolation.SINGLE_THREAD_BELOW}"
    )
    name = "threads_quick" if args.quick else "threads"
    path = write_results(
        name,
        rows + readmes,
        rounds=rounds,
        busy=busy,
        torch_default_threads=saved_threads,
        crossover_by_busy=by_condition,
        crossover=overall,
        largest_work=largest,
        single_thread_below=isolation.SINGLE_THREAD_BELOW,
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
