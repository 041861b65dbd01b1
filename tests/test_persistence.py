"""Save, load, checkpoint and resume: nothing is lost, nothing half-written, resumes are exact."""

from contextlib import nullcontext
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer import result as result_module

X, Y = psb.datasets.load("iris", split="train")


def bnn():
    torch.manual_seed(0)
    return psb.SparseBNN(psb.mlp([4, 5, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())


@pytest.fixture(scope="module")
def fitted():
    return psb.fit(bnn(), X, Y, epochs=10, progress=False, num_posterior_samples=20)


def test_round_trip_is_bit_identical(fitted, tmp_path):
    path = fitted.save(tmp_path / "fit.pt")
    loaded = psb.load(path)
    assert torch.equal(loaded.predict(X)["probs"], fitted.predict(X)["probs"])
    assert loaded.compression() == fitted.compression()
    a, b = fitted.to_arviz(seed=3), loaded.to_arviz(seed=3)
    assert (a.posterior_predictive["y"] == b.posterior_predictive["y"]).all()
    torch.manual_seed(5)
    fresh_a = fitted.sample_posterior(4)["0.weight"]
    torch.manual_seed(5)
    assert torch.equal(fresh_a, loaded.sample_posterior(4)["0.weight"])  # the guide came along


def test_corrupted_incompatible_and_missing_files_raise_clearly(fitted, tmp_path):
    path = fitted.save(tmp_path / "fit.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted"):
        psb.load(tmp_path / "cut.pt")
    (tmp_path / "other.pt").write_text("not a result")
    with pytest.raises(ValueError, match=r"corrupted|not a saved"):
        psb.load(tmp_path / "other.pt")
    payload = torch.load(path, weights_only=False)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format 99"):
        psb.load(tmp_path / "future.pt")
    with pytest.raises(ValueError, match="does not exist"):
        psb.load(tmp_path / "missing.pt")


def test_crash_mid_save_keeps_the_old_file(fitted, tmp_path, monkeypatch):
    path = fitted.save(tmp_path / "fit.pt")
    before = path.read_bytes()

    def crash(obj, f):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(result_module.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        fitted.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.pt"]  # no temporary left behind


def test_unpicklable_model_is_refused_without_writing(tmp_path):
    def model(x, y=None):  # a closure-free but local function: not importable by name
        return psb.priors.Normal().sample("w", (1,))

    result = result_module.FitResult(model, {"w": torch.zeros(1, 2, 1)}, method="x", x=X, y=Y)
    with pytest.raises(TypeError, match="cannot save"):
        result.save(tmp_path / "r.pt")
    assert list(tmp_path.iterdir()) == []


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_file_runs_no_code_when_loaded(fitted, tmp_path):
    marker = tmp_path / "code-ran"
    payload = torch.load(fitted.save(tmp_path / "fit.pt"), weights_only=False)
    payload["info"] = {"attack": _RunsCode(marker)}
    torch.save(payload, tmp_path / "crafted.pt")
    with pytest.raises(ValueError, match=r"refers to builtins.getattr, .*so nothing was loaded"):
        psb.load(tmp_path / "crafted.pt")
    assert not marker.exists()
    torch.load(tmp_path / "crafted.pt", weights_only=False)  # the file really does run code
    assert marker.exists()


def test_every_method_s_result_loads_safely_and_predicts_the_same(tmp_path):
    cases = {"svi": {"epochs": 3}, "nuts": {"num_samples": 4, "warmup": 4}, "l0": {"epochs": 3}}
    cases |= {"vadam": {"epochs": 2}, "sgld_sa": {"num_samples": 4, "warmup": 4}}
    cases |= {"ivon": {"epochs": 2, "ard": True}}
    for method, options in cases.items():
        with pytest.warns(UserWarning) if method in ("nuts", "vadam", "ivon") else nullcontext():
            result = psb.fit(bnn(), X, Y, method=method, progress=False, **options)
        loaded = psb.load(result.save(tmp_path / f"{method}.pt"))
        assert torch.equal(loaded.predict(X)["probs"], result.predict(X)["probs"]), method


def test_a_users_own_model_loads_only_when_trusted(tmp_path):
    result = psb.fit(user_model, X, Y, method="nuts", num_samples=4, warmup=4, progress=False)
    path = result.save(tmp_path / "own.pt")
    with pytest.raises(ValueError, match=r"test_persistence.user_model.*trusted=\["):
        psb.load(path)
    loaded = psb.load(path, trusted=[user_model])
    assert torch.equal(loaded.predict(X)["probs"], result.predict(X)["probs"])


def user_model(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([4, 3]).to_event(2))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Categorical(logits=x @ w), obs=y)
