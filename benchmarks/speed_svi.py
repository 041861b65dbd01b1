"""SVI speed: plain torch, stock Pyro, and this package's default, eager, traced and compiled fits.

    python benchmarks/speed_svi.py [--quick] [--nets digits lenet300] [--rounds 3] [--no-compiled]

Networks (Normal(0, 1) priors on every weight and bias, Categorical likelihood, minibatches of 100
rows, Adam at lr 1e-3, torch on one thread):

* ``digits``: 64-300-100-10 on scikit-learn's digits (train split, 1,347 rows), 100 epochs;
* ``lenet300``: LeNet-300-100 (784-300-100-10) on MNIST-10k (8,000 train rows), 10 epochs.

Variants, each a complete fit per round (rounds interleaved, so load hits them alike):

* ``plain``: the deterministic network, Adam on the cross-entropy: the floor a Bayesian step is
  compared with;
* ``stock_pyro``: the textbook Pyro fit: the network as a ``PyroModule`` with ``PyroSample`` Normal
  priors, ``AutoNormal``, ``Trace_ELBO``, ``pyro.infer.SVI`` with ``pyro.optim.Adam``;
* ``default``: ``psb.fit(bnn, x, y, method="svi", ...)`` with no ``graph`` argument (mean-field
  guide, this package's ELBO; ``graph=None``: from 200 steps on, the faster of traced and eager);
* ``eager``, ``traced``, ``compiled``: the same fit with ``graph="eager" | "traced" |
  "compiled"`` (``compiled`` runs one round: Inductor compiles for tens of seconds).

Measured per fit: CPU seconds of every epoch (``time.process_time``; one thread, so load from
other processes does not count) and wall seconds of the whole fit including its set-up (building
the guide, tracing, compiling: Inductor compiles in worker processes, whose CPU time this
process's clock misses). A discarded two-epoch fit of each variant first pays the process's
one-time costs. ``ms_per_step`` is the median over epochs after the first of CPU time per
optimiser step, then the median over rounds; ``fit_wall_seconds`` the median whole-fit wall time
(``fit_cpu_seconds`` its CPU time in this process). ``over_plain`` divides ``ms_per_step`` by plain
torch's; ``stock_fit_over`` divides stock Pyro's whole-fit wall time by the variant's.

Goals (issue "Fast by default"): ``default`` at most 2.5x ``plain`` per step on both networks,
and a whole ``digits`` fit at least 3x faster than ``stock_pyro``'s.

Writes benchmarks/results/speed_svi.json.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import warnings
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from _common import print_table, write_results
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import Tensor, nn

import pyro_sparse_bnn as psb

BATCH = 100
LR = 1e-3
NETS = {"digits": ([64, 300, 100, 10], 100), "lenet300": ([784, 300, 100, 10], 10)}
VARIANTS = ("plain", "stock_pyro", "default", "eager", "traced", "compiled")
GOALS = {"default_over_plain_at_most": 2.5, "stock_fit_over_default_at_least": 3.0}

Fit = Callable[[Tensor, Tensor, list[int], int], tuple[float, list[float]]]
# A fit returns its CPU seconds in this process and the CPU seconds of each epoch.


def load(net: str) -> tuple[Tensor, Tensor]:
    if net == "digits":
        return psb.datasets.load("digits")
    return psb.datasets.load_mnist(split="train", progress=False)


def minibatches(n: int, generator: torch.Generator) -> list[Tensor]:
    return list(torch.randperm(n, generator=generator).split(BATCH))


def timed_epochs(epochs: int, run_epoch: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(epochs):
        start = time.process_time()
        run_epoch()
        times.append(time.process_time() - start)
    return times


def fit_plain(x: Tensor, y: Tensor, sizes: list[int], epochs: int) -> tuple[float, list[float]]:
    start = time.process_time()
    torch.manual_seed(0)
    net = psb.mlp(sizes)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    order = torch.Generator().manual_seed(0)

    def epoch() -> None:
        for idx in minibatches(len(x), order):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            loss.item()

    times = timed_epochs(epochs, epoch)
    return time.process_time() - start, times


def pyro_mlp(sizes: list[int]) -> PyroModule:
    """The network of ``psb.mlp(sizes)`` with a Normal(0, 1) prior on every parameter."""
    torch.manual_seed(0)
    net = psb.mlp(sizes)
    pyro.nn.module.to_pyro_module_(net)
    for module in net.modules():
        for name, value in list(module.named_parameters(recurse=False)):
            prior = dist.Normal(0.0, 1.0).expand(value.shape).to_event(value.dim())
            setattr(module, name, PyroSample(prior))
    return net


def fit_stock_pyro(
    x: Tensor, y: Tensor, sizes: list[int], epochs: int
) -> tuple[float, list[float]]:
    start = time.process_time()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net, n = pyro_mlp(sizes), len(x)

    def model(xb: Tensor, yb: Tensor) -> None:
        logits = net(xb)
        with pyro.plate("data", len(xb)), pyro.poutine.scale(scale=n / len(xb)):
            pyro.sample("y", dist.Categorical(logits=logits), obs=yb)

    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    order = torch.Generator().manual_seed(0)

    def epoch() -> None:
        for idx in minibatches(n, order):
            svi.step(x[idx], y[idx])

    times = timed_epochs(epochs, epoch)
    seconds = time.process_time() - start
    pyro.clear_param_store()
    return seconds, times


def fit_psb(graph: str | None) -> Fit:
    def fit(x: Tensor, y: Tensor, sizes: list[int], epochs: int) -> tuple[float, list[float]]:
        marks: list[float] = []
        start = time.process_time()
        torch.manual_seed(0)
        bnn = psb.SparseBNN(psb.mlp(sizes), psb.priors.Normal(), psb.likelihoods.Categorical())
        options = {} if graph is None else {"graph": graph}
        result = psb.fit(
            bnn, x, y, method="svi", epochs=epochs, batch_size=BATCH, lr=LR, progress=False,
            num_posterior_samples=2, callback=lambda e, loss: marks.append(time.process_time()),
            **options,
        )  # fmt: skip
        seconds = time.process_time() - start
        if not all(map(torch.isfinite, map(torch.tensor, result.info["history"]))):
            raise FloatingPointError(f"graph={graph}: the loss became non-finite")
        return seconds, [b - a for a, b in itertools.pairwise(marks)]

    return fit


FITS: dict[str, Fit] = {
    "plain": fit_plain,
    "stock_pyro": fit_stock_pyro,
    "default": fit_psb(None),
    "eager": fit_psb("eager"),
    "traced": fit_psb("traced"),
    "compiled": fit_psb("compiled"),
}


def measure(net: str, variants: list[str], rounds: int, quick: bool) -> list[dict]:
    sizes, epochs = NETS[net]
    epochs = 3 if quick else epochs
    x, y = load(net)
    steps = -(-len(x) // BATCH)
    step_ms: dict[str, list[float]] = {v: [] for v in variants}
    fit_s: dict[str, list[float]] = {v: [] for v in variants}
    wall_s: dict[str, list[float]] = {v: [] for v in variants}
    for variant in variants:  # one-time costs (lazy imports, first kernels) are not the fits'
        if variant != "compiled":
            FITS[variant](x[: 2 * BATCH], y[: 2 * BATCH], sizes, 2)
    for r in range(rounds):
        for variant in variants:
            if variant == "compiled" and r > 0:
                continue
            start = time.perf_counter()
            seconds, epoch_times = FITS[variant](x, y, sizes, epochs)
            wall_s[variant].append(time.perf_counter() - start)
            step_ms[variant].append(1000 * statistics.median(epoch_times[1:]) / steps)
            fit_s[variant].append(seconds)
            print(f"{net} round {r}: {variant} {seconds:.1f} s", flush=True)
    rows = []
    for variant in variants:
        rows.append({
            "net": net, "variant": variant, "epochs": epochs, "steps_per_epoch": steps,
            "rounds": len(fit_s[variant]),
            "ms_per_step": statistics.median(step_ms[variant]),
            "fit_cpu_seconds": statistics.median(fit_s[variant]),
            "fit_wall_seconds": statistics.median(wall_s[variant]),
        })  # fmt: skip
    by = {row["variant"]: row for row in rows}
    for row in rows:
        if "plain" in by:
            row["over_plain"] = row["ms_per_step"] / by["plain"]["ms_per_step"]
        if "stock_pyro" in by:
            row["stock_fit_over"] = by["stock_pyro"]["fit_wall_seconds"] / row["fit_wall_seconds"]
    return rows


def goals(rows: list[dict]) -> dict[str, bool | None]:
    default = {r["net"]: r for r in rows if r["variant"] == "default"}
    per_step = [r.get("over_plain") for r in default.values()]
    digits_fit = default.get("digits", {}).get("stock_fit_over")
    return {
        "default_per_step": None
        if None in per_step or not per_step
        else max(per_step) <= GOALS["default_over_plain_at_most"],
        "default_digits_fit": None
        if digits_fit is None
        else digits_fit >= GOALS["stock_fit_over_default_at_least"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 epochs, 1 round")
    parser.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compiled", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = [v for v in VARIANTS if not (args.no_compiled and v == "compiled")]
    rounds = 1 if args.quick else args.rounds
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Pyro's PyroModule on recent torch
        for net in args.nets:
            rows += measure(net, variants, rounds, args.quick)
    met = goals(rows)
    print_table(rows, ["net", "variant", "ms_per_step", "over_plain", "fit_cpu_seconds",
                       "fit_wall_seconds", "stock_fit_over"])  # fmt: skip
    print("goals met:", met)
    write_results("speed_svi_quick" if args.quick else "speed_svi", rows, quick=args.quick,
                  batch=BATCH, lr=LR, goals=GOALS, goals_met=met, threads=1)  # fmt: skip


if __name__ == "__main__":
    main()
