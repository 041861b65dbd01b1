"""``psbnn fit``: train a sparse BNN on a data set and write the result, metrics and plots.

The data set is a built-in name (:data:`pyro_sparse_bnn.datasets.DATASETS`), a directory holding
the MNIST IDX files (:func:`~pyro_sparse_bnn.datasets.load_mnist`), or a file:

* ``.npz`` with arrays ``X`` and ``y`` (and optionally ``X_test``, ``y_test``);
* ``.csv``, one row per example, the target in the last column (or ``--target``), with an
  optional header row whose names reach ``metrics.json`` and the plots; a target of strings is a
  classification, its labels numbered in sorted order (``metrics.json`` lists them);
* an IDX file of inputs (raw or gzip; uint8 pixels are scaled to [0, 1]) with its labels in
  ``--labels`` or, by the MNIST naming, in the ``labels-idx1`` file beside it.

Files without test arrays are split by ``--test-size`` with a seeded permutation. The network is
an MLP ``inputs -> --hidden ... -> outputs``; integer targets make a classifier (Categorical),
real ones a regression (Gaussian with learned noise) unless ``--task`` says otherwise.
``--devices N`` (or ``--strategy``) trains through Lightning (:mod:`pyro_sparse_bnn.lightning`),
``--batch-size`` being the global batch. The output directory gets ``result.pt``
(:meth:`FitResult.save`), ``metrics.json`` and, unless ``--no-plots``, PNG figures, written only
once everything is computed, each atomically. Options left
out keep the method's defaults; one the method does not take (``--epochs`` for SG-MCMC, say) is a
usage error.

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
import csv
import importlib.util
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import datasets, likelihoods, priors
from .guides import GUIDES
from .infer.fit import METHODS
from .infer.result import FitResult
from .io import atomic_path
from .nn import SparseBNN, mlp
from .validation import check_keywords, check_xy

__all__ = ["PRIORS", "Data", "add_parser", "load_data", "main", "run"]

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


class Data(NamedTuple):
    """Train and test tensors of a data set, where they came from, and the names the file gave
    its features and class labels (class ``i`` is ``class_names[i]``)."""

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    source: str
    feature_names: list[str] | None = None
    class_names: list[str] | None = None


def _split(X: np.ndarray, y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, ...]:
    n_test = math.ceil(test_size * len(X))
    if not 0 < n_test < len(X):
        raise ValueError(f"--test-size {test_size} leaves an empty split of the {len(X)} rows")
    order = np.random.default_rng(seed).permutation(len(X))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(
    path: Path, target: str | None
) -> tuple[np.ndarray, np.ndarray, list[str] | None, list[str] | None]:
    """Features, targets (class indices for string labels), feature names and class names.

    The first row is a header when some cell of it is not a number although the cell below it
    is, or when no cell of it is a number.
    """
    with path.open(newline="") as f:
        rows = [[cell.strip() for cell in row] for row in csv.reader(f) if row]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise ValueError(f"{path}: needs a feature column, the target and at least two rows")
    first, second = rows[0], rows[1]
    header = None
    if not any(map(_number, first)) or any(
        not _number(a) and _number(b) for a, b in zip(first, second, strict=False)
    ):
        header, rows = first, rows[1:]
    width = len(rows[0])
    if any(len(row) != width for row in rows) or (header and len(header) != width):
        raise ValueError(f"{path}: rows have different numbers of columns")
    column = width - 1
    if target is not None:
        if header and target in header:
            column = header.index(target)
        elif target.lstrip("-").isdigit() and -width <= int(target) < width:
            column = int(target) % width
        else:
            raise ValueError(f"--target {target!r} is neither a column name nor index of {path}")
    features = [[v for i, v in enumerate(row) if i != column] for row in rows]
    try:
        X = np.array(features, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: the features are not a table of numbers ({err})") from None
    labels = [row[column] for row in rows]
    class_names = None
    if all(map(_number, labels)):
        y = np.array(labels, dtype=np.float64)
    else:
        class_names = sorted(set(labels))
        y = np.array([class_names.index(v) for v in labels], dtype=np.int64)
    names = None if header is None else [v for i, v in enumerate(header) if i != column]
    return X, y, names, class_names


def _labels_beside(images: Path) -> Path:
    name = images.name.replace("images-idx3", "labels-idx1")
    if name == images.name:
        raise ValueError(f"{images}: give the labels file with --labels")
    return images.with_name(name)


def _read_idx_pair(images: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray]:
    X = datasets.read_idx(images)
    y = datasets.read_idx(labels if labels is not None else _labels_beside(images))
    if len(X) != len(y):
        raise ValueError(f"{images} has {len(X)} inputs but the labels file has {len(y)}")
    X = X.reshape(len(X), -1)
    return (X / 255.0 if X.dtype == np.uint8 else X), y


def _is_idx(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(3)
    return head[:2] == b"\x1f\x8b" or (head[:2] == b"\x00\x00" and len(head) == 3)


def load_data(
    spec: str,
    *,
    test_size: float = 0.25,
    seed: int = 0,
    target: str | None = None,
    labels: str | None = None,
    standardize: bool = False,
) -> Data:
    """Read ``spec`` (a built-in name, an MNIST directory, or a .npz/.csv/IDX file) as tensors.

    Raises ``ValueError`` (or ``FileNotFoundError``) with a one-line reason for bad input.

    >>> data = load_data("iris")
    >>> tuple(data.X_train.shape), tuple(data.X_test.shape), data.y_train.dtype
    ((112, 4), (38, 4), torch.int64)
    """
    if spec in datasets.DATASETS:
        X, y = datasets.load(spec, "train", test_size=test_size, seed=seed)
        X_test, y_test = datasets.load(spec, "test", test_size=test_size, seed=seed)
        return Data(X, y, X_test, y_test, f"{spec} (built-in)")
    path = Path(spec)
    feature_names = class_names = None
    if not path.exists():
        raise ValueError(
            f"dataset {spec!r} is neither a built-in name {list(datasets.DATASETS)} nor an "
            "existing path"
        )
    if path.is_dir():
        X, y = datasets.load_mnist(path, "train", seed=seed)
        X_test, y_test = datasets.load_mnist(path, "test", seed=seed)
        return Data(X, y, X_test, y_test, f"MNIST IDX files in {path}")
    if path.suffix == ".npz":
        with np.load(path) as archive:
            arrays = dict(archive)
        if not {"X", "y"} <= set(arrays):
            raise ValueError(f"{path} must hold arrays 'X' and 'y', found {sorted(arrays)}")
        X, y = arrays["X"], arrays["y"]
        X, y = X.reshape(len(X), -1), y.reshape(len(y))
        parts = (X, y, arrays["X_test"], arrays["y_test"]) if "X_test" in arrays else None
    elif path.suffix == ".csv":
        X, y, feature_names, class_names = _read_csv(path, target)
        parts = None
    elif _is_idx(path):
        X, y = _read_idx_pair(path, None if labels is None else Path(labels))
        parts = None
    else:
        raise ValueError(f"{path}: expected a .npz, .csv or IDX file")
    if len(X) != len(y):
        raise ValueError(f"{path}: {len(X)} rows of X but {len(y)} targets")
    X_train, y_train, X_test, y_test = parts or _split(X, y, test_size, seed)
    X_test = X_test.reshape(len(X_test), -1)
    if standardize:
        reference = X_train
        X_train = datasets._standardise(X_train, reference)
        X_test = datasets._standardise(X_test, reference)
    return Data(
        _floats(X_train),
        torch.as_tensor(y_train),
        _floats(X_test),
        torch.as_tensor(y_test),
        str(path),
        feature_names,
        class_names,
    )


def _floats(array: np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32))


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
        "traced": "compiled" if args.compiled else True if args.traced else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    for name in given:
        if name not in accepted:
            flag = "--compiled" if name == "traced" and args.compiled else f"--{name}"
            flag = flag.replace("_", "-")
            raise ValueError(f"{flag} does not apply to --method {method}")
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
        "dataset", type=_dataset, help=f"built-in name ({names}), MNIST directory, or a "
        ".npz/.csv/IDX file"
    )
    fit.add_argument("--output", "-o", required=True, type=Path, help="output directory")
    fit.add_argument("--hidden", type=_positive_int, nargs="*", default=[50], help="hidden sizes")
    fit.add_argument("--prior", choices=sorted(PRIORS), default="horseshoe", help="weight prior")
    fit.add_argument(
        "--prior-arg", action="append", default=[], metavar="KEY=VALUE",
        help="a keyword of the prior (repeatable; keys below)",
    )
    fit.add_argument("--method", choices=sorted(METHODS), default="svi", help="inference method")
    fit.add_argument("--guide", choices=sorted(GUIDES), default=None, help="svi posterior family")
    fit.add_argument(
        "--task", choices=TASKS, default="auto", help="auto: integer or string targets classify"
    )
    fit.add_argument(
        "--epochs", type=_positive_int,
        help=f"passes over the data (svi: enough for {SVI_MIN_STEPS} steps; others: the method's)",
    )
    fit.add_argument("--batch-size", type=_positive_int, default=None, help="global minibatch")
    fit.add_argument(
        "--lr", type=_positive_float, help=f"learning rate (svi: {SVI_LR}; others: the method's)"
    )
    fit.add_argument(
        "--kl-warmup", type=int, metavar="EPOCHS", help="svi KL warm-up (default: epochs / 3)"
    )
    fit.add_argument("--traced", action="store_true", help="svi: replay steps from a traced graph")
    fit.add_argument("--compiled", action="store_true", help="svi: --traced, graph compiled")
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
    if lightning and (args.traced or args.compiled):
        flag = "--compiled" if args.compiled else "--traced"
        raise ValueError(f"{flag} applies to single-process SVI, not to --devices/--strategy")
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
