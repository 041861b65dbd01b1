"""``fit``, its method table and the public entry points' keywords: every method named in help,
one name per idea, and a misspelt option answered with the closest valid ones."""

import difflib

import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.fit import METHODS

X_ALL, Y_ALL = psb.datasets.load("iris", split="train")
X, Y = X_ALL[:30], Y_ALL[:30]


def classifier() -> psb.SparseBNN:
    return psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())


MISSPELT = {"svi": "epoch", "vadam": "num_sample", "l0": "lambda_", "l1": "thresold"}
MISSPELT |= {"ivon": "hess_int"}


MISSPELT |= {m: "burnin" for m in METHODS if m.startswith("sg")}


MISSPELT |= {"nuts": "num_sample", "hmc": "warm_up"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_misspelt_option_names_the_method_and_the_closest_valid_ones(method):
    """Every method answers an unknown keyword with the option it probably meant, before any
    work (the global generator is untouched)."""
    meant = difflib.get_close_matches(MISSPELT[method], METHODS[method].options(), n=1)
    assert meant, f"the table's misspelling for {method} is too far from any option"
    match = rf"fit\(method='{method}'\) got an unknown option '{MISSPELT[method]}'; did you mean "
    model = classifier()
    before = torch.get_rng_state()
    with pytest.raises(TypeError, match=match + repr(meant[0])):
        psb.fit(model, X, Y, method=method, progress=False, **{MISSPELT[method]: 1})
    assert torch.equal(before, torch.get_rng_state())


SYNONYMS = {"num_draws", "burn_in", "burnin", "num_warmup", "n_samples", "mc_samples", "n_chains"}


def test_one_name_per_idea_across_methods():
    """docs/architecture.md's vocabulary: no method takes a synonym of another's option."""
    for name, method in METHODS.items():
        assert not SYNONYMS & set(method.options()), name


def test_help_of_fit_names_every_method_and_its_function():
    text = psb.fit.__doc__
    for name, method in METHODS.items():
        assert f'``"{name}"``' in text, name
        assert f"infer.{method.function.__name__}`" in text, name
        assert getattr(psb.infer, method.function.__name__) is method.function


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda r: psb.infer.fit_mcmc(classifier(), X, Y, num_sample=2),
            "did you mean 'num_samples'",
        ),
        (lambda r: r.predict(X, mask=True), r"FitResult.predict\(\) got an unknown option 'mask'"),
        (lambda r: r.masks(tresh=1.0), "did you mean 'threshold'"),
    ],
)
def test_public_functions_name_the_closest_option_to_a_misspelt_keyword(call, match):
    """Not only ``fit``: every public entry point answers an unknown keyword with its options."""
    result = psb.fit(classifier(), X, Y, epochs=2, progress=False)
    with pytest.raises(TypeError, match=match):
        call(result)
