"""Numerical stability under stress: 1000 full-batch training steps per configuration (learning
rate 0.1, extreme initialisations, every prior, float32 and float64, degenerate data) either end
with finite parameters, losses, draws and predictions, or stop with the fit's own clear
``FloatingPointError`` ("the ELBO/NLL/loss became nan at epoch k"). A NaN that appears without
that error is a bug.

Data: 20 rows, 3 features, a 3-4-2 ReLU network (3-4-1 for regression), batch = all rows, so
``epochs=1000`` is 1000 optimiser steps. The grid is marked slow (its 51 runs take minutes).
The last tests push one fit over the edge (``lr=10`` on features of size 1e3) and check how it
stops.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyro
import pytest
import torch
from torch import nn

import pyro_sparse_bnn as psb

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

P = psb.priors
ROWS, FEATURES, STEPS = 20, 3, 1000
PRIORS = {
    "normal": P.Normal,
    "laplace": P.Laplace,
    "student_t": P.StudentT,
    "ard": P.ARD,
    "horseshoe": P.Horseshoe,
    "reg_horseshoe": P.RegularizedHorseshoe,
    "spike_slab": P.SpikeAndSlab,
    "log_uniform": P.LogUniform,
}
CLEAR_STOP = re.compile(r"^the (ELBO|NLL|loss) became (nan|inf|-inf) at epoch \d+")


@dataclass(frozen=True)
class Config:
    """One stress configuration; ``options`` go to ``psb.fit``."""

    prior: str = "horseshoe"
    method: str = "svi"
    data: str = "normal"
    dtype: torch.dtype = torch.float32
    lr: float = 0.1
    prior_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [self.method, self.prior, self.data, str(self.dtype).removeprefix("torch.")]
        parts += [f"{k}={v}" for k, v in (self.prior_options | self.options).items()]
        return "-".join([*parts, f"lr={self.lr:g}"])


def make_data(kind: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """20 rows of ``kind``: well-posed or degenerate classification, or regression."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long()
    if kind == "constant_features":
        x = torch.ones_like(x)
    elif kind == "zero_features":
        x = torch.zeros_like(x)
    elif kind == "single_class":
        y = torch.zeros_like(y)
    elif kind == "huge_features":
        x = 1e3 * x
    elif kind == "separable":  # a margin of 40: maximum likelihood sends weights to infinity
        x = x + 20.0 * (2.0 * y[:, None] - 1.0)
    elif kind == "conflicting_labels":  # ten rows, each twice with opposite labels
        x, y = torch.cat([x[:10], x[:10]]), (torch.arange(ROWS) >= 10).long()
    elif kind == "two_rows":
        x, y = x[:2], torch.tensor([0, 1])
    elif kind == "regression":
        return x.to(dtype), (2.0 * x[:, 0] + 0.1 * x[:, 1]).to(dtype)
    elif kind == "constant_target":  # a learned noise can shrink towards 0
        return x.to(dtype), torch.full((ROWS,), 3.0, dtype=dtype)
    return x.to(dtype), y


def _svi(prior: str, data: str = "normal", **kw: Any) -> Config:
    return Config(prior=prior, data=data, **kw)


SPARSEVD = {"guide": "sparse_vd"}
DEGENERATE = (
    "constant_features",
    "zero_features",
    "single_class",
    "huge_features",
    "separable",
    "conflicting_labels",
    "two_rows",
)
CONFIGS = [
    *(_svi(p) for p in PRIORS),
    *(_svi(p, dtype=torch.float64) for p in ("laplace", "horseshoe", "spike_slab", "log_uniform")),
    *(
        _svi(p, options=SPARSEVD | {"guide_options": {"init_log_sigma2": s}})
        for p in ("log_uniform", "horseshoe")
        for s in (0.0, -20.0)
    ),
    *(_svi("horseshoe", options={"guide_options": {"init_scale": s}}) for s in (1.0, 1e-4)),
    _svi("horseshoe", options={"guide": "map"}),
    _svi("horseshoe", prior_options={"centered": True}),
    _svi("laplace", prior_options={"groups": "in"}),
    *(_svi("horseshoe", d) for d in DEGENERATE),
    _svi("log_uniform", "huge_features", options=SPARSEVD),
    _svi("laplace", "regression"),
    *(_svi("horseshoe", "constant_target", dtype=t) for t in (torch.float32, torch.float64)),
    *(
        Config(method="vadam", data=d, options={"ard": ard})
        for ard in (False, True)
        for d in ("normal", "constant_features", "huge_features", "single_class", "separable")
    ),
    *(Config(method="l0", data=d) for d in ("normal", *DEGENERATE)),
    Config(method="l0", dtype=torch.float64),
]


def _finite(module: Any) -> list[str]:
    """Names of the non-finite floating-point parameters and buffers of ``module``."""
    if not isinstance(module, nn.Module):
        return []
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [k for k, v in tensors if v.is_floating_point() and not torch.isfinite(v).all()]


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_training_stays_finite_or_stops_clearly(config: Config) -> None:
    x, y = make_data(config.data, config.dtype)
    regression = config.data in ("regression", "constant_target")
    torch.manual_seed(0)
    bnn = psb.SparseBNN(
        psb.mlp([FEATURES, 4, 1 if regression else 2]),
        PRIORS[config.prior](**config.prior_options),
        psb.likelihoods.Gaussian() if regression else psb.likelihoods.Categorical(),
    )
    options = {"epochs": STEPS, "lr": config.lr, "progress": False, "seed": 0} | config.options
    if config.method != "l1":
        options.setdefault("num_posterior_samples", 10)
    try:
        result = psb.fit(bnn, x, y, method=config.method, **options)
    except FloatingPointError as error:
        assert CLEAR_STOP.match(str(error)), str(error)
        return
    history = result.info["history"]
    assert len(history) == STEPS and all(math.isfinite(h) for h in history)
    networks = (result.model, result.guide, result.info.get("network"))
    assert [k for m in networks for k in _finite(m)] == []
    assert [k for k, v in result.samples.items() if not torch.isfinite(v).all()] == []
    out = result.predict(x)
    assert all(torch.isfinite(v).all() for v in out.values())
    if "probs" in out:
        assert torch.allclose(out["probs"].sum(-1), torch.ones((), dtype=config.dtype))


def test_the_grid_is_large_and_distinct() -> None:
    assert len(CONFIGS) >= 50 and len({str(c) for c in CONFIGS}) == len(CONFIGS)
    assert {c.prior for c in CONFIGS if c.method == "svi"} == set(PRIORS)
    assert {c.dtype for c in CONFIGS} == {torch.float32, torch.float64}


def _diverging() -> tuple[psb.SparseBNN, torch.Tensor, torch.Tensor]:
    """Features of size 1e3 and ``lr=10``: a mean-field fit breaks within about ten steps."""
    gen = torch.Generator().manual_seed(0)
    x = 1e3 * torch.randn(ROWS, FEATURES, generator=gen)
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp([FEATURES, 4, 1]), P.Normal(), psb.likelihoods.Gaussian(noise=1.0))
    return bnn, x, 2e-3 * x[:, 0]


DIVERGING = {"lr": 10.0, "progress": False, "num_posterior_samples": 5}


def test_a_diverging_fit_stops_with_its_own_error_when_validation_is_off() -> None:
    bnn, x, y = _diverging()
    with pyro.validation_enabled(False), pytest.raises(FloatingPointError) as error:
        psb.fit(bnn, x, y, epochs=50, **DIVERGING)
    assert CLEAR_STOP.match(str(error.value)), str(error.value)


def test_a_diverging_fit_stops_with_its_own_error() -> None:
    bnn, x, y = _diverging()
    with pytest.raises(FloatingPointError, match=CLEAR_STOP.pattern):
        psb.fit(bnn, x, y, epochs=50, **DIVERGING)


def test_the_last_step_cannot_leave_non_finite_parameters() -> None:
    bnn, x, y = _diverging()
    epochs: list[int] = []
    with pyro.validation_enabled(False):
        with pytest.raises(FloatingPointError):  # not an AssertionError: a real failure
            psb.fit(bnn, x, y, epochs=50, callback=lambda e, _: epochs.append(e), **DIVERGING)
        # stop right after the step that broke the parameters (the next loss is non-finite)
        try:
            result = psb.fit(bnn, x, y, epochs=len(epochs), **DIVERGING)
        except FloatingPointError as error:
            assert CLEAR_STOP.match(str(error))
            return
    assert _finite(result.guide) == []
    assert [k for k, v in result.samples.items() if not torch.isfinite(v).all()] == []
