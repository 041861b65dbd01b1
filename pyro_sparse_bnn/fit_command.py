"""``psbnn fit``: train a sparse BNN on a data set and write the result, metrics and plots.

The data set is a built-in name, an MNIST directory or a .npz/.csv/IDX file
(:mod:`~pyro_sparse_bnn.data_files`); a CSV header's names reach ``metrics.json`` and the
plots, and string class labels are listed there. Files without test arrays are split by
``--test-size`` with a seeded permutation. The network is
an MLP ``inputs -> --hidden ... -> outputs``; integer targets make a classifier (Categorical),
real ones a regression (Gaussian with learned noise) unless ``--task`` says otherwise.
``--devices N`` (or ``--strategy``) trains through Lightning (:mod:`pyro_sparse_bnn.lightning`),
``--batch-size`` being the global batch. The output directory gets ``result.pt``
(:meth:`FitResult.save`), ``metrics.json`` and, unless ``--no-plots``, PNG figures, written only
once everything is computed, each atomically. Options left out keep the method's defaults,
except the learning rate and epochs of ``--method svi`` (:data:`SVI_LR`, :data:`SVI_MIN_STEPS`);
one the method does not take (``--epochs`` for SG-MCMC, say) is a usage error.

>>> import pathlib, tempfile
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> main(["fit", "iris", "--hidden", "8", "--epochs", "5", "-o", str(out), "--quiet", "--no-plots"])
psbnn fit: iris (built-in), svi with a horseshoe prior: test accuracy ... weights; wrote ...
0
>>> sorted(p.name for p in out.iterdir())
['metrics.json', 'result.pt']
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import datasets, likelihoods, priors
from .data_files import Data, load_data
from .guides import GUIDES
from .infer.fit import METHODS
from .infer.result import FitResult
from .io import atomic_path
from .nn import SparseBNN, mlp
from .validation import GRAPH_MODES, check_keywords, check_xy

__all__ = ["PRIORS", "SVI_LR", "SVI_MIN_STEPS", "add_parser", "main", "run"]

PRIORS: dict[str, type[priors.Prior]] = {
    "normal": priors.Normal,
    "laplace": priors.Laplace,
    "student_t": priors.StudentT,
    "ard": priors.ARD,
    "horseshoe": priors.Horseshoe,
    "regularized_horseshoe": priors.RegularizedHorseshoe,
    "spike_and_slab": priors.SpikeAndSlab,
    "log_uniform": priors.LogUniform,
    "profiled_ard": priors.ProfiledARD,
    "group_log_uniform": priors.GroupLogUniform,
}
"""``--prior`` names; ``--prior-arg KEY=VALUE`` sets the class's keyword arguments."""

TASKS = ("auto", "classification", "regression")

SVI_LR = 0.02
SVI_MIN_STEPS = 1000
"""``--method svi`` defaults where the command line is silent: Adam at ``SVI_LR`` for enough
epochs to take ``SVI_MIN_STEPS`` optimiser steps (at least the method's 100 epochs). The method's
own default, 100 full-batch steps at 0.01, leaves a shrinkage prior's scales far from converged
on a small data set: ``psbnn fit iris`` then kept 102-278 of 350 weights over seeds 0-7."""


def _is_integral(y: Tensor) -> bool:
    return not y.dtype.is_floating_point or bool((y == y.round()).all())


def _targets(data: Data, task: str) -> tuple[Data, bool]:
    """Targets as int64 labels (classification) or float32 (regression)."""
    classify = _is_integral(data.y_train) if task == "auto" else task == "classification"
    if data.class_names is not None and not classify:
        raise ValueError("the target holds strings (class labels): --task regression needs numbers")
    if classify:
        if not (_is_integral(data.y_train) and _is_integral(data.y_test)):
            raise ValueError("classification needs integer class labels in the target")
        y_train, y_test = data.y_train.long(), data.y_test.long()
        if min(y_train.min(), y_test.min()) < 0:
            raise ValueError("class labels must be non-negative integers 0, 1, ...")
    else:
        y_train, y_test = data.y_train.float(), data.y_test.float()
    return data._replace(y_train=y_train, y_test=y_test), classify


def _prior_args(items: list[str]) -> dict[str, float]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            options[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ValueError(f"--prior-arg must look like KEY=NUMBER, got {item!r}")
    return options


def _svi_epochs(n_rows: int, batch_size: int | None) -> int:
    """Epochs that take at least ``SVI_MIN_STEPS`` steps over ``n_rows`` rows (at least 100).

    >>> _svi_epochs(112, None), _svi_epochs(7500, 100)
    (1000, 100)
    """
    steps_per_epoch = math.ceil(n_rows / min(batch_size or n_rows, n_rows))
    return max(100, math.ceil(SVI_MIN_STEPS / steps_per_epoch))


def _method_options(
    method: str, args: argparse.Namespace, n_rows: int | None = None
) -> dict[str, Any]:
    """The options given on the command line, for ``method``; one it does not take is an error.
    Given the number of training rows, ``--method svi`` fills in the command's own defaults."""
    accepted = METHODS[method].options()
    given = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "kl_warmup": args.kl_warmup,
        "guide": args.guide,
        "graph": args.graph,
    }
    given = {k: v for k, v in given.items() if v is not None}
    for name in given:
        if name not in accepted:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to --method {method}")
    always = {"seed": args.seed, "progress": not args.quiet}
    if method == "svi" and n_rows is not None:
        always = {"lr": SVI_LR, "epochs": _svi_epochs(n_rows, args.batch_size)} | always
    return {k: v for k, v in always.items() if k in accepted} | given


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _dataset(text: str) -> str:
    if text in datasets.DATASETS or Path(text).exists():
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a built-in data set {list(datasets.DATASETS)} nor an existing path"
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help (those that say something); the epilog's table as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        unset = action.default is None or action.default is False or action.default == []
        if unset or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _prior_keys() -> str:
    """The ``--prior-arg`` keys of every ``--prior``, with their defaults."""
    lines = ["--prior-arg keys (defaults):"]
    for name, cls in sorted(PRIORS.items()):
        keys = [
            f"{p.name}={p.default}"
            for p in inspect.signature(cls).parameters.values()
            if isinstance(p.default, int | float) and not isinstance(p.default, bool)
        ]
        lines.append(f"  {name}: {', '.join(keys) or '(none)'}")
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``fit`` subcommand to ``psbnn``'s subparsers; return its parser."""
    fit = subparsers.add_parser(
        "fit",
        help="train a sparse BNN on a data set",
        formatter_class=_HelpFormatter,
        epilog=_prior_keys(),
    )
    names = ", ".join(datasets.DATASETS)
    fit.add_argument(
        "dataset",
        type=_dataset,
        help=f"built-in name ({names}), MNIST directory, or a .npz/.csv/IDX file",
    )
    fit.add_argument("--output", "-o", required=True, type=Path, help="output directory")
    fit.add_argument("--hidden", type=_positive_int, nargs="*", default=[50], help="hidden sizes")
    fit.add_argument("--prior", choices=sorted(PRIORS), default="horseshoe", help="weight prior")
    fit.add_argument(
        "--prior-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword of the prior (repeatable; keys below)",
    )
    fit.add_argument("--method", choices=sorted(METHODS), default="svi", help="inference method")
    fit.add_argument("--guide", choices=sorted(GUIDES), default=None, help="svi posterior family")
    fit.add_argument(
        "--task", choices=TASKS, default="auto", help="auto: integer or string targets classify"
    )
    fit.add_argument(
        "--epochs",
        type=_positive_int,
        help=f"passes over the data (svi: enough for {SVI_MIN_STEPS} steps; others: the method's)",
    )
    fit.add_argument("--batch-size", type=_positive_int, default=None, help="global minibatch")
    fit.add_argument(
        "--lr", type=_positive_float, help=f"learning rate (svi: {SVI_LR}; others: the method's)"
    )
    fit.add_argument(
        "--kl-warmup", type=int, metavar="EPOCHS", help="svi KL warm-up (default: epochs / 3)"
    )
    fit.add_argument(
        "--graph", choices=GRAPH_MODES, help="how each step runs the model (method default)"
    )
    fit.add_argument("--seed", type=int, default=0, help="seed of the split and the fit")
    fit.add_argument("--test-size", type=float, default=0.25, help="test share of a file")
    fit.add_argument("--target", help="CSV target column (name or index; default: last)")
    fit.add_argument("--labels", help="IDX labels file (default: the MNIST name beside X)")
    fit.add_argument("--standardize", action="store_true", help="z-score file features")
    fit.add_argument("--devices", type=_positive_int, default=None, help="train with Lightning")
    fit.add_argument("--strategy", default=None, help="Lightning strategy, e.g. ddp")
    fit.add_argument("--accelerator", default="auto", help="Lightning accelerator")
    fit.add_argument("--num-nodes", type=_positive_int, default=1, help="Lightning nodes")
    fit.add_argument("--no-plots", action="store_true", help="write no figures")
    fit.add_argument("--quiet", action="store_true", help="no progress bar (the result is shown)")
    fit.set_defaults(fit_parser=fit)
    return fit


def _build(args: argparse.Namespace) -> tuple[Data, SparseBNN, bool]:
    data = load_data(
        args.dataset,
        test_size=args.test_size,
        seed=args.seed,
        target=args.target,
        labels=args.labels,
        standardize=args.standardize,
    )
    try:
        check_xy(data.X_test, data.y_test)
    except ValueError as err:
        raise ValueError(f"the test split: {err}") from None
    data, classify = _targets(data, args.task)
    outputs = int(max(data.y_train.max(), data.y_test.max())) + 1 if classify else 1
    prior_args = _prior_args(args.prior_arg)
    accepted = inspect.signature(PRIORS[args.prior]).parameters
    check_keywords(f"--prior {args.prior} --prior-arg", prior_args, list(accepted))
    prior = PRIORS[args.prior](**prior_args)
    if classify:
        likelihood = likelihoods.Categorical()
    else:  # the penalised fits train a point estimate: no latent noise, unit scale
        deterministic = args.method in ("l1", "l0")
        likelihood = likelihoods.Gaussian(noise=1.0 if deterministic else None)
    torch.manual_seed(args.seed)  # the network's initial weights
    net = mlp([data.X_train.shape[1], *args.hidden, outputs])
    return data, SparseBNN(net, prior, likelihood), classify


def _fit(args: argparse.Namespace, data: Data, bnn: SparseBNN) -> FitResult:
    if args.devices is None and args.strategy is None:
        return METHODS[args.method](
            bnn, data.X_train, data.y_train, **_method_options(args.method, args, len(data.X_train))
        )
    from torch.utils.data import DataLoader, TensorDataset

    from .lightning import fit_lightning

    world = (args.devices or 1) * args.num_nodes
    batch = args.batch_size or len(data.X_train)
    loader = DataLoader(TensorDataset(data.X_train, data.y_train), batch // world, shuffle=True)
    options = _method_options("svi", args, len(data.X_train))
    options.pop("batch_size", None)
    return fit_lightning(
        bnn,
        loader,
        accelerator=args.accelerator,
        devices=args.devices or "auto",
        strategy=args.strategy or "auto",
        num_nodes=args.num_nodes,
        **options,
    )


def _check_args(args: argparse.Namespace) -> None:
    lightning = args.devices is not None or args.strategy is not None
    if lightning and importlib.util.find_spec("lightning") is None:
        raise ValueError(
            "--devices/--strategy need Lightning: pip install 'pyro-sparse-bnn[scale]'"
        )
    if lightning and args.method != "svi":
        raise ValueError(f"--devices/--strategy train with SVI only, not --method {args.method}")
    if lightning and args.graph is not None:
        raise ValueError("--graph applies to single-process fits, not to --devices/--strategy")
    if lightning and args.batch_size is not None:
        world = (args.devices or 1) * args.num_nodes
        if args.batch_size % world:
            raise ValueError(f"--batch-size {args.batch_size} must divide into {world} processes")
    _method_options(args.method, args)
    if not 0 < args.test_size < 1:
        raise ValueError(f"--test-size must lie in (0, 1), got {args.test_size}")
    if args.kl_warmup is not None and args.kl_warmup < 0:
        raise ValueError(f"--kl-warmup must be >= 0, got {args.kl_warmup}")
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"--output {str(args.output)!r} exists and is not a directory")


def _figures(result: FitResult, data: Data, classify: bool) -> dict[str, Any]:
    """The figures to write, by file name: relevance histogram and first-layer heatmap (with the
    file's feature names) under the default masks, and a classifier's calibration."""
    from . import plots

    names = data.feature_names
    first = result.weight_sites[:1]
    figures = {
        "relevance_histogram.png": plots.plot_relevance_histogram(result, feature_names=names),
        "relevance_heatmap.png": plots.plot_relevance_heatmap(
            result, sites=first, feature_names=names
        ),
    }
    if classify:
        ax = plots.plot_calibration(result.predict(data.X_test)["probs"], data.y_test)
        figures["calibration.png"] = ax.figure
    return figures


def run(args: argparse.Namespace) -> int:
    """Carry out ``psbnn fit`` for parsed ``args``; bad input exits with status 2."""
    start = time.perf_counter()
    try:
        _check_args(args)
        data, bnn, classify = _build(args)
        result = _fit(args, data, bnn)  # fit() checks its inputs before any work
    except (ValueError, TypeError, FileNotFoundError) as err:
        args.fit_parser.error(str(err))
    if result.info.get("global_rank", 0) != 0:
        return 0  # under DDP only the first process writes
    result.info |= {"feature_names": data.feature_names, "class_names": data.class_names}
    stats = result.compression()
    metrics = {
        "dataset": data.source,
        "n_train": len(data.X_train),
        "n_test": len(data.X_test),
        "task": "classification" if classify else "regression",
        "features": data.feature_names,
        "classes": data.class_names,
        "network": [data.X_train.shape[1], *args.hidden, bnn.out_features],
        "prior": args.prior,
        "prior_args": _prior_args(args.prior_arg),
        "method": args.method,
        "epochs": result.info.get("epochs_run"),
        "seed": args.seed,
        "world_size": result.info.get("world_size", 1),
        "final_loss": (result.info.get("history") or [None])[-1],
        "test": result.evaluate(data.X_test, data.y_test),
        "test_pruned": result.evaluate(data.X_test, data.y_test, masked=True),
        "n_weights": stats["n_weights"],
        "n_kept": stats["n_kept"],
        "compression": stats["compression"],
        "layer_sparsity": stats["layer_sparsity"],
        "fit_seconds": result.info.get("seconds"),
    }
    figures = {} if args.no_plots else _figures(result, data, classify)
    metrics["plots"] = sorted(figures)
    metrics["seconds"] = time.perf_counter() - start
    out = args.output  # everything is computed: now write, each file atomically
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "result.pt")
    for name, figure in figures.items():
        with atomic_path(out / name) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
    if figures:
        import matplotlib.pyplot as plt

        plt.close("all")
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    key = "accuracy" if classify else "rmse"
    test, pruned = metrics["test"][key], metrics["test_pruned"][key]
    print(
        f"psbnn fit: {data.source}, {args.method} with a {args.prior} prior: test {key} "
        f"{test:.4g} ({pruned:.4g} pruned), kept {stats['n_kept']}/{stats['n_weights']} "
        f"weights; wrote {out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``psbnn fit`` on its own (``python -m pyro_sparse_bnn.fit_command fit ...``)."""
    parser = argparse.ArgumentParser(prog="psbnn", description="Sparse Bayesian neural networks.")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
