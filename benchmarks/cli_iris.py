"""``psbnn fit iris`` with every default, over seeds: each seed draws its own split (the
command's seeded permutation, 112 train / 38 test) and its own fit. Scored as the command
reports it (test accuracy full and pruned by the default masks, kept weights of 350), next to
scikit-learn's ``LogisticRegression`` on the same split.

    python benchmarks/cli_iris.py [--seeds 10]

Writes benchmarks/results/cli_iris.json: one row per seed, and ``meta.summary`` (min, mean,
max over seeds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import print_table, write_results
from sklearn.linear_model import LogisticRegression

from pyro_sparse_bnn.data_files import load_data
from pyro_sparse_bnn.fit_command import main as psbnn

COLUMNS = ("accuracy_full", "accuracy_pruned", "accuracy_logistic", "n_kept", "seconds")


def run(seed: int) -> dict:
    data = load_data("iris", seed=seed)
    reference = LogisticRegression(max_iter=2000).fit(data.X_train.numpy(), data.y_train.numpy())
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        psbnn(["fit", "iris", "-o", out, "--seed", str(seed), "--quiet", "--no-plots"])
        seconds = time.perf_counter() - start
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {
        "seed": seed,
        "accuracy_full": metrics["test"]["accuracy"],
        "accuracy_pruned": metrics["test_pruned"]["accuracy"],
        "accuracy_logistic": reference.score(data.X_test.numpy(), data.y_test.numpy()),
        "n_kept": metrics["n_kept"],
        "n_weights": metrics["n_weights"],
        "epochs": metrics["epochs"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (splits and fits)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [run(seed) for seed in range(args.seeds)]
    print_table(rows, ["seed", *COLUMNS])
    values = {c: torch.tensor([float(r[c]) for r in rows]) for c in COLUMNS}
    summary = [
        {"statistic": name} | {c: float(op(v)) for c, v in values.items()}
        for name, op in (("min", torch.min), ("mean", torch.mean), ("max", torch.max))
    ]
    print()
    print_table(summary, ["statistic", *COLUMNS])
    write_results(
        "cli_iris", rows, summary=summary, seeds=list(range(args.seeds)),
        command="psbnn fit iris -o OUT --seed SEED (every other option at its default)",
    )  # fmt: skip


if __name__ == "__main__":
    main()
