"""Validation panel: every prior x inference method on sparse linear and logistic problems.

    python benchmarks/panel.py [--quick] [--jobs 2] [--problems a,b] [--methods a,b]

A method is trusted only if it gives the right answer on problems it was not tuned on. The panel
fits one linear model per problem with each method and checks its predictions, its selected
support and its pruned model against an oracle or a non-Bayesian reference, and its posterior
against NUTS under the same prior. ``--jobs N`` runs the (problem, method) tasks in N one-thread
spawn workers; every task seeds itself, so the rows do not depend on N. A full-budget run keeps the
stored rows of the (problem, method) pairs it does not rerun (same budget), so ``--problems`` and
``--methods`` can complete a panel in parts.

Problems (``PROBLEMS``; each defined by its data seed, nothing tuned per problem):

* synthetic ``reg_*``: ``y = X beta + eps``, ``eps ~ N(0, 1)``; ``logit_*``: ``y ~ Bernoulli(
  sigmoid(X beta))``. Rows of ``X`` are ``N(0, R)`` with ``R`` Toeplitz (``rho^|i-j|``) or
  equicorrelated (``rho`` off the diagonal), rho = 0, 0.5 or 0.9. Five non-zero coefficients at
  evenly spaced positions with alternating signs, magnitudes evenly spaced in [1, 2] (strong) or
  [0.25, 0.75] (weak). n = 60 (regression) or 100 (logistic) training rows for p = 100 (n < p),
  n = 100 or 200 for p = 20 (n > p); 1000 test rows from the same law.
* real (scikit-learn bundled): ``breast_cancer`` (binary, 569 x 30), ``diabetes`` (regression,
  442 x 10), ``wine`` (3 classes, 178 x 13, a multinomial model with one weight per class and
  feature); ``train_test_split(test_size=0.3, random_state=0)``, stratified for classification.

Features are standardised with the training rows' mean and sd (synthetic ones have unit variance by
construction and are used as drawn), regression targets likewise, so MSE and noise are in units of
the training sd of ``y``.

The model, for every method: ``SparseBNN(nn.Linear(p, k), prior, likelihood,
bias_prior=Normal(5))`` (k = 1, or the classes): ``weight ~ prior`` (p weights, or classes x p),
intercept ``bias ~ N(0, 5)``, ``noise ~ HalfNormal(1)`` for regression; VADAM-ARD and SGLD-SA
learn the bias as a point estimate (SGLD-SA: fitted during burn-in, then fixed). Its masked
predictions, and so the default masks' budget, use the projected submodel
(``FitResult.submodel_draws``: each draw's kept weights refitted to its predictions, Piironen,
Paasiniemi & Vehtari 2020), not the zeroed draws. Prior scales follow the docs' rules,
never the truth: horseshoes take Piironen & Vehtari's
``tau0 = p0 / (D - p0) * sigma / sqrt(n)`` with ``p0 = max(1, round(D / 10))`` of the D weights and
pseudo-noise ``sigma`` = 1 (standardised regression) or 2 (logistic); the regularised horseshoe
keeps its default slab; ``Laplace(0.1 sigma)`` and ``StudentT(df=1, scale=0.1 sigma)``.

Methods (``METHODS``), every fit seeded with ``FIT_SEED``:

* ``svi_horseshoe``, ``svi_reg_horseshoe``, ``svi_laplace``, ``svi_student_t``: ``fit(method=
  "svi")`` with the default guide and ELBO, 1500 full-batch epochs at lr 0.02 (the README's
  settings), 500 draws; ``_learned`` rows with ``centered="learned"`` (each weight's centring
  learned with the guide, Gorinova, Moore & Hoffman 2020).
* ``nuts_reg_horseshoe`` on every problem; ``nuts_horseshoe``, ``nuts_laplace``,
  ``nuts_student_t`` on the small ones (at most 40 weights), as the reference posteriors of the SVI
  rows with the same prior: ``fit(method="nuts")``, 4 chains x (1000 warm-up + 1000 draws, the
  defaults of ``fit``), target acceptance 0.95, compiled leapfrog steps.
* ``sgld_sa``, ``sgld_sa_pruned``: ``fit(method="sgld_sa")`` (the SSGL prior replaces the model's),
  4 chains, step ``0.1 / n * k^(-1/3)`` (large_p_small_n.py's at n = 100), 4000 burn-in + 200 x 10
  iterations, weights started at 0; ``_pruned`` adds ``pruning=InclusionPruning()``.
* ``vadam_ard``: ``fit(method="vadam", ard=True)`` with ``priors.ARD()``, 3000 full-batch epochs
  at lr 0.01, 500 draws.
* ``ivon_ard``: ``fit(method="ivon", ard=True)`` at its defaults, the same epochs and draws.

Measured per (problem, method): test MSE (regression) or test accuracy and NLL (classification) of
the full posterior predictive and of the model pruned by the default ``fit.masks()`` (``pruned_*``)
and by ``fit.masks(threshold=1.0)``, posterior SNR > 1 (``snr1_*``); for synthetic problems the
true and false positives of both selections; the noise posterior mean; seconds; for NUTS the
divergences, max R-hat and min bulk ESS of the weights.

Pass rules (computed in ``judge``; not tuned to any method's results):

* predictive: regression test MSE <= 1.25 x the oracle's (synthetic: least squares on the true
  support) or <= 1.10 x RidgeCV's (real); classification test accuracy >= reference - 0.02 and
  test NLL <= reference + 0.05 (reference: the oracle, unpenalised logistic regression on the true
  support; real: ``LogisticRegressionCV``, 5-fold, log-loss scored).
* support (synthetic): the default masks keep every *strong* true variable (oracle
  ``|beta_j| / se_j >= 4``: clearly detectable with the oracle's design and noise) and at most 1
  false positive (p <= 50) or 2 (p > 50). Weak true variables are neither required nor counted as
  false positives.
* pruning: the default-pruned model's test NLL <= full + 0.02 and, for classifiers, its accuracy
  >= full - 0.01 (the issue's budget).
* noise (synthetic regression): the posterior mean noise within 20 % of the true noise.
* MCMC (NUTS rows): max R-hat <= 1.01 and min bulk ESS >= 400 over the weights (Vehtari et al.
  2021).

``pass`` is the conjunction of the rules that apply. Agreement with NUTS (``agree``, a separate
verdict, for SVI rows with a same-prior NUTS row on the problem): every weight's posterior mean
within 4 combined MCSE of NUTS's (``|m - m_nuts| <= 4 sqrt(mcse^2 + mcse_nuts^2)``; ArviZ MCSE,
which for i.i.d. variational draws is ``sd / sqrt(draws)``) and equal SNR > 1 inclusion decisions
wherever NUTS's SNR lies outside the Monte Carlo band [0.8, 1.25]. ``strict`` is ``pass`` and
``agree``. Every row also reports its default-mask and SNR > 1 disagreements with
``nuts_reg_horseshoe`` (information only: other priors may rightly disagree).

Writes benchmarks/results/panel.json (rows: kind = "reference" per problem, kind = "fit" per
(problem, method); meta: the rules and settings) and prints the per-problem table and the pass
rates per method.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import subprocess
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile workers: one core each

import arviz as az
import numpy as np
import torch
from _common import RESULTS, print_table, write_results
from sklearn import datasets as sk_datasets
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.sgmcmc import InclusionPruning, PolynomialDecay

FIT_SEED = 0
WEIGHT = "weight"  # the weight site of SparseBNN(nn.Linear(p, classes))
N_TEST = 1000
N_NONZERO = 5
SMALL = 40  # weights: NUTS under every prior (agreement references) up to this size
STRONG_Z = 4.0
RULES = {
    "regression_mse_vs_oracle": 1.25,
    "regression_mse_vs_ridge": 1.10,
    "accuracy_drop_vs_reference": 0.02,
    "nll_increase_vs_reference": 0.05,
    "pruned_nll_increase": 0.02,
    "pruned_accuracy_drop": 0.01,
    "strong_z": STRONG_Z,
    "false_positives": "1 if p <= 50 else 2",
    "noise_relative_error": 0.20,
    "max_rhat": 1.01,
    "min_ess_bulk": 400,
    "agree_mcse": 4.0,
    "agree_snr_band": [0.8, 1.25],
}


# --------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """A synthetic design (``source="synthetic"``) or a scikit-learn data set (``source``)."""

    name: str
    task: str  # "regression", "binary" or "multiclass"
    source: str = "synthetic"
    n: int = 0
    p: int = 0
    rho: float = 0.0
    corr: str = "toeplitz"
    signal: str = "strong"
    seed: int = 0


def _synthetic(task: str, n: int, p: int, rho: float, corr: str, signal: str, seed: int) -> Problem:
    kind = "reg" if task == "regression" else "logit"
    name = f"{kind}_n{n}_p{p}_{corr[:3]}{rho:g}_{signal}_s{seed}"
    return Problem(name, task, n=n, p=p, rho=rho, corr=corr, signal=signal, seed=seed)


PROBLEMS: dict[str, Problem] = {
    pr.name: pr
    for pr in [
        _synthetic("regression", 100, 20, 0.0, "toeplitz", "strong", 1),
        _synthetic("regression", 100, 20, 0.5, "toeplitz", "weak", 2),
        _synthetic("regression", 100, 20, 0.9, "equi", "strong", 3),
        _synthetic("regression", 100, 20, 0.9, "toeplitz", "weak", 4),
        _synthetic("regression", 100, 20, 0.5, "equi", "strong", 5),
        _synthetic("regression", 60, 100, 0.0, "toeplitz", "strong", 6),
        _synthetic("regression", 60, 100, 0.5, "toeplitz", "strong", 7),
        _synthetic("regression", 60, 100, 0.9, "equi", "weak", 8),
        _synthetic("binary", 200, 20, 0.0, "toeplitz", "strong", 11),
        _synthetic("binary", 200, 20, 0.5, "toeplitz", "weak", 12),
        _synthetic("binary", 200, 20, 0.9, "equi", "strong", 13),
        _synthetic("binary", 100, 100, 0.0, "toeplitz", "strong", 14),
        _synthetic("binary", 100, 100, 0.5, "toeplitz", "strong", 15),
        Problem("breast_cancer", "binary", source="breast_cancer"),
        Problem("diabetes", "regression", source="diabetes"),
        Problem("wine", "multiclass", source="wine"),
    ]
}
QUICK_PROBLEMS = [
    "reg_n100_p20_toe0_strong_s1",
    "reg_n60_p100_toe0.5_strong_s7",
    "logit_n200_p20_equ0.9_strong_s13",
    "breast_cancer",
]


@dataclass
class Data:
    """Train/test tensors (``y`` float for regression, int64 labels otherwise), the true
    coefficients of a synthetic problem (in the model's units) and the noise sd."""

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    classes: int  # 1 for regression and binary, else the number of classes
    beta: np.ndarray | None = None
    noise: float | None = None

    @property
    def n_weights(self) -> int:
        return self.X_train.shape[1] * self.classes


def correlation(p: int, rho: float, corr: str) -> np.ndarray:
    """Toeplitz ``rho^|i-j|`` or equicorrelation ``rho`` (unit diagonal)."""
    if corr == "toeplitz":
        index = np.arange(p)
        return rho ** np.abs(index[:, None] - index[None, :])
    return (1.0 - rho) * np.eye(p) + rho


def true_beta(p: int, signal: str) -> np.ndarray:
    low, high = (1.0, 2.0) if signal == "strong" else (0.25, 0.75)
    beta = np.zeros(p)
    positions = np.arange(N_NONZERO) * p // N_NONZERO
    signs = np.where(np.arange(N_NONZERO) % 2 == 0, 1.0, -1.0)
    beta[positions] = signs * np.linspace(high, low, N_NONZERO)
    return beta


def simulate(pr: Problem) -> Data:
    rng = np.random.default_rng(pr.seed)
    chol = np.linalg.cholesky(correlation(pr.p, pr.rho, pr.corr))
    X = rng.standard_normal((pr.n + N_TEST, pr.p)) @ chol.T
    beta = true_beta(pr.p, pr.signal)
    eta = X @ beta
    if pr.task == "regression":
        y = eta + rng.standard_normal(len(eta))
        centre, scale = y[: pr.n].mean(), y[: pr.n].std()
        y, beta, noise = (y - centre) / scale, beta / scale, 1.0 / scale
    else:
        y, noise = (rng.random(len(eta)) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64), None
    return _tensors(X[: pr.n], y[: pr.n], X[pr.n :], y[pr.n :], 1, beta, noise)


def load_real(pr: Problem) -> Data:
    loader = {
        "breast_cancer": sk_datasets.load_breast_cancer,
        "diabetes": sk_datasets.load_diabetes,
        "wine": sk_datasets.load_wine,
    }[pr.source]
    X, y = loader(return_X_y=True)
    stratify = None if pr.task == "regression" else y
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.3, random_state=pr.seed, stratify=stratify
    )
    mean, sd = X_tr.mean(0), X_tr.std(0)
    X_tr, X_te = (X_tr - mean) / sd, (X_te - mean) / sd
    if pr.task == "regression":
        centre, scale = y_tr.mean(), y_tr.std()
        y_tr, y_te = (y_tr - centre) / scale, (y_te - centre) / scale
    classes = int(y.max()) + 1 if pr.task == "multiclass" else 1
    return _tensors(X_tr, y_tr, X_te, y_te, classes)


def _tensors(
    X_tr: np.ndarray,
    y_tr: np.ndarray,
    X_te: np.ndarray,
    y_te: np.ndarray,
    classes: int,
    beta: np.ndarray | None = None,
    noise: float | None = None,
) -> Data:
    y_dtype = torch.float32 if np.issubdtype(y_tr.dtype, np.floating) else torch.int64
    xs = [torch.as_tensor(a, dtype=torch.float32) for a in (X_tr, X_te)]
    ys = [torch.as_tensor(a, dtype=y_dtype) for a in (y_tr, y_te)]
    return Data(xs[0], ys[0], xs[1], ys[1], classes, beta, noise)


def load_problem(pr: Problem) -> Data:
    return simulate(pr) if pr.source == "synthetic" else load_real(pr)


# --------------------------------------------------------------------------------------------
# References: the oracle on the true support (synthetic) or scikit-learn's CV models (real)


def _ols(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares with an intercept: coefficients and their standard errors (no intercept)."""
    design = np.column_stack([np.ones(len(X)), X])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    sigma2 = resid @ resid / (len(y) - design.shape[1])
    cov = sigma2 * np.linalg.inv(design.T @ design)
    return coef, np.sqrt(np.diag(cov))[1:]


def _logistic_se(model: LogisticRegression, X: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(X)), X])
    prob = model.predict_proba(X)[:, 1]
    info = design.T @ (design * (prob * (1 - prob))[:, None])
    return np.sqrt(np.diag(np.linalg.inv(info)))[1:]


def reference(pr: Problem, data: Data) -> dict[str, Any]:
    """The reference row of a problem (test metrics, and for synthetic ones the strong set)."""
    X, y = data.X_train.double().numpy(), data.y_train.numpy()
    X_test, y_test = data.X_test.double().numpy(), data.y_test.numpy()
    row: dict[str, Any] = {"kind": "reference", "problem": pr.name, "task": pr.task}
    if data.beta is not None:
        support = np.flatnonzero(data.beta)
        X, X_test = X[:, support], X_test[:, support]
    if pr.task == "regression":
        if data.beta is not None:
            coef, se = _ols(X, y)
            pred = coef[0] + X_test @ coef[1:]
            row["reference"] = "oracle least squares"
            row["oracle_noise"] = float(np.sqrt(np.mean((y - coef[0] - X @ coef[1:]) ** 2)))
        else:
            ridge = RidgeCV(alphas=np.logspace(-3, 3, 25)).fit(X, y)
            pred = ridge.predict(X_test)
            row["reference"] = f"RidgeCV (alpha {ridge.alpha_:.3g})"
        row["mse"] = float(np.mean((pred - y_test) ** 2))
        row["null_mse"] = float(np.mean((y.mean() - y_test) ** 2))
    else:
        if data.beta is not None:
            model = LogisticRegression(C=np.inf, max_iter=10000).fit(X, y)  # unpenalised
            se = _logistic_se(model, X)
            row["reference"] = "oracle logistic regression"
        else:
            model = LogisticRegressionCV(Cs=20, cv=5, scoring="neg_log_loss", max_iter=10000)
            model.fit(X, y)
            row["reference"] = f"LogisticRegressionCV (C {float(np.ravel(model.C_)[0]):.3g})"
        prob = model.predict_proba(X_test)
        row["accuracy"] = float(np.mean(prob.argmax(1) == y_test))
        row["nll"] = float(log_loss(y_test, prob, labels=list(range(prob.shape[1]))))
    if data.beta is not None:
        z = np.abs(data.beta[support]) / se
        row |= {
            "true_support": support.tolist(),
            "oracle_z": [round(float(v), 2) for v in z],
            "strong": support[z >= STRONG_Z].tolist(),
        }
    return row


# --------------------------------------------------------------------------------------------
# The model and the methods


def likelihood(task: str) -> psb.likelihoods.Likelihood:
    return {
        "regression": lambda: psb.likelihoods.Gaussian(noise_prior_scale=1.0),
        "binary": psb.likelihoods.Bernoulli,
        "multiclass": psb.likelihoods.Categorical,
    }[task]()


def pseudo_sigma(task: str) -> float:
    return 1.0 if task == "regression" else 2.0


def make_prior(name: str, task: str, data: Data) -> psb.priors.Prior:
    """The panel's prior ``name`` for this problem (scales by the rules in the docstring)."""
    sigma, weights, n = pseudo_sigma(task), data.n_weights, data.X_train.shape[0]
    p0 = max(1, round(weights / 10))
    tau0 = p0 / (weights - p0) * sigma / math.sqrt(n)
    return {
        "horseshoe": lambda: psb.priors.Horseshoe(global_scale=tau0),
        "reg_horseshoe": lambda: psb.priors.RegularizedHorseshoe(global_scale=tau0),
        "laplace": lambda: psb.priors.Laplace(0.1 * sigma),
        "student_t": lambda: psb.priors.StudentT(df=1.0, scale=0.1 * sigma),
        "normal": lambda: psb.priors.Normal(1.0),
    }[name]()


def linear_model(
    prior_name: str, pr: Problem, data: Data, bayesian_bias: bool = True
) -> psb.SparseBNN:
    """``SparseBNN(nn.Linear(p, classes))``: ``weight ~ prior``, ``bias ~ N(0, 5)`` (or a point
    estimate)."""
    torch.manual_seed(FIT_SEED)
    net = nn.Linear(data.X_train.shape[1], data.classes)
    prior = make_prior(prior_name, pr.task, data)
    bias_prior = psb.priors.Normal(5.0) if bayesian_bias else None
    return psb.SparseBNN(net, prior, likelihood(pr.task), bias_prior=bias_prior)


@dataclass(frozen=True)
class Budget:
    svi_epochs: int
    nuts_draws: int
    sgld_burn_in: int
    sgld_draws: int
    sgld_thin: int
    vadam_epochs: int
    draws: int


FULL = Budget(1500, 1000, 4000, 200, 10, 3000, 500)  # NUTS: fit()'s default warm-up and draws
QUICK = Budget(300, 60, 500, 50, 4, 300, 200)


def fit_svi(
    prior: str, pr: Problem, data: Data, budget: Budget, centered: str | None = None
) -> psb.FitResult:
    return psb.fit(
        linear_model(prior, pr, data), data.X_train, data.y_train, method="svi",
        epochs=budget.svi_epochs, lr=0.02, num_posterior_samples=budget.draws, seed=FIT_SEED,
        progress=False, centered=centered,
    )  # fmt: skip


def fit_nuts(prior: str, pr: Problem, data: Data, budget: Budget) -> psb.FitResult:
    # a second compiled NUTS fit in one process fails in torch._dynamo's guards (KeyError
    # '_folded_N') unless dynamo's caches are reset first
    torch._dynamo.reset()
    return psb.fit(
        linear_model(prior, pr, data), data.X_train, data.y_train, method="nuts", num_chains=4,
        warmup=budget.nuts_draws, num_samples=budget.nuts_draws, target_accept=0.95,
        graph="compiled", seed=FIT_SEED, progress=False,
    )  # fmt: skip


def fit_sgld_sa(pruning: bool, pr: Problem, data: Data, budget: Budget) -> psb.FitResult:
    n = data.X_train.shape[0]
    # SSGL replaces the weight prior; it would treat a Bayesian bias as a weight group too
    model = linear_model("normal", pr, data, bayesian_bias=False)
    shape = (data.classes, data.X_train.shape[1])
    return psb.fit(
        model, data.X_train, data.y_train, method="sgld_sa",
        step_size=PolynomialDecay(0.1 / n, power=1 / 3), num_samples=budget.sgld_draws,
        warmup=budget.sgld_burn_in, thin=budget.sgld_thin, num_chains=4,
        init={WEIGHT: torch.zeros(shape)}, pruning=InclusionPruning() if pruning else None,
        seed=FIT_SEED, progress=False,
    )  # fmt: skip


def fit_vadam_ard(pr: Problem, data: Data, budget: Budget) -> psb.FitResult:
    torch.manual_seed(FIT_SEED)
    net = nn.Linear(data.X_train.shape[1], data.classes)
    bnn = psb.SparseBNN(net, psb.priors.ARD(), likelihood(pr.task))
    return psb.fit(
        bnn, data.X_train, data.y_train, method="vadam", ard=True, epochs=budget.vadam_epochs,
        lr=0.01, num_posterior_samples=budget.draws, seed=FIT_SEED, progress=False,
    )  # fmt: skip


def fit_ivon_ard(pr: Problem, data: Data, budget: Budget) -> psb.FitResult:
    torch.manual_seed(FIT_SEED)
    net = nn.Linear(data.X_train.shape[1], data.classes)
    bnn = psb.SparseBNN(net, psb.priors.ARD(), likelihood(pr.task))
    return psb.fit(
        bnn, data.X_train, data.y_train, method="ivon", ard=True, epochs=budget.vadam_epochs,
        num_posterior_samples=budget.draws, seed=FIT_SEED, progress=False,
    )  # fmt: skip


Fitter = Callable[[Problem, Data, Budget], psb.FitResult]


@dataclass(frozen=True)
class Method:
    fit: Fitter
    prior: str
    small_only: bool = False
    nuts_reference: str | None = None  # the same-prior NUTS method (agreement)


def _svi(prior: str, centered: str | None = None) -> Method:
    return Method(
        lambda pr, d, b: fit_svi(prior, pr, d, b, centered), prior, nuts_reference=f"nuts_{prior}"
    )


def _nuts(prior: str, small_only: bool) -> Method:
    return Method(lambda pr, d, b: fit_nuts(prior, pr, d, b), prior, small_only)


METHODS: dict[str, Method] = {
    "svi_horseshoe": _svi("horseshoe"),
    "svi_reg_horseshoe": _svi("reg_horseshoe"),
    "svi_laplace": _svi("laplace"),
    "svi_student_t": _svi("student_t"),
    "svi_horseshoe_learned": _svi("horseshoe", "learned"),
    "svi_reg_horseshoe_learned": _svi("reg_horseshoe", "learned"),
    "svi_laplace_learned": _svi("laplace", "learned"),
    "svi_student_t_learned": _svi("student_t", "learned"),
    "nuts_reg_horseshoe": _nuts("reg_horseshoe", small_only=False),
    "nuts_horseshoe": _nuts("horseshoe", small_only=True),
    "nuts_laplace": _nuts("laplace", small_only=True),
    "nuts_student_t": _nuts("student_t", small_only=True),
    "sgld_sa": Method(lambda pr, d, b: fit_sgld_sa(False, pr, d, b), "ssgl"),
    "sgld_sa_pruned": Method(lambda pr, d, b: fit_sgld_sa(True, pr, d, b), "ssgl"),
    "vadam_ard": Method(fit_vadam_ard, "ard"),
    "ivon_ard": Method(fit_ivon_ard, "ard"),
}


# --------------------------------------------------------------------------------------------
# Measuring one fit


def weight_draws(fit: psb.FitResult) -> np.ndarray:
    """The weight site's draws, ``(chain, draw, D)`` (D = p, or classes x p)."""
    draws = fit.samples[WEIGHT]
    return draws.reshape(*draws.shape[:2], -1).double().numpy()


def flat_mask(fit: psb.FitResult, masks: dict[str, Tensor]) -> np.ndarray:
    return masks[WEIGHT].reshape(-1).numpy()


def scores(fit: psb.FitResult, data: Data, masks: dict[str, Tensor] | None) -> dict[str, float]:
    got = fit.evaluate(data.X_test, data.y_test, masked=masks if masks is not None else False)
    if "rmse" in got:
        return {"mse": got["rmse"] ** 2, "nll": got["nll"]}
    return {"accuracy": got["accuracy"], "nll": got["nll"]}


def support_counts(kept: np.ndarray, data: Data) -> dict[str, Any]:
    counts: dict[str, Any] = {"selected": np.flatnonzero(kept).tolist()}
    if data.beta is not None:
        truth = data.beta != 0
        counts |= {"tp": int((kept & truth).sum()), "fp": int((kept & ~truth).sum())}
    return counts


def selection(fit: psb.FitResult, data: Data, masks: dict[str, Tensor], prefix: str) -> dict:
    kept = flat_mask(fit, masks)
    row = {f"{prefix}_n_kept": int(kept.sum())}
    row |= {f"{prefix}_{k}": v for k, v in scores(fit, data, masks).items()}
    row |= {f"{prefix}_{k}": v for k, v in support_counts(kept, data).items()}
    return row


def posterior_summary(fit: psb.FitResult) -> dict[str, list[float]]:
    draws = weight_draws(fit)
    flat = draws.reshape(-1, draws.shape[-1])
    mcse = az.mcse(az.convert_to_dataset({"w": draws}), method="mean")["w"].values
    return {
        "w_mean": [float(f"{v:.5g}") for v in flat.mean(0)],
        "w_sd": [float(f"{v:.5g}") for v in flat.std(0, ddof=1)],
        "w_mcse": [float(f"{v:.5g}") for v in np.atleast_1d(mcse)],
    }


def diagnostics(fit: psb.FitResult) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if "noise" in fit.samples:
        row["noise_mean"] = float(fit.samples["noise"].double().mean())
    if fit.method.startswith("sgld") and "sigma" in fit.info:  # SSGL's SA noise, per chain
        row["ssgl_sigma"] = [round(float(s), 4) for s in fit.info["sigma"]]
        row["noise_mean"] = float(torch.as_tensor(fit.info["sigma"]).double().mean())
    if fit.method == "nuts":
        draws = weight_draws(fit)
        ds = az.convert_to_dataset({"w": draws})
        row |= {
            "divergences": fit.info["divergences"],
            "max_rhat": float(az.rhat(ds)["w"].max()),
            "min_ess_bulk": float(az.ess(ds, method="bulk")["w"].min()),
        }
    return row


def measure(fit: psb.FitResult, data: Data) -> dict[str, Any]:
    row = {f"full_{k}": v for k, v in scores(fit, data, None).items()}
    row |= selection(fit, data, fit.masks(), "pruned")
    row |= selection(fit, data, fit.masks(threshold=1.0), "snr1")
    return row | diagnostics(fit) | posterior_summary(fit)


def run_task(task: tuple[str, str, bool]) -> dict[str, Any]:
    """One method on one problem, on one thread (a worker process of the pool)."""
    problem, method, quick = task
    torch.set_num_threads(1)
    pr, spec = PROBLEMS[problem], METHODS[method]
    row: dict[str, Any] = {"kind": "fit", "problem": problem, "method": method, "task": pr.task}
    row |= {"prior": spec.prior, "data_seed": pr.seed, "fit_seed": FIT_SEED}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = load_problem(pr)
            fit = spec.fit(pr, data, QUICK if quick else FULL)
            row["fit_seconds"] = time.perf_counter() - start
            row |= measure(fit, data)
        except Exception as err:  # one method failing a problem is a result, not a crash
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc(limit=-3)
    row["seconds"] = time.perf_counter() - start
    row["warnings"] = sorted({str(w.message)[:200] for w in caught})[:5]
    return row


# --------------------------------------------------------------------------------------------
# Verdicts


def check_predictive(row: dict, ref: dict, synthetic: bool) -> bool:
    if row["task"] == "regression":
        factor = RULES["regression_mse_vs_oracle" if synthetic else "regression_mse_vs_ridge"]
        return row["full_mse"] <= factor * ref["mse"]
    return (
        row["full_accuracy"] >= ref["accuracy"] - RULES["accuracy_drop_vs_reference"]
        and row["full_nll"] <= ref["nll"] + RULES["nll_increase_vs_reference"]
    )


def check_support(row: dict, ref: dict, p: int) -> bool:
    selected = set(row["pruned_selected"])
    allowed = 1 if p <= 50 else 2
    return set(ref["strong"]) <= selected and row["pruned_fp"] <= allowed


def check_pruned(row: dict) -> bool:
    ok = row["pruned_nll"] <= row["full_nll"] + RULES["pruned_nll_increase"]
    if "full_accuracy" in row:
        ok &= row["pruned_accuracy"] >= row["full_accuracy"] - RULES["pruned_accuracy_drop"]
    return ok


def check_noise(row: dict, noise: float) -> bool:
    return abs(row["noise_mean"] - noise) <= RULES["noise_relative_error"] * noise


def check_mcmc(row: dict) -> bool:
    return row["max_rhat"] <= RULES["max_rhat"] and row["min_ess_bulk"] >= RULES["min_ess_bulk"]


def decisions_differ(row: dict, nuts: dict, band: bool) -> int:
    """Weights whose SNR > 1 decision differs from NUTS's (outside NUTS's MC band if ``band``)."""
    snr = np.abs(row["w_mean"]) / np.maximum(row["w_sd"], 1e-30) > 1.0
    nuts_snr = np.abs(nuts["w_mean"]) / np.maximum(nuts["w_sd"], 1e-30)
    differ = snr != (nuts_snr > 1.0)
    if band:
        low, high = RULES["agree_snr_band"]
        differ &= (nuts_snr < low) | (nuts_snr > high)
    return int(differ.sum())


def agreement(row: dict, nuts: dict) -> dict[str, Any]:
    diff = np.abs(np.subtract(row["w_mean"], nuts["w_mean"]))
    mcse = np.hypot(row["w_mcse"], nuts["w_mcse"])
    z = diff / np.maximum(mcse, 1e-30)
    means_ok = bool(np.all(z <= RULES["agree_mcse"]))
    differ = decisions_differ(row, nuts, band=True)
    return {
        "agree_max_mcse_z": float(z.max()),
        "agree_max_sd_diff": float((diff / np.maximum(nuts["w_sd"], 1e-30)).max()),
        "agree_n_means_off": int((z > RULES["agree_mcse"]).sum()),
        "agree_decisions_differ": differ,
        "agree": means_ok and differ == 0,
    }


def judge(row: dict, refs: dict[str, dict], fits: dict[tuple[str, str], dict]) -> dict:
    """Add the verdicts of the docstring's rules to a fit row (raw fields untouched)."""
    verdict = {k: v for k, v in row.items() if not k.startswith(("ok_", "agree", "vs_nuts"))}
    for key in ("pass", "strict"):
        verdict.pop(key, None)
    if "error" in row:
        return verdict | {"pass": False, "strict": False}
    pr, ref = PROBLEMS[row["problem"]], refs[row["problem"]]
    synthetic = pr.source == "synthetic"
    checks = {
        "ok_predictive": check_predictive(row, ref, synthetic),
        "ok_pruned": check_pruned(row),
    }
    if synthetic:
        checks["ok_support"] = check_support(row, ref, pr.p)
    if synthetic and pr.task == "regression" and "noise_mean" in row:
        checks["ok_noise"] = check_noise(row, ref["true_noise"])
    if row["method"].startswith("nuts"):
        checks["ok_mcmc"] = check_mcmc(row)
    verdict |= checks | {"pass": all(checks.values())}
    reference = METHODS[row["method"]].nuts_reference
    nuts = fits.get((row["problem"], reference)) if reference else None
    if nuts is not None and "error" not in nuts:
        verdict |= agreement(row, nuts)
    rhs = fits.get((row["problem"], "nuts_reg_horseshoe"))
    if rhs is not None and "error" not in rhs and row["method"] != "nuts_reg_horseshoe":
        verdict["vs_nuts_rhs_snr1_differ"] = decisions_differ(row, rhs, band=False)
        differ = set(row["pruned_selected"]) ^ set(rhs["pruned_selected"])
        verdict["vs_nuts_rhs_pruned_differ"] = len(differ)
    verdict["strict"] = verdict["pass"] and verdict.get("agree", True)
    return verdict


# --------------------------------------------------------------------------------------------
# Tables and the run


def pass_rates(rows: list[dict]) -> list[dict]:
    table = []
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        agreed = [r["agree"] for r in mine if "agree" in r]
        table.append({
            "method": method,
            "problems": len(mine),
            "errors": sum("error" in r for r in mine),
            "pass": f"{sum(r['pass'] for r in mine)}/{len(mine)}",
            "pass_rate": sum(r["pass"] for r in mine) / len(mine),
            "agree": f"{sum(agreed)}/{len(agreed)}" if agreed else "",
            "strict": f"{sum(r['strict'] for r in mine)}/{len(mine)}",
            **{k: _rate(mine, k) for k in ("ok_predictive", "ok_support", "ok_pruned",
                                            "ok_noise", "ok_mcmc")},
        })  # fmt: skip
    return table


def _rate(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if key in r]
    return f"{sum(values)}/{len(values)}" if values else ""


def failures(row: dict) -> str:
    if "error" in row:
        return row["error"][:80]
    failed = [k.removeprefix("ok_") for k in row if k.startswith("ok_") and not row[k]]
    if "agree" in row and not row["agree"]:
        failed.append("agree")
    return ",".join(failed)


def problem_table(rows: list[dict], refs: dict[str, dict]) -> list[dict]:
    out = []
    for r in rows:
        ref = refs[r["problem"]]
        metric = "mse" if r["task"] == "regression" else "accuracy"
        out.append({
            "problem": r["problem"], "method": r["method"],
            "ref": ref.get(metric), "full": r.get(f"full_{metric}"),
            "pruned": r.get(f"pruned_{metric}"), "full_nll": r.get("full_nll"),
            "pruned_nll": r.get("pruned_nll"), "kept": r.get("pruned_n_kept"),
            "tp/strong": _strong_found(r, ref),
            "fp": r.get("pruned_fp", ""), "s": r.get("seconds"), "failed": failures(r),
        })  # fmt: skip
    return out


def _strong_found(row: dict, ref: dict) -> str:
    if "strong" not in ref or "pruned_selected" not in row:
        return ""
    return f"{len(set(ref['strong']) & set(row['pruned_selected']))}/{len(ref['strong'])}"


def references(names: list[str]) -> dict[str, dict]:
    refs = {}
    for name in names:
        pr = PROBLEMS[name]
        data = load_problem(pr)
        with warnings.catch_warnings():  # scikit-learn's notices of its coming API changes
            warnings.simplefilter("ignore", FutureWarning)
            refs[name] = reference(pr, data)
        if pr.source == "synthetic":
            refs[name] |= {k: getattr(pr, k) for k in ("rho", "corr", "signal", "seed")}
        refs[name] |= {"n_train": data.X_train.shape[0], "n_test": data.X_test.shape[0]}
        refs[name] |= {"p": data.X_train.shape[1], "classes": data.classes}
        if data.noise is not None:
            refs[name]["true_noise"] = data.noise
    return refs


def select(
    value: str | None, known: dict, what: str, parser: argparse.ArgumentParser
) -> list[str] | None:
    if value is None:
        return None
    names = [v for v in value.split(",") if v]
    unknown = [v for v in names if v not in known]
    if unknown:
        parser.error(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def tasks_for(problems: list[str], methods: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for problem in problems:
        small = is_small(PROBLEMS[problem])
        pairs += [(problem, m) for m in methods if small or not METHODS[m].small_only]
    # NUTS first (the longest tasks), so that the pool's workers finish together
    return sorted(pairs, key=lambda t: not t[1].startswith("nuts"))


def is_small(pr: Problem) -> bool:
    weights = pr.p if pr.source == "synthetic" else load_problem(pr).n_weights
    return weights <= SMALL


def library_version() -> str:
    """The package version and the checkout's commit (``-dirty`` with uncommitted changes)."""
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{psb.__version__} ({commit})"


def stored_rows(quick: bool) -> list[dict]:
    path = RESULTS / "panel.json"
    if quick or not path.exists():
        return []
    stored = json.loads(path.read_text())
    if stored["meta"].get("quick") or stored["meta"].get("budget") != asdict(FULL):
        return []
    return [r for r in stored["rows"] if r.get("kind") == "fit"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 problems, short fits (smoke run)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    parser.add_argument("--problems", help=f"comma list of {', '.join(PROBLEMS)}")
    parser.add_argument("--methods", help=f"comma list of {', '.join(METHODS)}")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    problems = select(args.problems, PROBLEMS, "problems", parser)
    methods = select(args.methods, METHODS, "methods", parser) or list(METHODS)
    problems = problems or (QUICK_PROBLEMS if args.quick else list(PROBLEMS))
    pairs = tasks_for(problems, methods)
    done: dict[tuple[str, str], dict] = {}
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        tasks = [(pr, m, args.quick) for pr, m in pairs]
        for row in pool.imap_unordered(run_task, tasks):
            done[row["problem"], row["method"]] = row
            status = row.get("error", "ok")[:60]
            print(f"{row['problem']} {row['method']}: {row['seconds']:.0f} s {status}", flush=True)
    library = library_version()
    for row in done.values():
        row.setdefault("library", library)
    for row in stored_rows(args.quick):
        done.setdefault((row["problem"], row["method"]), row)
    keep = [pair for pair in done if pair[0] in PROBLEMS and pair[1] in METHODS]
    refs = references(sorted({pr for pr, _ in keep}, key=list(PROBLEMS).index))
    order = {pair: i for i, pair in enumerate((p, m) for p in PROBLEMS for m in METHODS)}
    rows = [judge(done[pair], refs, done) for pair in sorted(keep, key=order.get)]
    print("\nper (problem, method): metric = test MSE (regression) or accuracy; nll = test NLL")
    print_table(problem_table(rows, refs), ["problem", "method", "ref", "full", "pruned",
                                           "full_nll", "pruned_nll", "kept", "tp/strong", "fp",
                                           "s", "failed"])  # fmt: skip
    rates = pass_rates(rows)
    print("\npass rates per method (pass: predictive, support, pruning, noise, MCMC rules; "
          "strict: pass and agreement with same-prior NUTS):")  # fmt: skip
    columns = ["method", "problems", "errors", "pass", "agree", "strict", "ok_predictive"]
    print_table(rates, [*columns, "ok_support", "ok_pruned", "ok_noise", "ok_mcmc"])
    path = write_results(
        "panel", list(refs.values()) + rows, quick=args.quick, jobs=args.jobs,
        budget=asdict(QUICK if args.quick else FULL), rules=RULES, fit_seed=FIT_SEED,
        pass_rates=rates, wall_seconds=time.perf_counter() - start, torch_threads=1,
        library=library,
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
