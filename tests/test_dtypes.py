"""One dtype rule: the model runs in the data's floating dtype; later data is converted to it."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.dtypes import data_dtype

X, Y = psb.datasets.load("iris", split="train")


def bnn():
    torch.manual_seed(0)
    return psb.SparseBNN(psb.mlp([4, 5, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())


def hand_written(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([4, 3]).to_event(2))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Categorical(logits=x @ w), obs=y)


@pytest.mark.parametrize("fit_dtype", [torch.float32, torch.float64])
def test_a_fit_predicts_inputs_of_the_other_dtype_exactly_as_its_own(fit_dtype):
    other = torch.float64 if fit_dtype == torch.float32 else torch.float32
    result = psb.fit(bnn(), X.to(fit_dtype), Y, epochs=3, progress=False)
    own = result.predict(X.to(fit_dtype))["probs"]
    converted = result.predict(X.to(other))["probs"]
    assert own.dtype == converted.dtype == fit_dtype
    assert torch.equal(own, converted)
    own_metrics = result.evaluate(X.to(fit_dtype), Y)
    assert result.evaluate(X.to(other), Y) == own_metrics


@pytest.mark.parametrize("method", ["svi", "nuts"])
def test_a_hand_written_model_follows_float64_data(method):
    options = {"epochs": 5} if method == "svi" else {"num_samples": 5, "warmup": 5}
    result = psb.fit(hand_written, X.double(), Y, method=method, progress=False, **options)
    assert result.samples["w"].dtype == torch.float64
    assert result.predict(X)["probs"].dtype == torch.float64
    assert torch.get_default_dtype() == torch.float32  # restored


def test_data_dtype_restores_the_default_after_an_error():
    with pytest.raises(RuntimeError), data_dtype(torch.float64):
        assert torch.get_default_dtype() == torch.float64
        raise RuntimeError("inside")
    assert torch.get_default_dtype() == torch.float32


def test_numpy_scalar_thresholds_are_numbers():
    result = psb.fit(bnn(), X, Y, epochs=3, progress=False)
    expected = result.masks(1.0)
    for threshold in (np.float32(1.0), np.float64(1.0), np.int64(1)):
        masks = result.masks(threshold)
        assert all(torch.equal(masks[k], expected[k]) for k in expected)
    with pytest.raises(TypeError, match="threshold must be a number"):
        result.masks(np.bool_(True))


def test_sparse_vd_moments_are_computed_once_per_guide_state(monkeypatch):
    """Masks, compression and masked evaluation share one moment computation; changing the
    guide's parameters in place invalidates it."""
    result = psb.fit(bnn(), X, Y, guide="sparse_vd", epochs=3, progress=False)
    calls = []
    exact = result.guide.exact_moments
    monkeypatch.setattr(
        result.guide, "exact_moments", lambda *a: calls.append(1) or exact(*a), raising=False
    )
    first = result.compression(1.0)
    result.masks(1.0), result.evaluate(X, Y, masked=result.masks(1.0))
    assert result.compression(1.0) == first and len(calls) == 1
    with torch.no_grad():
        next(result.guide.parameters()).mul_(1.0)
    result.compression(1.0)
    assert len(calls) == 2
