"""The demo's settings for every prior over seeds and data draws: iris 4-8(ReLU)-3, mean-field
SVI (the unbiased MeanFieldELBO) with the demo's KL warm-up. Scales: 1 for Normal, 0.1 for the
shrinkage priors (spike 0.05). Each seed draws another stratified train/test split and another
initialisation. Every fit is scored full, pruned by the default predictive budget (NLL +0.02,
accuracy -1 pp on the training data) and pruned by the old fixed rule, posterior SNR > 1.

    python benchmarks/demo_iris.py [--quick] [--seeds 5] [--centered learned]

Writes benchmarks/results/demo_iris.json (``demo_iris_centered_learned.json`` with
``--centered learned``: every prior's centring learned with the guide): one row per (prior,
seed), and in ``meta.summary`` one row per prior (mean and sd over seeds).
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import print_table, write_results

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.cli import DEMO_SETTINGS, demo_fit_options

PRIORS = {
    "normal": lambda: psb.priors.Normal(1.0),
    "laplace": lambda: psb.priors.Laplace(0.1),
    "student_t": lambda: psb.priors.StudentT(df=1.0, scale=0.1),
    "horseshoe": lambda: psb.priors.Horseshoe(0.1),
    "regularized_horseshoe": lambda: psb.priors.RegularizedHorseshoe(0.1),
    "spike_and_slab": lambda: psb.priors.SpikeAndSlab(inclusion_prob=0.5, spike_scale=0.05),
}


def run(name: str, epochs: int, seed: int, centered: str | None = None) -> dict:
    x, y = psb.datasets.load("iris", split="train", seed=seed)
    x_test, y_test = psb.datasets.load("iris", split="test", seed=seed)
    torch.manual_seed(seed)
    bnn = psb.SparseBNN(psb.mlp([4, 8, 3]), PRIORS[name](), psb.likelihoods.Categorical())
    start = time.perf_counter()
    options = demo_fit_options(epochs) | ({} if centered is None else {"centered": centered})
    result = psb.fit(bnn, x, y, seed=seed, progress=False, **options)
    seconds = time.perf_counter() - start
    full = result.evaluate(x_test, y_test)
    pruned = result.evaluate(x_test, y_test, masked=True)
    snr = result.evaluate(x_test, y_test, masked=True, threshold=psb.sparsity.SNR_THRESHOLD)
    stats = result.compression()
    return {
        "method": "svi_mean_field",
        "prior": name,
        "seed": seed,
        "test_accuracy": pruned["accuracy"],
        "test_error": 1 - pruned["accuracy"],
        "test_nll": pruned["nll"],
        "test_accuracy_full": full["accuracy"],
        "test_nll_full": full["nll"],
        "test_accuracy_snr1": snr["accuracy"],
        "test_nll_snr1": snr["nll"],
        "n_kept_snr1": result.compression(psb.sparsity.SNR_THRESHOLD)["n_kept"],
        "n_weights": stats["n_weights"],
        "n_kept": stats["n_kept"],
        "compression": stats["compression"],
        "final_negative_elbo": result.info["history"][-1],
        "seconds": seconds,
    }


SUMMARISED = (
    "test_accuracy_full", "test_accuracy", "test_accuracy_snr1", "test_nll_full", "test_nll",
    "test_nll_snr1", "n_kept", "n_kept_snr1", "seconds",
)  # fmt: skip


def summary(rows: list[dict]) -> list[dict]:
    """Per prior: ``mean +- sd`` over seeds of each summarised column."""
    out = []
    for name in PRIORS:
        mine = [r for r in rows if r["prior"] == name]
        if not mine:
            continue
        row = {"kind": "summary", "prior": name, "seeds": len(mine)}
        for key in SUMMARISED:
            values = torch.tensor([float(r[key]) for r in mine], dtype=torch.float64)
            sd = float(values.std()) if len(values) > 1 else 0.0
            row[key] = f"{float(values.mean()):.3g} ± {sd:.2g}"
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 epochs instead of 1000")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (splits and inits)")
    parser.add_argument("--centered", choices=["learned"], help="learned centring for SVI")
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = 100 if args.quick else 1000
    priors = [p for p in PRIORS if args.centered is None or p != "normal"]  # Normal: no scale
    rows = [run(name, epochs, seed, args.centered) for name in priors for seed in range(args.seeds)]
    columns = ["prior", "seed", "test_accuracy_full", "test_accuracy", "test_nll_full"]
    print_table(rows, [*columns, "test_nll", "test_nll_snr1", "n_kept", "n_kept_snr1", "seconds"])
    table = summary(rows)
    print()
    print_table(table, ["prior", *SUMMARISED])
    suffix = ("" if args.centered is None else f"_centered_{args.centered}") + (
        "_quick" if args.quick else ""
    )
    write_results(
        "demo_iris" + suffix,
        rows,
        summary=table,
        seeds=list(range(args.seeds)),
        data_split="iris, stratified 112 train / 38 test drawn by each seed (datasets.load)",
        epochs=epochs,
        pruning="default: predictive budget (NLL +0.02, accuracy -0.01 on the training data); "
        "snr1: posterior |mean|/sd > 1; biases are point estimates",
        settings=DEMO_SETTINGS | {"centered": args.centered},
    )


if __name__ == "__main__":
    main()
