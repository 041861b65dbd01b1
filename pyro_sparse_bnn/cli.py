"""The ``psbnn`` command.

``psbnn fit`` trains any built-in or file dataset (see :mod:`pyro_sparse_bnn.fit_command`).
``psbnn demo`` trains a horseshoe sparse BNN on iris (bundled with scikit-learn, seeded split),
prunes it by posterior signal-to-noise and reports accuracy, NLL, kept weights and seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import fit_command
from .io import atomic_path, check_writable

__all__ = ["main", "run_demo"]


DEMO_SETTINGS = {"lr": 0.02, "kl_warmup": 300}
"""Optimiser settings of the demo (and of benchmarks/demo_iris.py): Adam, KL weight 0 -> 1 over
the first 300 epochs so the weights fit the data before the shrinkage prior acts in full."""


def demo_fit_options(epochs: int) -> dict[str, Any]:
    """``fit`` options of the demo for ``epochs`` epochs (the warm-up never exceeds them).

    >>> demo_fit_options(100)
    {'lr': 0.02, 'kl_warmup': 100, 'epochs': 100}
    """
    return {**DEMO_SETTINGS, "kl_warmup": min(DEMO_SETTINGS["kl_warmup"], epochs), "epochs": epochs}


def run_demo(
    *, epochs: int = 1000, seed: int = 0, progress: bool = True
) -> tuple[dict[str, Any], Any]:
    """Train and prune the demo network; return the report and the :class:`FitResult`.

    >>> report, _ = run_demo(epochs=20, progress=False)
    >>> report["n_weights"], report["epochs"]
    (56, 20)
    """
    import pyro_sparse_bnn as psb

    start = time.perf_counter()
    x, y = psb.datasets.load("iris", split="train", seed=seed)
    x_test, y_test = psb.datasets.load("iris", split="test", seed=seed)
    torch.manual_seed(seed)  # the network's initial weights
    net = psb.mlp([4, 8, 3])
    bnn = psb.SparseBNN(net, psb.priors.Horseshoe(global_scale=0.1), psb.likelihoods.Categorical())
    result = psb.fit(bnn, x, y, seed=seed, progress=progress, **demo_fit_options(epochs))
    pruned = result.evaluate(x_test, y_test, masked=True)
    full = result.evaluate(x_test, y_test)
    stats = result.compression()
    report = {
        "dataset": "iris (scikit-learn), 112 train / 38 test, seeded stratified split",
        "network": "4-8(ReLU)-3, horseshoe prior (global scale 0.1), mean-field SVI, KL warm-up",
        "seed": seed,
        "epochs": epochs,
        "test_accuracy": pruned["accuracy"],
        "test_nll": pruned["nll"],
        "test_accuracy_unpruned": full["accuracy"],
        "test_nll_unpruned": full["nll"],
        "n_weights": stats["n_weights"],
        "n_kept": stats["n_kept"],
        "compression": stats["compression"],
        "layer_sparsity": stats["layer_sparsity"],
        "kept_neurons": stats["kept_neurons"],
        "seconds": time.perf_counter() - start,
    }
    return report, result


def _format(report: dict[str, Any]) -> str:
    layers = ", ".join(f"{k} {v:.0%}" for k, v in report["layer_sparsity"].items())
    return "\n".join(
        [
            f"psbnn demo: {report['network']}",
            f"  data              {report['dataset']}",
            f"  test accuracy     {report['test_accuracy']:.3f} pruned "
            f"({report['test_accuracy_unpruned']:.3f} before pruning)",
            f"  test NLL          {report['test_nll']:.3f} pruned "
            f"({report['test_nll_unpruned']:.3f} before pruning)",
            f"  kept weights      {report['n_kept']} / {report['n_weights']} "
            f"(compression {report['compression']:.1f}x)",
            f"  layer sparsity    {layers}",
            f"  seconds           {report['seconds']:.1f}",
        ]
    )


def _writable(path: str) -> Path:
    try:
        return check_writable(path)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psbnn", description="Sparse Bayesian neural networks.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train and prune a horseshoe BNN on iris")
    demo.add_argument("--epochs", type=_positive_int, default=1000, help="full-batch epochs")
    demo.add_argument("--seed", type=int, default=0, help="seed of the split and the fit")
    demo.add_argument("--json", type=_writable, metavar="PATH", help="write the report as JSON")
    demo.add_argument(
        "--arviz", type=_writable, metavar="PATH", help="write InferenceData (netCDF)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    fit_command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``psbnn`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "fit":
        return fit_command.run(args)
    report, result = run_demo(epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    print(_format(report))
    if args.json is not None:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    if args.arviz is not None:
        from . import arviz

        arviz.to_netcdf(result.to_arviz(), str(args.arviz))
    return 0


if __name__ == "__main__":
    sys.exit(main())
