"""Sparse LSTM on row-sequential MNIST-10k against its dense twin: weights, neurons and gates kept.

    python benchmarks/sparse_lstm.py [--quick] [--seeds 3] [--epochs 60] [--jobs 2]

Data: ``datasets.load_mnist()``'s seeded 8,000 / 2,000 split of the official test set (the split
of the other MNIST benchmarks); each image is a sequence of its 28 rows of 28 pixels. Network:
LSTM(28 -> 128) -> last step -> Linear(128 -> 10), 81,152 weights (biases are point estimates and
not counted). ``--seeds`` change the initialisation, the weight noise and the minibatch order.

* ``dense``: the plain torch twin (``nn.LSTM``), Adam decaying linearly to 0, batch 100,
  ``--epochs`` epochs, at lr 3e-3 and at 1e-2 (``config``); the lower error of the two is the
  reference of the goal.
* ``sparse_vd_structured``: ``priors.StructuredLogUniform()`` (individual weights, input and
  hidden neurons, gate preactivations: Lobacheva, Chirkova & Vetrov 2018's W+N+G) with the
  ``"sparse_vd"`` guide; Adam at lr 1e-2 with the same schedule, batch and epochs, KL warm-up over
  the first half. ``sparse_vd``: ``priors.LogUniform()`` (individual weights only, their W).

Both SparseVD nets keep the weights with ``log alpha < 3`` (posterior SNR above ``exp(-1.5)``)
and are pruned to a plain ``nn.LSTM`` (``result.prune``); the error is the pruned network's
(posterior means of the kept weights). Rows: seed, method, test_error, n_weights, n_kept,
compression, hidden_kept (of 128), gates_kept (gate rows with a kept weight, of 512, per gate
type too), inputs_read (of 28), seconds. Goal (per seed): compression >= 10, fewer than 64 hidden
neurons, error within the dense twin's + 1 pp. Writes benchmarks/results/sparse_lstm.json
(``--quick``: ``sparse_lstm_quick.json``; other ``--epochs E``: ``sparse_lstm_eE.json``).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time

import torch
import torch.nn.functional as F
from _common import print_table, write_results
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.recurrent import RecurrentOutput

HIDDEN = 128
SNR_THRESHOLD = math.exp(-1.5)  # log alpha = -2 log SNR < 3
GATES = "ifgo"
CONTEXT = (
    "Lobacheva, Chirkova & Vetrov's stored AGNews results (SparseBayesianRNN, "
    "results_compressed.txt; LSTM 512 on GloVe embeddings): W 350x overall at 0.890 accuracy "
    "with 65 of 512 hidden neurons and 72 of 2048 gates; W+N+G 640x at 0.884 with 14 neurons "
    "and 39 gates"
)


def load() -> tuple[torch.Tensor, ...]:
    x, y = psb.datasets.load_mnist(split="train")
    x_test, y_test = psb.datasets.load_mnist(split="test")
    return x.reshape(-1, 28, 28), y, x_test.reshape(-1, 28, 28), y_test


def network(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.LSTM(28, HIDDEN, batch_first=True), RecurrentOutput(last_step=True),
                         nn.Linear(HIDDEN, 10))  # fmt: skip


def error(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net.eval()(x).argmax(-1) != y).float().mean())


def run_dense(seed: int, epochs: int, data: tuple, lr: float) -> dict:
    x, y, x_test, y_test = data
    net = network(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / 100)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=g).split(100):
            opt.zero_grad()
            F.cross_entropy(net(x[rows]), y[rows]).backward()
            opt.step()
            schedule.step()
    n = sum(p.numel() for k, p in net.named_parameters() if "weight" in k)
    return {"method": "dense", "config": f"lr={lr:g}", "test_error": error(net, x_test, y_test),
            "n_weights": n, "n_kept": n, "compression": 1.0, "hidden_kept": HIDDEN,
            "gates_kept": 4 * HIDDEN, "inputs_read": 28}  # fmt: skip


def structure(small: nn.Sequential) -> dict:
    """Neurons, gate rows and inputs the pruned LSTM still has or reads."""
    lstm = small[0]
    rows = torch.cat([lstm.weight_ih_l0, lstm.weight_hh_l0], 1) != 0
    live = rows.any(1).reshape(4, -1)
    return {
        "hidden_kept": lstm.hidden_size,
        "gates_kept": int(live.sum()),
        **{f"gates_kept_{g}": int(live[i].sum()) for i, g in enumerate(GATES)},
        "inputs_read": int((lstm.weight_ih_l0 != 0).any(0).sum()),
    }


def run_sparse_vd(seed: int, epochs: int, data: tuple, structured: bool) -> dict:
    x, y, x_test, y_test = data
    prior = psb.priors.StructuredLogUniform() if structured else psb.priors.LogUniform()
    bnn = psb.SparseBNN(network(seed), prior, psb.likelihoods.Categorical())
    result = psb.fit(
        bnn, x, y, method="svi", guide="sparse_vd", epochs=epochs, batch_size=100, lr=1e-2,
        lr_schedule="linear_decay", kl_warmup=max(1, epochs // 2), num_posterior_samples=50,
        seed=seed, progress=False,
    )  # fmt: skip
    stats = result.compression(SNR_THRESHOLD)
    small = result.prune(SNR_THRESHOLD)
    method = "sparse_vd_structured" if structured else "sparse_vd"
    return {"method": method, "config": "lr=0.01", "test_error": error(small, x_test, y_test),
            "n_weights": stats["n_weights"],
            "n_kept": stats["n_kept"], "compression": stats["compression"],
            **structure(small)}  # fmt: skip


RUNS = {
    "dense lr=0.003": lambda s, e, d: run_dense(s, e, d, 3e-3),
    "dense lr=0.01": lambda s, e, d: run_dense(s, e, d, 1e-2),
    "sparse_vd_structured": lambda s, e, d: run_sparse_vd(s, e, d, structured=True),
    "sparse_vd": lambda s, e, d: run_sparse_vd(s, e, d, structured=False),
}


def run_task(task: tuple[str, int, int]) -> dict:
    run, seed, epochs = task
    torch.set_num_threads(1)
    start = time.perf_counter()
    row = RUNS[run](seed, epochs, load())
    return {"run": run, "seed": seed, **row, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    args = parser.parse_args()
    if min(args.seeds, args.epochs, args.jobs) < 1:
        parser.error("--seeds, --epochs and --jobs must be at least 1")
    seeds = range(1 if args.quick else args.seeds)
    epochs = 2 if args.quick else args.epochs
    tasks = [(run, s, epochs) for s in seeds for run in RUNS]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        rows = []
        for row in pool.imap_unordered(run_task, tasks):
            print(f"{row['run']}, seed {row['seed']}: {row['seconds']:.0f} s", flush=True)
            rows.append(row)
    rows.sort(key=lambda r: (r["seed"], list(RUNS).index(r.pop("run"))))
    dense = {}
    for row in rows:
        if row["method"] == "dense":
            dense[row["seed"]] = min(dense.get(row["seed"], 1.0), row["test_error"])
    for row in rows:
        row["error_above_dense_pp"] = 100 * (row["test_error"] - dense[row["seed"]])
        row["goal_met"] = row["method"] != "dense" and (
            row["compression"] >= 10 and row["hidden_kept"] < HIDDEN / 2
            and row["error_above_dense_pp"] <= 1.0
        )  # fmt: skip
    columns = ["method", "config", "seed", "test_error", "error_above_dense_pp", "compression",
               "hidden_kept", "gates_kept", "inputs_read", "goal_met", "seconds"]  # fmt: skip
    print_table(rows, columns)
    print("context, not a target:", CONTEXT)
    path = write_results(
        "sparse_lstm" + ("_quick" if args.quick else f"_e{epochs}" if epochs != 60 else ""),
        rows,
        seeds=list(seeds),
        epochs=epochs,
        data="datasets.load_mnist(): seeded 8000 / 2000 split of MNIST-10k, rows as 28 steps",
        network=f"LSTM(28, {HIDDEN}) -> last step -> Linear({HIDDEN}, 10)",
        rule="keep log alpha < 3 (posterior SNR > exp(-1.5))",
        goal="compression >= 10, hidden_kept < 64, error <= the better dense twin's + 1 pp, "
        "per seed",
        context=CONTEXT,
        jobs=args.jobs,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
