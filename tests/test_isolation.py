"""The toolkit leaves the caller's global state alone: Pyro settings, the param store and the
torch / NumPy / ``random`` generators are after any call what they would have been without it."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_sparse_bnn as psb

X, Y = psb.datasets.load("iris")

PLAIN_PYRO_SCRIPT = """
import pyro, torch
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
{imports}
def model(x, y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 10):
        pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)

class Shift(pyro.nn.PyroModule):
    def forward(self, x):
        return x + pyro.param("shift", torch.tensor(0.5))

pyro.set_rng_seed(0)
guide = AutoNormal(model)
svi = SVI(model, guide, pyro.optim.Adam({{"lr": 0.05}}), Trace_ELBO())
x = torch.linspace(0, 1, 10)
for _ in range(50):
    svi.step(x, 2 * x)
store = pyro.get_param_store()
print(sorted(store.keys()), float(guide.median()["w"]), float(Shift()(x).sum()))
print(pyro.settings.get("module_local_params"))
"""


def run_script(imports: str) -> str:
    code = PLAIN_PYRO_SCRIPT.format(imports=imports)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout


def test_a_plain_pyro_script_gives_the_same_results_with_and_without_the_import():
    """AutoNormal + SVI fill the global param store, a PyroModule may call ``pyro.param``, and
    the module-local mode stays off: exactly as without the toolkit."""
    plain = run_script("")
    assert "AutoNormal.locs.w" in plain and plain.endswith("False\n")
    assert run_script("import pyro_sparse_bnn") == plain
    assert run_script("import pyro_sparse_bnn.metrics") == plain


HEAVY_LIBRARIES = ("arviz", "xarray", "pandas", "scipy", "matplotlib", "seaborn", "sklearn")


def test_importing_the_package_loads_no_heavy_library_until_used():
    """ArviZ, plotting and scikit-learn load on first use (benchmarks/import_time.py times it)."""
    probe = (
        "import sys, pyro_sparse_bnn as psb\n"
        f"print(*[m for m in {HEAVY_LIBRARIES!r} if m in sys.modules], sep=',')\n"
        "psb.datasets.load('iris', 'train'), psb.plots.plot_relevance_heatmap\n"
        f"print(*[m for m in {HEAVY_LIBRARIES!r} if m in sys.modules], sep=',')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    at_import, after_use = done.stdout.split("\n")[:2]
    assert at_import == "" and {"matplotlib", "seaborn", "sklearn"} <= set(after_use.split(","))


def global_draws() -> tuple[float, float, float]:
    return float(torch.rand(())), float(np.random.rand()), random.random()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.fixture
def bnn() -> psb.SparseBNN:
    pyro.clear_param_store()  # other tests' plain Pyro fits fill it; ours must add nothing
    torch.manual_seed(0)
    return psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())


CALLS = {
    "fit_svi": lambda m: psb.fit(m, X, Y, epochs=3, num_posterior_samples=20, progress=False),
    "fit_map": lambda m: psb.fit(m, X, Y, epochs=3, guide="map", progress=False),
    "fit_l1": lambda m: psb.fit(m, X, Y, method="l1", epochs=3, progress=False),
    "fit_vadam": lambda m: psb.fit(m, X, Y, method="vadam", epochs=2, progress=False),
    "fit_ivon": lambda m: psb.fit(m, X, Y, method="ivon", epochs=2, progress=False),
    "fit_sgld": lambda m: psb.fit(
        m, X, Y, method="sgld", num_samples=5, warmup=5, num_chains=2, progress=False
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_fits_and_their_results_leave_the_global_generators_as_they_were(bnn, name):
    seed_everything(1)
    expected = global_draws()
    seed_everything(1)
    fit = CALLS[name](bnn)
    fit.predict(X[:5])
    fit.evaluate(X, Y)
    fit.to_arviz()
    fit.masks()
    assert global_draws() == expected
    assert len(pyro.get_param_store().keys()) == 0


def test_the_fit_seed_alone_decides_the_result(bnn):
    torch.manual_seed(1)
    a = psb.fit(bnn, X, Y, epochs=3, seed=5, progress=False)
    torch.manual_seed(2)
    b = psb.fit(bnn, X, Y, epochs=3, seed=5, progress=False)
    assert a.info["history"] == b.info["history"]


@pytest.mark.parametrize("seed", [-1, 2**32, 1.0, "0", True])
def test_bad_seeds_are_rejected_before_anything_runs(bnn, seed):
    seed_everything(1)
    expected = global_draws()
    seed_everything(1)
    error = ValueError if isinstance(seed, int) and not isinstance(seed, bool) else TypeError
    with pytest.raises(error, match="seed must be"):
        psb.fit(bnn, X, Y, epochs=2, seed=seed, progress=False)
    assert global_draws() == expected


def test_guides_built_outside_never_share_parameters_through_the_store(bnn):
    """Two user-built AutoNormal guides of the same model have the same parameter names; each
    fit keeps its own (the global store would hand the second fit the first one's values)."""
    other = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    a = psb.fit(bnn, X, Y, epochs=30, guide=AutoNormal(bnn), progress=False)
    b = psb.fit(other, X, Y, epochs=1, lr=1e-6, guide=AutoNormal(other), progress=False)
    name = "0.weight_decentered"
    loc_a, loc_b = a.guide.median()[name], b.guide.median()[name]
    assert not torch.allclose(loc_a, loc_b, atol=1e-3)
    assert len(pyro.get_param_store().keys()) == 0


def test_the_toolkits_guides_own_their_parameters_when_the_user_calls_them(bnn):
    fit = CALLS["fit_svi"](bnn)
    fit.guide(X, Y)
    fit.model(X, Y)
    assert len(pyro.get_param_store().keys()) == 0


# Threads: the loops run one intra-op thread for a small model and restore the caller's count.


@pytest.fixture
def two_threads(monkeypatch):
    """torch at 2 intra-op threads (the suite pins 1), the rule's environment variable unset."""
    monkeypatch.delenv(psb.isolation.THREADS_VARIABLE, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_loop_threads_restores_the_callers_count_also_after_an_exception(two_threads):
    with psb.isolation.loop_threads(67) as chosen:
        assert chosen == torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError), psb.isolation.loop_threads(67):
        torch.set_num_threads(3)  # even a count changed inside is put back
        raise KeyError("boom")
    assert torch.get_num_threads() == 2


def test_the_rule_picks_one_thread_below_the_crossover_and_leaves_a_large_model_alone(two_threads):
    below = psb.isolation.SINGLE_THREAD_BELOW
    assert psb.isolation.threads_for(67) == psb.isolation.threads_for(below - 1) == 1
    assert psb.isolation.threads_for(below) == psb.isolation.threads_for(None) == 2


def test_the_user_chooses_by_argument_or_environment_variable(two_threads, monkeypatch):
    name = psb.isolation.THREADS_VARIABLE
    monkeypatch.setenv(name, "2")
    assert psb.isolation.threads_for(67) == 2
    assert psb.isolation.threads_for(10**9, num_threads=1) == 1  # the argument wins
    monkeypatch.setenv(name, "auto")
    assert psb.isolation.threads_for(67) == 1
    monkeypatch.setenv(name, "two")
    with pytest.raises(ValueError, match=f"{name} must be a positive int or 'auto', got 'two'"):
        psb.isolation.threads_for(67)
    with pytest.raises(ValueError, match="num_threads must be a positive int"):
        psb.infer.loop.LoopOptions(epochs=1, num_threads=0)


def threads_seen(**fit_options) -> list[int]:
    """torch's thread count at each callback of a tiny iris fit."""
    seen: list[int] = []
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    callback = lambda *args: seen.append(torch.get_num_threads())  # noqa: E731
    psb.fit(bnn, X, Y, progress=False, callback=callback, **fit_options)
    return seen


LOOPS = {
    "svi": {"epochs": 2},
    "l1": {"method": "l1", "epochs": 2},
    "sgld": {"method": "sgld", "num_samples": 2, "warmup": 2, "num_chains": 2},
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_fits_train_small_models_on_one_thread_and_restore_the_count(two_threads, loop):
    assert set(threads_seen(**LOOPS[loop])) == {1}
    assert torch.get_num_threads() == 2


def test_a_fit_keeps_the_callers_threads_above_the_crossover_or_when_told(two_threads, monkeypatch):
    monkeypatch.setattr(psb.isolation, "SINGLE_THREAD_BELOW", 10)  # iris 4-3 is "large" now
    assert set(threads_seen(epochs=2)) == {2}
    monkeypatch.setattr(psb.isolation, "SINGLE_THREAD_BELOW", 10**6)
    monkeypatch.setenv(psb.isolation.THREADS_VARIABLE, "2")
    assert set(threads_seen(epochs=2)) == {2}
    torch.set_num_threads(1)
    assert set(threads_seen(epochs=2)) == {2}
    assert torch.get_num_threads() == 1


def test_a_failing_fit_restores_the_threads(two_threads):
    def fail(epoch, loss):
        assert torch.get_num_threads() == 1
        raise RuntimeError("stop here")

    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    with pytest.raises(RuntimeError, match="stop here"):
        psb.fit(bnn, X, Y, epochs=3, progress=False, callback=fail)
    assert torch.get_num_threads() == 2


def test_nuts_chains_run_on_one_thread_and_restore_the_count(two_threads):
    from pyro_sparse_bnn.infer.mcmc.run import sample

    seen: list[int] = []

    def gaussian(theta):
        seen.append(torch.get_num_threads())
        return 0.5 * (theta**2).sum(-1), theta

    sample(gaussian, torch.zeros(2, 3), num_warmup=5, num_samples=5, seeds=[0, 1])
    assert set(seen) == {1} and torch.get_num_threads() == 2
    seen.clear()
    sample(gaussian, torch.zeros(2, 3), num_warmup=2, num_samples=2, seeds=[0, 1], num_threads=2)
    assert set(seen) == {2} and torch.get_num_threads() == 2


def test_public_calls_run_small_models_on_one_thread(two_threads, monkeypatch):
    @psb.isolation.isolated
    def probe(model=None):
        return torch.get_num_threads()

    assert probe(torch.nn.Linear(4, 3)) == 1 and torch.get_num_threads() == 2
    assert probe() == 2  # no model: the caller's count
    bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    fit = psb.fit(bnn, X, Y, epochs=2, num_posterior_samples=20, progress=False)
    seen: list[int] = []
    fit.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    fit.evaluate(X, Y)
    assert set(seen) == {1} and torch.get_num_threads() == 2
    monkeypatch.setattr(psb.isolation, "SINGLE_THREAD_BELOW", 10)
    seen.clear()
    fit.evaluate(X, Y)
    assert set(seen) == {2}
