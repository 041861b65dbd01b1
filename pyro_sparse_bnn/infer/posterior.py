"""What a fitted method knows about its posterior beyond the stored draws.

A :class:`~pyro_sparse_bnn.FitResult` asks its :class:`Posterior` for the weights' moments, their
relevance and the pruned network. The base class estimates everything from the draws; a method
that knows more passes a subclass: the exact Gaussian moments of a SparseVD guide
(:class:`GuidePosterior`), the learned prior variances of VADAM-ARD (:class:`ARDPosterior`), the
deterministic test-time network of L0 gates (:class:`GatedPosterior`). The result never asks who
made it.

>>> import torch
>>> from pyro_sparse_bnn import FitResult, SparseBNN, mlp, priors, likelihoods
>>> bnn = SparseBNN(mlp([2, 1]), priors.Normal(), likelihoods.Gaussian(noise=1.0))
>>> w = torch.tensor([[3.0, 0.0]]) + torch.randn(1, 400, 1, 2) * torch.tensor([1.0, 1.0])
>>> result = FitResult(bnn, {"0.weight": w}, method="demo", x=torch.zeros(1, 2), y=torch.zeros(1),
...                    posterior=ARDPosterior({"0.weight": torch.tensor([[1.0, 1e-6]])}))
>>> result.relevance("ard")["0.weight"].tolist()
[[1.0, 9.999999974752427e-07]]
>>> result.masks(1e-4, by="ard")["0.weight"].tolist()
[[True, False]]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..prune import masked_result_network, prune
from ..sparsity import moments, signal_to_noise

if TYPE_CHECKING:
    from .result import FitResult

__all__ = ["ARDPosterior", "GatedPosterior", "GuidePosterior", "Posterior", "guide_posterior"]


class Posterior:
    """Weight moments, relevance and pruning estimated from the stored draws.

    ``relevance_rules`` names the ``by=`` values :meth:`relevance` accepts.
    """

    relevance_rules: tuple[str, ...] = ("snr",)

    def weight_moments(self, result: FitResult) -> dict[str, tuple[Tensor, Tensor]]:
        """Posterior ``(mean, sd)`` of every weight site, from the draws."""
        return {k: moments(result.samples[k]) for k in result.weight_sites}

    def relevance(self, result: FitResult, by: str) -> dict[str, Tensor]:
        """Relevance per weight site, high for weights to keep; ``by="snr"``: ``|mean| / sd``."""
        if by not in self.relevance_rules:
            hint = " (by='ard' needs fit(method='vadam', ard=True))" if by == "ard" else ""
            raise ValueError(
                f"by must be one of {list(self.relevance_rules)} for this {result.method!r} "
                f"result{hint}, got {by!r}"
            )
        return {k: signal_to_noise(*m) for k, m in result.weight_moments().items()}

    def masked_network(self, result: FitResult, masks: Mapping[str, Tensor]) -> nn.Module:
        """The full-size deterministic network of ``result`` under ``masks``."""
        return masked_result_network(result, masks)

    def prune(
        self,
        result: FitResult,
        masks: Mapping[str, Tensor],
        example_input: Tensor | None,
        inputs: str,
    ) -> nn.Module:
        """The smaller plain network of ``result`` under ``masks`` (``inputs``: see ``prune``)."""
        x = result.x[:1] if example_input is None else example_input
        return prune(self.masked_network(result, masks), x, inputs=inputs)


class GuidePosterior(Posterior):
    """The exact Gaussian moments of a guide that knows them (``guide.exact_moments``: the
    SparseVD family); the draws' for the sites it does not cover."""

    def __init__(self, guide: Any) -> None:
        self.guide = guide
        self._cache: tuple[tuple, dict[str, tuple[Tensor, Tensor]]] | None = None

    def weight_moments(self, result: FitResult) -> dict[str, tuple[Tensor, Tensor]]:
        """Computed once (a Monte Carlo pass over the scale sites for a non-centred prior) and
        again only if the guide's parameters change in place (their ``_version`` counters)."""
        key = (id(result), tuple(p._version for p in self.guide.parameters()))
        if self._cache is None or self._cache[0] != key:
            exact = self.guide.exact_moments(result.model, result.weight_sites)
            found = {
                k: exact[k] if k in exact else moments(result.samples[k])
                for k in result.weight_sites
            }
            self._cache = (key, found)
        return dict(self._cache[1])


class ARDPosterior(Posterior):
    """Adds ``by="ard"``: the learned ARD prior variance ``1 / E[psi]`` of each weight. The
    precision of a weight the data do not support grows without bound, so its variance goes
    to zero (prune below ``sparsity.ARD_THRESHOLD``)."""

    relevance_rules = ("snr", "ard")

    def __init__(self, prior_variance: Mapping[str, Tensor]) -> None:
        self.prior_variance = dict(prior_variance)

    def relevance(self, result: FitResult, by: str) -> dict[str, Tensor]:
        if by == "ard":
            return {k: self.prior_variance[k] for k in result.weight_sites}
        return super().relevance(result, by)


class GatedPosterior(Posterior):
    """L0 gates: the pruned network is the gates' deterministic test-time network
    (``network.plain_network()``), whatever the masks."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def masked_network(self, result: FitResult, masks: Mapping[str, Tensor]) -> nn.Module:
        return self.network.plain_network()


def guide_posterior(guide: Any) -> Posterior:
    """:class:`GuidePosterior` for a guide that knows exact moments, else :class:`Posterior`."""
    return GuidePosterior(guide) if hasattr(guide, "exact_moments") else Posterior()
