"""Quiet by default: no progress-bar warning in a notebook without ipywidgets, no ArviZ log message
about the R-hat of one chain, and advice (not just a warning) when PSIS-LOO is unreliable."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
from tqdm import TqdmWarning
from tqdm.std import tqdm as text_bar

import pyro_sparse_bnn as psb
from pyro_sparse_bnn import progress

NOTEBOOK_WITHOUT_IPYWIDGETS = """
import sys, types
kernel = types.ModuleType("IPython")
class ZMQInteractiveShell: pass
kernel.get_ipython = lambda: ZMQInteractiveShell()
sys.modules["IPython"] = kernel
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
sys.modules["ipywidgets"] = None  # not installed
import warnings
warnings.simplefilter("always")
"""


def simulate_notebook(monkeypatch, ipywidgets: types.ModuleType | None) -> None:
    """What ``tqdm.autonotebook`` sees in a Jupyter kernel; ``ipywidgets=None``: not installed."""
    shell = type("ZMQInteractiveShell", (), {})
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell()
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))
    monkeypatch.setitem(sys.modules, "ipywidgets", ipywidgets)
    for name in list(os.environ):
        if name == "QT_API" or name.startswith("SPYDER"):
            monkeypatch.delenv(name)


def test_the_simulated_notebook_makes_tqdm_auto_warn():
    """The simulation is the real trouble: there ``tqdm.auto`` (imported by Pyro) warns."""
    code = NOTEBOOK_WITHOUT_IPYWIDGETS + "import tqdm.auto\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TqdmWarning: IProgress not found" in done.stderr


def test_a_progress_bar_in_a_notebook_without_ipywidgets_is_the_text_bar_and_silent(monkeypatch):
    simulate_notebook(monkeypatch, ipywidgets=None)
    assert not progress.in_notebook()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bar = progress.progress_bar(total=3, desc="svi", file=io.StringIO())
        bar.update(3)
        bar.close()
    assert type(bar) is text_bar
    assert [str(w.message) for w in caught] == []


def test_a_notebook_with_ipywidgets_gets_the_widget(monkeypatch):
    simulate_notebook(monkeypatch, ipywidgets=types.ModuleType("ipywidgets"))
    assert progress.in_notebook()
    monkeypatch.setenv("QT_API", "pyqt5")  # qtconsole shows text only
    assert not progress.in_notebook()


def test_importing_the_package_in_a_notebook_without_ipywidgets_warns_nothing():
    code = NOTEBOOK_WITHOUT_IPYWIDGETS + "import pyro_sparse_bnn\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert TqdmWarning.__name__ not in done.stderr


# ArviZ's logger: ``Shape validation failed`` for the R-hat of one chain.


@pytest.fixture
def arviz_log(caplog):
    """ArviZ's own logger (it does not propagate to the root logger) feeding ``caplog``."""
    import arviz

    log = arviz._log
    log.addHandler(caplog.handler)
    yield log
    log.removeHandler(caplog.handler)


def test_summary_of_one_chain_logs_no_shape_warning_and_leaves_arviz_as_it_was(arviz_log, caplog):
    import arviz

    draws = np.random.default_rng(0).normal(size=(1, 37, 2))
    idata = psb.arviz.to_inference_data(posterior={"w": draws})
    before = (arviz_log.level, list(arviz_log.filters), list(arviz_log.handlers))
    table = psb.arviz.summary(idata)
    assert np.isnan(table["r_hat"]).all() and (table["ess_bulk"] > 10).all()
    assert "Shape validation" not in caplog.text
    assert (arviz_log.level, list(arviz_log.filters), list(arviz_log.handlers)) == before
    # The cause, and ArviZ still says it when called directly: R-hat needs two chains.
    with caplog.at_level(logging.WARNING):
        arviz.summary(idata)
    assert "Shape validation failed: input_shape: (1, 37), minimum_shape: (chains=2" in caplog.text


def test_only_the_shape_message_is_dropped(arviz_log, caplog):
    with psb.arviz._quiet_shape_validation():
        arviz_log.warning("Shape validation failed: input_shape: (1, 41), ...")
        arviz_log.warning("Array contains NaN-value (a message of test_quiet).")
    assert "Shape validation" not in caplog.text
    assert "NaN-value (a message of test_quiet)" in caplog.text


# PSIS-LOO advice.


def heavy_tailed_idata(chains: int = 1, heavy: int = 5, n: int = 20, stats: bool = False):
    """Log-likelihoods whose importance ratios ``1 / p(y_i | draw)`` are Pareto with shape 1.5 for
    the first ``heavy`` observations (``-log p`` exponential with scale 1.5) and 0.05 for the
    rest; 2,500 draws in all, so ArviZ's threshold is 0.7."""
    rng = np.random.default_rng(1)
    draws = 2500 // chains
    scale = np.where(np.arange(n) < heavy, 1.5, 0.05)
    log_lik = -rng.exponential(scale, size=(chains, draws, n))
    sample_stats = {"lp": rng.normal(size=(chains, draws))} if stats else None
    return psb.arviz.to_inference_data(
        posterior={"w": rng.normal(size=(chains, draws))},
        log_likelihood={"y": log_lik},
        sample_stats=sample_stats,
    )


def loo_warnings(data, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = psb.arviz.loo(data, **kwargs)
    return result, [str(w.message) for w in caught]


def test_loo_of_variational_draws_with_high_pareto_k_says_what_to_do():
    result, messages = loo_warnings(heavy_tailed_idata(), pointwise=False)
    assert len(messages) == 1, messages  # ours, instead of ArviZ's
    (advice,) = messages
    assert "5 of 20 observations have Pareto k > 0.7" in advice
    assert "approximate posterior" in advice and "K-fold cross-validation" in advice
    assert "num_posterior_samples" in advice
    assert bool(result["warning"]) and "pareto_k" not in result  # what pointwise=False gives


def test_loo_of_mcmc_draws_asks_for_more_draws_and_pointwise_is_kept():
    result, messages = loo_warnings(heavy_tailed_idata(chains=4, stats=True), pointwise=True)
    (advice,) = messages
    assert "5 of 20 observations" in advice and "Draw more" in advice
    assert "approximate" not in advice and "K-fold" in advice
    k = np.asarray(result["pareto_k"])
    assert (k[:5] > 0.7).all() and (k[5:] < 0.7).all()


def test_loo_of_a_fit_result_names_its_method():
    idata = heavy_tailed_idata(chains=4, stats=True)
    fit = types.SimpleNamespace(method="vadam", to_arviz=lambda: idata)
    _, (advice,) = loo_warnings(fit)
    assert "method 'vadam'" in advice and "approximate posterior" in advice


def test_loo_with_reliable_pareto_k_is_silent():
    result, messages = loo_warnings(heavy_tailed_idata(heavy=0))
    assert messages == [] and not bool(result["warning"])
