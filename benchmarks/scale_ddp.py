"""Throughput of data-parallel SVI: LeNet-300-100 on MNIST-10k with 1 and 2 CPU processes.

    python benchmarks/scale_ddp.py [--quick]

The network is LeNet-300-100 (784-300(ReLU)-100(ReLU)-10) with a horseshoe prior grouped per
input neuron (non-centred) and the mean-field guide, trained by SVI on the seeded 8,000-image
train split of the shipped MNIST-10k with a global batch of 100 rows. Each configuration runs
in its own Python process with one torch thread per process:

* ``loader``: :func:`fit_svi_loader` (the plain loop, no Lightning), 1 process;
* ``lightning``: :func:`fit_lightning` with 1 process, and with ``strategy="ddp"`` on 2 gloo
  processes (local batch 50 each).

Throughput (examples/s) is the training rows of the epochs after the first divided by their wall
time (start-up and the first epoch excluded); efficiency is the 2-process throughput over twice
the 1-process Lightning throughput. The machine's load average is recorded: the CPU is shared.
Writes benchmarks/results/scale_ddp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
from _common import print_table, write_results
from torch.utils.data import DataLoader, TensorDataset

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.streaming import fit_svi_loader

GLOBAL_BATCH, SEED = 100, 0


def problem(rows: int) -> tuple[TensorDataset, psb.SparseBNN]:
    X, y = psb.datasets.load_mnist(split="train", seed=SEED)
    torch.manual_seed(SEED)
    prior = psb.priors.Horseshoe(global_scale=1e-3, groups="in")
    bnn = psb.SparseBNN(psb.mlp([784, 300, 100, 10]), prior, psb.likelihoods.Categorical())
    return TensorDataset(X[:rows], y[:rows]), bnn


def epoch_times(stamps: list[float], rows: int) -> dict[str, float]:
    """Examples/s over the epochs after the first, from the epoch-boundary time stamps."""
    seconds = stamps[-1] - stamps[1]
    epochs = len(stamps) - 2
    return {"examples_per_s": rows * epochs / seconds, "seconds_per_epoch": seconds / epochs}


def worker(mode: str, processes: int, rows: int, epochs: int, out: str) -> None:
    """One configuration; the first process writes its row to ``out``."""
    torch.set_num_threads(1)
    dataset, bnn = problem(rows)
    options = {"epochs": epochs, "lr": 1e-3, "kl_warmup": 0, "seed": SEED, "progress": False}
    options["num_posterior_samples"] = 1
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // processes, shuffle=True)
    stamps: list[float] = []
    if mode == "loader":

        def stamp(epoch: int, loss: float) -> None:
            stamps.append(time.perf_counter())

        stamps.append(time.perf_counter())  # the callback stamps each epoch's end
        result = fit_svi_loader(bnn, loader, callback=stamp, **options)
    else:
        import lightning.pytorch as pl

        from pyro_sparse_bnn.lightning import fit_lightning

        class Stamp(pl.Callback):
            def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule):
                stamps.append(time.perf_counter())

            def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule):
                stamps.append(time.perf_counter())

        result = fit_lightning(
            bnn,
            loader,
            accelerator="cpu",
            devices=processes,
            strategy="ddp" if processes > 1 else "auto",
            trainer_options={"callbacks": [Stamp()]},
            **options,
        )
    if result.info.get("global_rank", 0) == 0:
        row = {
            "mode": mode,
            "processes": processes,
            "global_batch": GLOBAL_BATCH,
            "local_batch": GLOBAL_BATCH // processes,
            "rows": rows,
            "epochs": epochs,
            **epoch_times(stamps, rows),
            "final_loss": result.info["history"][-1],
        }
        Path(out).write_text(json.dumps(row))


def run(mode: str, processes: int, rows: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, __file__, "--worker", mode, str(processes), str(rows)]
        command += [str(epochs), str(out)]
        subprocess.run(command, check=True, cwd=tmp, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows, 2 epochs")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, processes, rows, epochs, out = args.worker
        worker(mode, int(processes), int(rows), int(epochs), out)
        return
    rows, epochs = (2000, 2) if args.quick else (8000, 3)
    load_before = os.getloadavg()[0]
    configs = [("loader", 1), ("lightning", 1), ("lightning", 2)]
    results = [run(mode, p, rows, epochs) for mode, p in configs]
    single = results[1]["examples_per_s"]
    for r in results:
        r["speedup_vs_lightning_1"] = r["examples_per_s"] / single
        r["efficiency"] = r["speedup_vs_lightning_1"] / r["processes"]
    columns = ["mode", "processes", "local_batch", "examples_per_s", "seconds_per_epoch"]
    print_table(results, [*columns, "speedup_vs_lightning_1", "efficiency", "final_loss"])
    write_results(
        "scale_ddp" + ("_quick" if args.quick else ""),
        results,
        seed=SEED,
        data=f"MNIST-10k seeded train split, first {rows} rows, global batch {GLOBAL_BATCH}",
        network="LeNet-300-100, Horseshoe(1e-3, groups='in'), mean-field SVI, lr 1e-3",
        torch_threads_per_process=1,
        lightning=metadata.version("lightning"),
        load_average_before=load_before,
        load_average_after=os.getloadavg()[0],
        gpu="none lent to this task (device status: can_start_another false)",
    )


if __name__ == "__main__":
    main()
