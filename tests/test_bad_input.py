"""Bad input across the public API fails with a ValueError/TypeError naming the argument and leaves
the model, the global RNG and the file system unchanged (cases beyond tests/test_validation.py).

Tables: data errors for every inference method in ``METHODS`` (svi's are in test_validation.py),
method options, priors and ``SparseBNN``, ``FitResult`` methods, datasets and the ``psbnn`` CLI.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.cli import main
from pyro_sparse_bnn.infer.fit import METHODS
from pyro_sparse_bnn.infer.sgmcmc import InclusionPruning, SSGLPrior

P = psb.priors
X_ALL, Y_ALL = psb.datasets.load("iris", split="train")
X, Y = X_ALL[:30], Y_ALL[:30]
YR = X[:, 0].clone()  # a real-valued regression target
INF, NAN = float("inf"), float("nan")
pytestmark = pytest.mark.filterwarnings("ignore:the model has non-Bayesian parameters")


def case(name: str, *values: Any) -> Any:
    """One table row with id ``name``."""
    return pytest.param(*values, id=name)


def classifier() -> psb.SparseBNN:
    return psb.SparseBNN(psb.mlp([4, 3]), P.Normal(), psb.likelihoods.Categorical())


def regressor() -> psb.SparseBNN:
    return psb.SparseBNN(psb.mlp([4, 1]), P.Normal(), psb.likelihoods.Gaussian(noise=1.0))


def _with(t: torch.Tensor, row: int, value: float) -> torch.Tensor:
    t = t.clone()
    t[row] = value
    return t


# Tiny run lengths: a case that wrongly passes validation still finishes in about a second.
BUDGET = {m: {"epochs": 2} for m in ("svi", "vadam", "ivon", "l1", "l0")} | {
    m: {"num_samples": 2, "warmup": 2, "num_chains": 1} for m in ("nuts", "hmc")
}
SG_BUDGET = {"num_samples": 2, "warmup": 2, "num_chains": 1}


def _run_fit(
    make_model: Callable[[], Any],
    data: tuple,
    method: str,
    options: dict[str, Any],
    error: type[Exception],
    match: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    rng: bool = True,
) -> None:
    """``psb.fit`` raises ``error``; the model, the global torch RNG and the working directory
    ``tmp_path`` are unchanged. An unchanged RNG shows the error came before ``fit`` seeded it."""
    monkeypatch.chdir(tmp_path)
    model = make_model()
    state = {k: v.clone() for k, v in model.state_dict().items()} if hasattr(model, "net") else {}
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    budget = BUDGET.get(method, SG_BUDGET)
    with pytest.raises(error, match=match):
        psb.fit(model, *data, method=method, progress=False, **(budget | options))
    if state:
        after = model.state_dict()
        assert state.keys() == after.keys()
        assert all(torch.equal(state[k], v) for k, v in after.items())
    if rng:
        assert torch.equal(before, torch.get_rng_state()), "fit seeded the RNG before failing"
    assert list(tmp_path.iterdir()) == []


# --- data errors, for every method except svi (covered by test_validation.py) ---------------

DATA_CASES = [
    case("nan-X", classifier, lambda: (_with(X, 3, NAN), Y), ValueError, "X contains NaN"),
    case("inf-y", regressor, lambda: (X, _with(YR, 0, INF)), ValueError, "y contains NaN"),
    case("lengths", classifier, lambda: (X, Y[:-2]), ValueError, "same number of rows"),
    case("features", classifier, lambda: (X[:, :3], Y), ValueError, r"X must have shape \(n, 4"),
    case("label-range", classifier, lambda: (X, _with(Y, 0, 3)), ValueError, r"y labels.*0, 3\)"),
    case("float-labels", classifier, lambda: (X, Y.double()), TypeError, "integer class labels"),
    case("empty", classifier, lambda: (X[:0], Y[:0]), ValueError, "X is empty"),
    case("int-X", classifier, lambda: (X.int(), Y), TypeError, "X must be a floating-point"),
    case("list-y", classifier, lambda: (X, Y.tolist()), TypeError, "y must be a torch.Tensor"),
    case("no-y", classifier, lambda: (X, None), ValueError, "y is required"),
]


@pytest.mark.parametrize("method", [m for m in METHODS if m != "svi"])
@pytest.mark.parametrize(("make_model", "data", "error", "match"), DATA_CASES)
def test_bad_data_for_every_method(method, make_model, data, error, match, tmp_path, monkeypatch):
    _run_fit(make_model, data(), method, {}, error, match, tmp_path, monkeypatch)


# --- options: a typo'd keyword and a non-int seed for every method, then per method ---------

_TYPO = {"svi": "guide_option", "vadam": "epoch", "ivon": "epoch", "l1": "epoch", "l0": "epoch"}
_TYPO |= {"nuts": "warm_up", "hmc": "warm_up"}  # SG-MCMC: "num_draw"

OPTION_CASES = [
    *(
        case(f"{m}-typo", m, {_TYPO.get(m, "num_draw"): 3}, TypeError, _TYPO.get(m, "num_draw"))
        for m in METHODS
    ),
    *(
        case(
            f"{m}-seed-str",
            m,
            {"seed": "0"},
            TypeError,
            "seed",
        )
        for m in METHODS
    ),
    case("svi-lr-nan", "svi", {"lr": NAN}, ValueError, "lr"),
    case("svi-float-batch", "svi", {"batch_size": 2.5}, TypeError, "batch_size"),
    case("svi-draws", "svi", {"num_posterior_samples": 0}, ValueError, "num_posterior_samples"),
    case("svi-no-checkpoint", "svi", {"lr": -1.0, "checkpoint": "ck.pt"}, ValueError, "lr"),
    case("vadam-ard-type", "vadam", {"ard": "thesis"}, TypeError, "ARDOptions"),
    case("vadam-precision", "vadam", {"prior_precision": 0.0}, ValueError, "prior_precision"),
    case("vadam-mc-samples", "vadam", {"num_particles": 0}, ValueError, "num_particles"),
    case("ivon-ard-type", "ivon", {"ard": "yes"}, TypeError, "ard"),
    case("ivon-beta2", "ivon", {"beta2": 1.0}, ValueError, "beta2"),
    case("ivon-hess-init", "ivon", {"hess_init": 0.0}, ValueError, "hess_init"),
    case("ivon-point-lr", "ivon", {"point_lr": -1.0}, ValueError, "point_lr"),
    case("l1-negative", "l1", {"l1": -1.0}, ValueError, "l1"),
    case("l1-threshold-nan", "l1", {"threshold": NAN}, ValueError, "threshold"),
    case("l1-schedule", "l1", {"lr_schedule": "cosine"}, ValueError, "lr_schedule"),
    case("l0-gate-lr", "l0", {"gate_lr": 0.0}, ValueError, "gate_lr"),
    case("l0-draws", "l0", {"num_posterior_samples": -1}, ValueError, "num_posterior_samples"),
    case("sgld-thin", "sgld", {"thin": 0}, ValueError, "thin"),
    case("sgld-burn-in", "sgld", {"warmup": -1}, ValueError, "warmup"),
    case("sgld-chains", "sgld", {"num_chains": 0}, ValueError, "num_chains"),
    case("sgld-prior-string", "sgld", {"prior": "ssgl"}, TypeError, "SSGLPrior"),
    case("sghmc-friction", "sghmc", {"friction": 0.0}, ValueError, "friction"),
    case("sghmc-sampler-conflict", "sghmc", {"sampler": "sgld"}, ValueError, r"\['sampler'\]"),
    case(
        "sgld_sa-inclusion-no-warmup",
        "sgld_sa",
        {"pruning": InclusionPruning(), "warmup": 0},
        ValueError,
        "warmup",
    ),
    case("sghmc_sa-pruning-string", "sghmc_sa", {"pruning": "inclusion"}, TypeError, "pruning"),
    case("sghmc_em-prior-conflict", "sghmc_em", {"prior": "model"}, ValueError, r"\['prior'\]"),
    case("nuts-kernel-conflict", "nuts", {"kernel": "hmc"}, ValueError, r"fixes \[.kernel.\]"),
    case("nuts-float-depth", "nuts", {"max_tree_depth": 2.5}, TypeError, "max_tree_depth"),
    case("nuts-init-options-type", "nuts", {"init_options": "fast"}, TypeError, "init_options"),
    case(
        "nuts-num-steps",
        "nuts",
        {"num_steps": 5},
        ValueError,
        "num_steps",
    ),
    case(
        "nuts-trajectory",
        "nuts",
        {"trajectory_length": 1.0},
        ValueError,
        "trajectory_length",
    ),
    case(
        "nuts-init-options-without-svi",
        "nuts",
        {"init_options": {"epochs": 3}},
        ValueError,
        "init_options",
    ),
    case(
        "nuts-init-unknown-site",
        "nuts",
        {"init": {"0.wieght": torch.zeros(3, 4)}},
        ValueError,
        "0.wieght",
    ),
    case(
        "nuts-init-bad-shape",
        "nuts",
        {"init": {"0.weight": torch.zeros(2)}},
        ValueError,
        r"init\['0.weight'\]",
    ),
    case("hmc-num-steps", "hmc", {"num_steps": 0}, ValueError, "num_steps"),
    case("hmc-trajectory", "hmc", {"trajectory_length": -1.0}, ValueError, "trajectory_length"),
    case(
        "hmc-steps-and-length",
        "hmc",
        {"num_steps": 5, "trajectory_length": 1.0},
        ValueError,
        "num_steps",
    ),
]


@pytest.mark.parametrize(("method", "options", "error", "match"), OPTION_CASES)
def test_bad_option(method, options, error, match, tmp_path, monkeypatch):
    _run_fit(classifier, (X, Y), method, options, error, match, tmp_path, monkeypatch)


def _gaussian_learned_noise() -> psb.SparseBNN:
    return psb.SparseBNN(psb.mlp([4, 1]), P.Normal(), psb.likelihoods.Gaussian())


LATE_CASES = [
    case(
        "svi-map-init-scale",
        "svi",
        classifier,
        (X, Y),
        {"guide": "map", "guide_options": {"init_scale": 0.1}},
        TypeError,
        "init_scale",
    ),
    case("l0-droprate", "l0", classifier, (X, Y), {"droprate_init": 1.5}, ValueError, "droprate"),
    case(
        "l1-not-a-sparsebnn",
        "l1",
        lambda: lambda x, y=None: None,
        (X, Y),
        {},
        TypeError,
        "model must be a SparseBNN",
    ),
    case("l0-learned-noise", "l0", _gaussian_learned_noise, (X, YR), {}, ValueError, "fixed-noise"),
    case(
        "sgld-noise-site-on-classifier",
        "sgld",
        classifier,
        (X, Y),
        {"prior": SSGLPrior("em", noise_site="noise")},
        ValueError,
        "noise_site",
    ),
    case(
        "sgld-init-unknown-site",
        "sgld",
        classifier,
        (X, Y),
        {"init": {"0.wieght": torch.zeros(3, 4)}},
        ValueError,
        "init names sites",
    ),
]


@pytest.mark.parametrize(("method", "make_model", "data", "options", "error", "match"), LATE_CASES)
def test_errors_found_while_setting_up(
    method, make_model, data, options, error, match, tmp_path, monkeypatch
):
    """Errors found while building the guide, the gated network or the sampler's layout, which
    ``fit`` does after seeding the RNG (so the RNG is not compared); nothing is trained or
    written and the model is unchanged."""
    _run_fit(make_model, data, method, options, error, match, tmp_path, monkeypatch, rng=False)


# --- priors and SparseBNN ---------------------------------------------------------------------

CONSTRUCTION_CASES = [
    case("ard-b0-inf", lambda net: P.ARD(b0=INF), ValueError, "b0"),
    case("ard-a0-nan", lambda net: P.ARD(a0=NAN), ValueError, "a0"),
    case("studentt-df-negative", lambda net: P.StudentT(df=-3.0), ValueError, "df"),
    case("horseshoe-scale-nan", lambda net: P.Horseshoe(NAN), ValueError, "global_scale"),
    case(
        "reghs-slab-scale-zero",
        lambda net: P.RegularizedHorseshoe(slab_scale=0.0),
        ValueError,
        "slab_scale",
    ),
    case(
        "reghs-slab-scale-str",
        lambda net: P.RegularizedHorseshoe(slab_scale="2"),
        TypeError,
        "slab_scale",
    ),
    case(
        "ss-prob-nan", lambda net: P.SpikeAndSlab(inclusion_prob=NAN), ValueError, "inclusion_prob"
    ),
    case(
        "ss-prob-str",
        lambda net: P.SpikeAndSlab(inclusion_prob="0.5"),
        TypeError,
        "inclusion_prob",
    ),
    case("ss-equal-scales", lambda net: P.SpikeAndSlab(spike_scale=1.0), ValueError, "spike_scale"),
    case("ss-slab-negative", lambda net: P.SpikeAndSlab(slab_scale=-1.0), ValueError, "slab_scale"),
    case("studentt-groups", lambda net: P.StudentT(groups="both"), ValueError, "groups"),
    case("horseshoe-centered-int", lambda net: P.Horseshoe(centered=1), TypeError, "centered"),
    case("sample-shape-none", lambda net: P.Laplace().sample("w", None), TypeError, "shape"),
    case("sample-shape-float", lambda net: P.Laplace().sample("w", (2.0, 3)), ValueError, "shape"),
    case(
        "bnn-mapping-missing-layer",
        lambda net: psb.SparseBNN(net, {"0": P.Normal()}, psb.likelihoods.Categorical()),
        ValueError,
        r"missing \['2'\]",
    ),
    case(
        "bnn-mapping-not-a-prior",
        lambda net: psb.SparseBNN(net, {"0": P.Normal(), "2": 1.0}, psb.likelihoods.Categorical()),
        TypeError,
        r"prior\['2'\]",
    ),
    case(
        "bnn-prior-class",
        lambda net: psb.SparseBNN(net, P.Horseshoe, psb.likelihoods.Categorical()),
        TypeError,
        "prior",
    ),
    case(
        "bnn-likelihood-class",
        lambda net: psb.SparseBNN(net, P.Normal(), psb.likelihoods.Categorical),
        TypeError,
        "likelihood",
    ),
    case(
        "bnn-bias-prior",
        lambda net: psb.SparseBNN(net, P.Normal(), psb.likelihoods.Categorical(), bias_prior=1.0),
        TypeError,
        "bias_prior",
    ),
    case("mlp-float-size", lambda net: psb.mlp([4, 8.0, 3]), ValueError, "sizes"),
]


@pytest.mark.parametrize(("build", "error", "match"), CONSTRUCTION_CASES)
def test_bad_construction(build, error, match):
    """The user's network is never changed, even when the construction fails."""
    torch.manual_seed(0)
    net = psb.mlp([4, 8, 3])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match=match):
        build(net)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


# --- FitResult --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted() -> psb.FitResult:
    bnn = psb.SparseBNN(psb.mlp([4, 3]), P.Horseshoe(), psb.likelihoods.Categorical())
    return psb.fit(bnn, X, Y, epochs=3, progress=False, num_posterior_samples=5)


RESULT_CASES = [
    case(
        "predict-threshold",
        lambda r: r.predict(X, masked=True, threshold=-1.0),
        ValueError,
        "threshold",
    ),
    case(
        "predict-threshold-str",
        lambda r: r.predict(X, masked=True, threshold="1"),
        TypeError,
        "threshold",
    ),
    case("masks-nan", lambda r: r.masks(NAN), ValueError, "threshold"),
    case("compression", lambda r: r.compression(-0.5), ValueError, "threshold"),
    case("neuron-masks", lambda r: r.neuron_masks(-0.5), ValueError, "threshold"),
    case(
        "evaluate-threshold",
        lambda r: r.evaluate(X, Y, masked=True, threshold=NAN),
        ValueError,
        "threshold",
    ),
    case("prune-threshold", lambda r: r.prune(-1.0), ValueError, "threshold"),
    case(
        "prune-example-features",
        lambda r: r.prune(example_input=X[:, :2]),
        ValueError,
        r"\(n, 4",
    ),
    case("arviz-features", lambda r: r.to_arviz(X[:, :3], Y), ValueError, r"\(n, 4"),
    case("arviz-lengths", lambda r: r.to_arviz(X, Y[:4]), ValueError, "same number of rows"),
    case("arviz-float-labels", lambda r: r.to_arviz(X, Y.float()), TypeError, "integer class"),
    case(
        "arviz-seed",
        lambda r: r.to_arviz(seed="a"),
        TypeError,
        "seed",
    ),
    case(
        "predict-masked-str",
        lambda r: r.predict(X, masked="no"),
        TypeError,
        "masked",
    ),
    case(
        "masks-by",
        lambda r: r.masks(by="psi"),
        ValueError,
        r"by must be one of \['snr'\] for this 'svi' result, got 'psi'",
    ),
    case("masks-by-ard-without-ard", lambda r: r.masks(by="ard"), ValueError, "ard=True"),
    case(
        "predict-masks-unknown-site",
        lambda r: r.predict(X, masked={"w": torch.ones(3, 4, dtype=torch.bool)}),
        ValueError,
        "no weight sites",
    ),
    case(
        "evaluate-masks-float",
        lambda r: r.evaluate(X, Y, masked={k: torch.ones(3, 4) for k in r.weight_sites}),
        TypeError,
        "bool tensor of shape",
    ),
    case("sample-posterior-float", lambda r: r.sample_posterior(2.0), TypeError, "num_samples"),
    case("loglik-labels", lambda r: r.pointwise_log_likelihood(X, Y + 3), ValueError, r"0, 3\)"),
    case("save-missing-dir", lambda r: r.save("no/such/r.pt"), ValueError, "does not exist"),
]


@pytest.mark.parametrize(("call", "error", "match"), RESULT_CASES)
def test_bad_result_call(fitted, call, error, match, tmp_path, monkeypatch):
    """The draws and the model are unchanged afterwards and no file is written."""
    monkeypatch.chdir(tmp_path)
    samples = {k: v.clone() for k, v in fitted.samples.items()}
    state = {k: v.clone() for k, v in fitted.model.state_dict().items()}
    with pytest.raises(error, match=match):
        call(fitted)
    assert all(torch.equal(samples[k], v) for k, v in fitted.samples.items())
    assert all(torch.equal(state[k], v) for k, v in fitted.model.state_dict().items())
    assert list(tmp_path.iterdir()) == []


# --- datasets and saved results ---------------------------------------------------------------

DATASET_CASES = [
    case("load-case-sensitive-name", lambda d: psb.datasets.load("Iris"), ValueError, "name"),
    case("load-split", lambda d: psb.datasets.load("iris", split="valid"), ValueError, "split"),
    case(
        "load-int-dtype",
        lambda d: psb.datasets.load("iris", dtype=torch.int64),
        TypeError,
        "dtype",
    ),
    case(
        "sparse-regression-noise",
        lambda d: psb.datasets.sparse_regression(noise=-1.0),
        ValueError,
        "noise",
    ),
    case(
        "lpsn-noise",
        lambda d: psb.datasets.large_p_small_n(noise_var=-1.0),
        ValueError,
        "noise_var",
    ),
    case(
        "mnist-root-is-a-file",
        lambda d: psb.datasets.load_mnist(d / "file.txt"),
        FileNotFoundError,
        "file.txt",
    ),
    case("result-load-directory", lambda d: psb.load(d), ValueError, "not a file"),
    case("result-load-text-file", lambda d: psb.load(d / "file.txt"), ValueError, "corrupted"),
]


@pytest.mark.parametrize(("call", "error", "match"), DATASET_CASES)
def test_bad_dataset_call(call, error, match, tmp_path):
    """A missing path is a ``FileNotFoundError`` naming it (an ``OSError``, as Python's own)."""
    (tmp_path / "file.txt").write_text("not data\n")
    with pytest.raises(error, match=match):
        call(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


# --- the psbnn command ------------------------------------------------------------------------


def _files(root: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(root / "no_x.npz", A=np.zeros((6, 2)), y=np.zeros(6))
    np.savez(root / "neg.npz", X=rng.normal(size=(20, 2)), y=np.arange(20) % 3 - 1)
    np.savez(root / "frac.npz", X=rng.normal(size=(20, 2)), y=np.linspace(0, 1, 20))
    np.savez(root / "short.npz", X=rng.normal(size=(20, 2)), y=np.arange(19) % 2)
    np.savez(root / "nan.npz", X=np.full((20, 2), np.nan), y=np.arange(20) % 2)
    (root / "data.txt").write_text("1 2 3\n")
    (root / "ok.csv").write_text("a,b,t\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    (root / "taken").write_text("keep me\n")


CLI_CASES = [
    case("test-size", ["fit", "iris", "-o", "out", "--test-size", "1.5"], "--test-size"),
    case("kl-warmup", ["fit", "iris", "-o", "out", "--kl-warmup", "-1"], "--kl-warmup"),
    case("output-is-a-file", ["fit", "iris", "-o", "taken"], "--output 'taken'"),
    case("lr-negative", ["fit", "iris", "-o", "out", "--lr", "-0.1"], "--lr"),
    case("lr-nan", ["fit", "iris", "-o", "out", "--lr", "nan"], "--lr"),
    case("hidden-zero", ["fit", "iris", "-o", "out", "--hidden", "0"], "--hidden"),
    case("csv-target", ["fit", "ok.csv", "-o", "out", "--target", "nope"], "--target 'nope'"),
    case("npz-without-X", ["fit", "no_x.npz", "-o", "out"], "arrays 'X' and 'y'"),
    case("txt-file", ["fit", "data.txt", "-o", "out"], r"expected a \.npz"),
    case(
        "negative-labels",
        ["fit", "neg.npz", "-o", "out", "--task", "classification"],
        "non-negative",
    ),
    case(
        "fractional-labels",
        ["fit", "frac.npz", "-o", "out", "--task", "classification"],
        "integer class labels",
    ),
    case("short-targets", ["fit", "short.npz", "-o", "out"], "20 rows of X but 19 targets"),
    case(
        "nuts-with-lr",
        ["fit", "iris", "-o", "out", "--method", "nuts", "--lr", "0.1"],
        "--lr does not apply",
    ),
    case(
        "vadam-with-guide",
        ["fit", "iris", "-o", "out", "--method", "vadam", "--guide", "map"],
        "--guide does not apply",
    ),
    case(
        "prior-arg-negative",
        ["fit", "iris", "-o", "out", "--prior", "laplace", "--prior-arg", "scale=-1"],
        "scale",
    ),
    case("no-output", ["fit", "iris"], "--output"),
    case(
        "ddp-batch",
        ["fit", "iris", "-o", "out", "--devices", "2", "--batch-size", "3"],
        "--batch-size 3",
    ),
    case("demo-arviz-dir", ["demo", "--arviz", "no/such/x.nc"], "--arviz"),
    case("nan-features", ["fit", "nan.npz", "-o", "out", "--epochs", "2"], "NaN"),
    case(
        "nuts-improper-prior",
        ["fit", "iris", "-o", "out", "--method", "nuts", "--prior", "log_uniform"],
        "improper",
    ),
]


@pytest.mark.parametrize(("argv", "match"), CLI_CASES)
def test_cli_bad_input_is_one_usage_line(argv, match, tmp_path, monkeypatch, capsys):
    """Exit status 2, the last stderr line is ``psbnn ...: error: <reason>``, nothing on stdout,
    no traceback, and the directory is unchanged (no output written)."""
    monkeypatch.chdir(tmp_path)
    _files(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--quiet"])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    last = err.strip().splitlines()[-1]
    assert last.startswith("psbnn") and ": error: " in last
    assert re.search(match, last), last
    assert "Traceback" not in err and out == ""
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_console_script_exits_nonzero_with_one_line(tmp_path):
    """A real process: status 2, one reason line, no traceback, no output directory."""
    argv = ["fit", "iris", "-o", str(tmp_path / "out"), "--test-size", "0"]
    code = "import sys; from pyro_sparse_bnn.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "psbnn fit: error: --test-size must lie in (0, 1), got 0.0"
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_the_tables_hold_at_least_30_distinct_cases_beyond_the_data_grid():
    tables = OPTION_CASES + LATE_CASES + CONSTRUCTION_CASES + RESULT_CASES + DATASET_CASES
    ids = [c.id for c in tables + CLI_CASES]
    assert len(ids) == len(set(ids)) >= 30


def test_extra_feature_dims_are_rejected_up_front():
    with pytest.raises(ValueError, match=r"X must have shape \(n, 4\)"):
        psb.fit(classifier(), X[:, :, None], Y, epochs=2, progress=False)


def test_cli_penalised_fit_on_a_regression_data_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "diabetes", "-o", "out", "--method", "l1", "--epochs", "2", "--hidden", "2"]
    assert main([*argv, "--no-plots", "--quiet"]) == 0
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_nuts_with_an_svi_start_runs():
    result = psb.fit(
        classifier(), X, Y, method="nuts", init="svi", init_options={"epochs": 3},
        num_samples=2, warmup=2, num_chains=2, progress=False,
    )  # fmt: skip
    assert result.samples["0.weight"].shape == (2, 2, 3, 4)
