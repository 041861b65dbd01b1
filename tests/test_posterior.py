"""What each method knows beyond its draws reaches FitResult through the posterior interface:
exact SparseVD moments, VADAM-ARD's prior variances, L0's test-time network, and the draws'
estimates otherwise."""

import pytest
import torch

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.posterior import ARDPosterior, GatedPosterior, GuidePosterior, Posterior
from pyro_sparse_bnn.sparsity import ARD_THRESHOLD

X, Y = psb.datasets.load("iris", split="train")


def bnn(prior):
    torch.manual_seed(0)
    return psb.SparseBNN(psb.mlp([4, 6, 3]), prior, psb.likelihoods.Categorical())


def test_the_draws_give_the_moments_by_default():
    result = psb.fit(bnn(psb.priors.Normal()), X, Y, epochs=20, progress=False)
    assert type(result.posterior) is Posterior
    draws = result.samples["0.weight"].reshape(-1, 6, 4)
    mean, sd = result.weight_moments()["0.weight"]
    torch.testing.assert_close(mean, draws.mean(0))
    torch.testing.assert_close(sd, draws.std(0), rtol=1e-5, atol=1e-7)


def test_a_sparse_vd_guide_gives_its_exact_gaussian_moments():
    """The guide's (theta, sigma), not the 30 draws' noisy estimates: relevance |theta| / sigma."""
    result = psb.fit(
        bnn(psb.priors.LogUniform()), X, Y, guide="sparse_vd", epochs=20, progress=False,
        num_posterior_samples=30,
    )  # fmt: skip
    assert isinstance(result.posterior, GuidePosterior)
    mean, sd = result.weight_moments()["0.weight"]
    assert torch.equal(mean, result.guide.loc("0.weight"))
    assert torch.equal(sd, result.guide.scale("0.weight"))
    drawn = result.samples["0.weight"].reshape(-1, 6, 4).std(0)
    assert not torch.allclose(sd, drawn)  # 30 draws estimate sd to ~13 %
    torch.testing.assert_close(result.relevance()["0.weight"], mean.abs() / sd)


def test_vadam_ard_offers_relevance_by_its_learned_prior_variances():
    result = psb.fit(bnn(psb.priors.ARD()), X, Y, method="vadam", ard=True, epochs=30,
                     progress=False)  # fmt: skip
    assert isinstance(result.posterior, ARDPosterior)
    for site, precision in result.info["prior_precision"].items():
        torch.testing.assert_close(result.relevance("ard")[site], 1.0 / precision)
        keep = result.masks(ARD_THRESHOLD, by="ard")[site]
        assert torch.equal(keep, 1.0 / precision > ARD_THRESHOLD)
    plain = psb.fit(bnn(psb.priors.Normal()), X, Y, epochs=2, progress=False)
    with pytest.raises(ValueError, match=r"\['snr'\].*ard=True"):
        plain.relevance("ard")


def test_l0_prunes_its_deterministic_test_time_network():
    result = psb.fit(bnn(psb.priors.Normal()), X, Y, method="l0", epochs=30, lr=0.01,
                     progress=False)  # fmt: skip
    assert isinstance(result.posterior, GatedPosterior)
    small = result.prune()
    with torch.no_grad():
        expected = result.info["network"].plain_network()(X)
        torch.testing.assert_close(small(X), expected, rtol=1e-5, atol=1e-5)
