"""The one result type every inference method returns.

A :class:`FitResult` holds a Pyro model and posterior draws of its latent sites, shaped
``(chain, draw, ...)``. Everything else is computed from those two: predictions average the model's
observation distribution over draws, masks come from the weights' posterior signal-to-noise (or
their learned ARD precisions), and ``to_arviz`` packs draws, predictions and pointwise
log-likelihoods into ``InferenceData``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import Tensor

from .. import arviz as psb_arviz
from .. import guides, metrics
from ..dtypes import data_dtype, to_fit_dtype
from ..isolation import check_seed, isolated
from ..nn import BIAS_PARAMS
from ..priors import WEIGHT_TAG
from ..projection import linear_layer, project
from ..prune import live_masks
from ..sparsity import (
    MAX_ACCURACY_DROP,
    MAX_NLL_INCREASE,
    budget_masks,
    compression,
    keep_masks,
    neuron_masks,
)
from ..validation import check_bool, check_positive_int, check_xy
from .posterior import Posterior, guide_posterior
from .predictive import DrawPredictive
from .result_file import SAVED_FIELDS, read_fields, write_fields

__all__ = ["FitResult"]

Masking = bool | Mapping[str, Tensor]  # no masks, ``masks(threshold)``, or the given keep-masks
_DEFAULT_BUDGET = ("snr", MAX_NLL_INCREASE, MAX_ACCURACY_DROP)  # the cache key of ``masks()``
_PROJECTIONS_KEPT = 32  # projected submodels remembered per result (a budget search makes ~10)


class FitResult:
    """Posterior draws of a Pyro model, with prediction, pruning and ArviZ export.

    Args:
        model: the fitted Pyro model ``model(x, y=None)``.
        samples: draws of every latent (and deterministic) site, each ``(chain, draw, ...)``.
        method: name of the inference method that produced the draws.
        x, y: the training data (ArviZ's ``observed_data`` and default evaluation data).
        info: method-specific extras (training history, seconds, ...).
        sample_stats: per-draw sampler statistics ``(chain, draw)`` (MCMC).
        guide: the fitted guide of a variational method (fresh draws come from it).
        posterior: what the method knows beyond the draws (exact moments, ARD relevance, a
            gated network: :mod:`~pyro_sparse_bnn.infer.posterior`); by default what the guide
            knows, else estimates from the draws.

    >>> import pyro_sparse_bnn as psb
    >>> X, y = psb.datasets.load("iris")
    >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    >>> result = psb.fit(bnn, X, y, epochs=50, progress=False)
    >>> result  # doctest: +ELLIPSIS
    FitResult(method='svi', draws=1 chain x 200, sites=[...], weights kept ... of 12 (SNR > 1; ...))
    >>> result.compression()["n_weights"], result.predict(X[:2])["probs"].shape
    (12, torch.Size([2, 3]))
    >>> result  # doctest: +ELLIPSIS
    FitResult(method='svi', ..., weights kept ... of 12 (default masks, ...x))
    """

    @isolated
    def __init__(
        self,
        model: Callable,
        samples: dict[str, Tensor],
        *,
        method: str,
        x: Tensor,
        y: Tensor,
        info: dict[str, Any] | None = None,
        sample_stats: dict[str, Tensor] | None = None,
        guide: Callable | None = None,
        posterior: Posterior | None = None,
    ) -> None:
        self.model = model
        self.samples = samples
        self.method = method
        self.x, self.y = x, y
        self.info = dict(info or {})
        self.sample_stats = dict(sample_stats or {})
        self.guide = guide
        self.posterior = guide_posterior(guide) if posterior is None else posterior
        self.weight_sites = self._find_weight_sites()
        self._predictive = DrawPredictive(model)
        self._budget_masks: dict[tuple, dict[str, Tensor]] = {}
        self._projections: dict[tuple, dict[str, Tensor]] = {}

    def __repr__(self) -> str:
        """Method, draws, sites and kept weights: under the default masks once computed (they
        cost a predictive search), until then under the fixed SNR > 1 rule."""
        default = self._budget_masks.get(_DEFAULT_BUDGET)
        stats = self.compression(1.0) if default is None else self._compression(default)
        rule = (
            "SNR > 1; .compression() for the default masks"
            if default is None
            else (f"default masks, {stats['compression']:.1f}x")
        )
        return (
            f"FitResult(method={self.method!r}, draws={self.num_chains} "
            f"chain{'s' * (self.num_chains > 1)} x {self.num_draws}, sites={sorted(self.samples)}, "
            f"weights kept {stats['n_kept']} of {stats['n_weights']} ({rule}))"
        )

    def _check_data(self, x: Any, y: Any = None) -> tuple[Tensor, Tensor | None]:
        """``check_xy``, then floating data converted to the dtype of the fit (:mod:`dtypes`)."""
        x, y = check_xy(x, y, model=self.model)
        return to_fit_dtype(x, self.x.dtype), to_fit_dtype(y, self.x.dtype)

    def _find_weight_sites(self) -> list[str]:
        with torch.no_grad(), data_dtype(self.x.dtype):
            trace = poutine.trace(poutine.condition(self.model, self._flat_draw(0))).get_trace(
                self.x[:1]
            )
        return [n for n, s in trace.nodes.items() if s.get("infer", {}).get(WEIGHT_TAG)]

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        """Draws per chain."""
        return next(iter(self.samples.values())).shape[1]

    def _flat_draw(self, i: int) -> dict[str, Tensor]:
        return {k: v.reshape(-1, *v.shape[2:])[i] for k, v in self.samples.items()}

    @isolated
    def sample_posterior(self, num_samples: int | None = None) -> dict[str, Tensor]:
        """Posterior draws with chains flattened: ``{site: (num_samples, ...)}``.

        Without ``num_samples``, the stored draws. With it, fresh draws where the method can make
        them (a variational posterior), otherwise ``num_samples`` stored draws evenly spaced.
        """
        if num_samples is not None:
            check_positive_int(num_samples, "num_samples")
            if self.guide is not None:
                with data_dtype(self.x.dtype):
                    fresh = guides.draw(self.model, self.guide, self.x[:1], num_samples)
                return {k: v[0] for k, v in fresh.items()}
            total = self.num_chains * self.num_draws
            if num_samples > total:
                raise ValueError(f"num_samples must be at most the {total} stored draws")
            index = torch.linspace(0, total - 1, num_samples).round().long()
            return {k: v[index] for k, v in self.sample_posterior().items()}
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.samples.items()}

    @isolated
    def weight_moments(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Posterior ``(mean, sd)`` of every weight site.

        Exact where the method knows them (a SparseVD guide's Gaussian moments), otherwise
        estimated from the stored draws, whose sampling noise floors the relevance of a
        zero-mean weight at about ``1 / sqrt(draws)``.
        """
        return self.posterior.weight_moments(self)

    @isolated
    def relevance(self, by: str = "snr") -> dict[str, Tensor]:
        """Relevance per weight site, high for weights to keep.

        ``by="snr"``: the posterior signal-to-noise ``|mean| / sd`` (:meth:`weight_moments`).
        ``by="ard"`` (``fit(method="vadam", ard=True)``): the learned ARD prior variance
        ``1 / E[psi_j]``; the precision of a weight the data do not support grows without bound,
        so its variance goes to zero. ``self.posterior.relevance_rules`` lists what this result
        offers.
        """
        return self.posterior.relevance(self, by)

    @isolated
    def masks(
        self,
        threshold: float | None = None,
        by: str = "snr",
        *,
        data: tuple[Tensor, Tensor] | None = None,
        max_nll_increase: float = MAX_NLL_INCREASE,
        max_accuracy_drop: float = MAX_ACCURACY_DROP,
    ) -> dict[str, Tensor]:
        """Keep-masks per weight site, the weights ranked by :meth:`relevance` ``by``.

        By default (no ``threshold``) the predictive budget rule
        (:func:`~pyro_sparse_bnn.sparsity.budget_masks`): the fewest most relevant weights
        (counted up from the most relevant) whose masked posterior predictive has an NLL at most
        ``max_nll_increase`` nats per row above
        the full posterior's and, for a classifier, an accuracy at most ``max_accuracy_drop``
        below it, each with one standard error to spare; measured on held-out ``data=(x, y)``
        if given, else on the training data by PSIS-LOO (:meth:`loo_metrics`), which does not
        reward weights that fit noise. Where PSIS flags its own estimate as unreliable for the
        full posterior (a Pareto ``k`` above 0.7, common for mean-field variational draws), the
        in-sample loss must stay within the budget too: LOO was then optimistic for pruned
        models. Bayesian biases are always kept (one parameter per unit). A submodel's predictive
        is that of :meth:`submodel_draws`: projected for a
        single-``nn.Linear`` ``SparseBNN`` (Piironen, Paasiniemi & Vehtari 2020), so weights
        that only stood in for others are not kept; for MCMC draws the LOO loss alone then
        decides (in sample, the submodel would have to copy the full posterior's fit to noise).
        With a ``threshold``, the fixed rule: relevance above it
        (``SNR_THRESHOLD`` = 1 for ``"snr"``, ``ARD_THRESHOLD`` = 1e-4 for ``"ard"``).
        """
        scores = self.relevance(by)
        if threshold is not None:
            if data is not None:
                raise ValueError("masks takes a threshold or a budget (data=...), not both")
            return keep_masks(scores, threshold)
        key = (by, max_nll_increase, max_accuracy_drop)
        if data is None and key in self._budget_masks:
            return dict(self._budget_masks[key])
        if data is None:
            # a projected submodel of posterior draws (MCMC) is judged by LOO alone: in sample
            # it is measured by how well it copies the full posterior's fit to the noise. Draws
            # of an approximate posterior (VI) keep the in-sample check where LOO is unreliable
            projected = linear_layer(self.model) is not None
            variational = self.method in psb_arviz.VARIATIONAL_METHODS
            exempt = projected and not variational
            in_sample = not exempt and not self._loo_reliable()
            losses = partial(self._training_losses, in_sample=in_sample)
        elif isinstance(data, tuple | list) and len(data) == 2:
            x, y = self._check_data(*data)
            losses = partial(self._losses, x, y)
        else:
            raise TypeError(f"data must be a pair (x, y) of held-out data, got {data!r}")
        biases = {  # one parameter per unit: kept, not searched
            k: torch.ones_like(v, dtype=torch.bool)
            for k, v in scores.items()
            if k.rpartition(".")[2] in BIAS_PARAMS
        }
        found = budget_masks(
            {k: v for k, v in scores.items() if k not in biases},
            lambda keep: losses({} if keep is None else keep | biases),
            max_nll_increase=max_nll_increase,
            max_accuracy_drop=max_accuracy_drop,
        )
        found = {k: (found | biases)[k] for k in scores}
        if data is None:
            self._budget_masks[key] = found
        return dict(found)

    @isolated
    def neuron_masks(self, threshold: float | None = None, by: str = "snr") -> dict[str, Tensor]:
        """Per input neuron (channel) of each weight site: kept if any of its weights is kept."""
        return neuron_masks(self.masks(threshold, by))

    @isolated
    def prune(
        self,
        threshold: float | None = None,
        example_input: Tensor | None = None,
        by: str = "snr",
        *,
        inputs: str = "keep",
    ) -> Any:
        """A smaller network of the same architecture: posterior-mean weights outside
        :meth:`masks` ``(threshold, by)`` zeroed and dead neurons/channels removed
        (``exp(-1.5)`` is SparseVD's ``log_alpha > 3``; any network through torch-pruning's
        dependency graph, :mod:`~pyro_sparse_bnn.prune_graph`). Its outputs equal the masked
        network's. A pruned ``nn.Sequential`` is made of torch modules only
        (``torch.save(small)`` loads without this package), but for a recurrent net's
        :class:`~pyro_sparse_bnn.recurrent.RecurrentOutput` modules and a bag network, which
        stays a smaller :class:`~pyro_sparse_bnn.mil.MILNet`; ``inputs="select"`` drops unread
        input features (see :func:`~pyro_sparse_bnn.prune.prune`).
        """
        if inputs not in ("keep", "select"):
            raise ValueError(f"inputs must be 'keep' or 'select', got {inputs!r}")
        if example_input is not None:
            example_input = self._check_data(example_input)[0]
        return self.posterior.prune(self, self.masks(threshold, by), example_input, inputs)

    @isolated
    def masked_network(self, threshold: float | None = None, by: str = "snr") -> Any:
        """The full-size deterministic network that :meth:`prune` makes smaller (same outputs):
        posterior-mean weights, those outside :meth:`masks` ``(threshold, by)`` zeroed (for L0
        gates, the gated test-time network).

        >>> import pyro_sparse_bnn as psb
        >>> X, y = psb.datasets.load("iris")
        >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
        >>> result = psb.fit(bnn, X, y, epochs=20, progress=False)
        >>> full, small = result.masked_network(1.0), result.prune(1.0)
        >>> bool((full(X) - small(X)).abs().max() < 1e-5)
        True
        """
        return self.posterior.masked_network(self, self.masks(threshold, by))

    @isolated
    def compression(self, threshold: float | None = None, by: str = "snr") -> dict:
        """``n_weights``, ``n_kept``, ``compression``, per-layer sparsity and kept neurons.

        For a ``SparseBNN`` only kept weights on a path from an input to an output count
        (:func:`~pyro_sparse_bnn.prune.live_masks`): the weights :meth:`prune` keeps.
        """
        return self._compression(self.masks(threshold, by))

    def _compression(self, masks: dict[str, Tensor]) -> dict:
        if hasattr(getattr(self.model, "net", None), "state_dict"):
            masks = live_masks(self, masks)
        return compression(masks)

    def _keep(self, masked: Masking, threshold: float | None) -> dict[str, Tensor]:
        """The keep-masks ``masked`` asks for: none, :meth:`masks` or the given ones."""
        if not isinstance(masked, Mapping):
            check_bool(masked, "masked")
            return self.masks(threshold) if masked else {}
        unknown = sorted(set(masked) - set(self.weight_sites))
        if unknown:
            raise ValueError(f"masked has no weight sites {unknown}; they are {self.weight_sites}")
        for name, keep in masked.items():
            shape = self.samples[name].shape[2:]
            if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.shape != shape:
                raise TypeError(
                    f"masked[{name!r}] must be a bool tensor of shape {tuple(shape)}, got {keep!r}"
                )
        return dict(masked)

    @isolated
    def submodel_draws(
        self, masked: Masking = True, threshold: float | None = None
    ) -> dict[str, Tensor]:
        """Flat draws ``(draw, ...)`` of the submodel that keeps the weights ``masked`` names
        (``True``: :meth:`masks` ``(threshold)``; or given keep-masks), what every masked
        prediction uses. For a ``SparseBNN`` that is one ``nn.Linear`` layer each draw is
        projected onto the submodel (:mod:`~pyro_sparse_bnn.projection`: the kept weights
        refitted to that draw's predictions); for any other model the other weights are zeroed.
        """
        keep = self._keep(masked, threshold)
        draws = self.sample_posterior()
        if keep and linear_layer(self.model) is not None:
            key = tuple((k, bytes(m.cpu().numpy())) for k, m in sorted(keep.items()))
            if key not in self._projections:
                if len(self._projections) >= _PROJECTIONS_KEPT:
                    self._projections.pop(next(iter(self._projections)))
                with data_dtype(self.x.dtype):
                    self._projections[key] = project(self.model, draws, self.x, keep)
            return self._projections[key]
        return {k: v * keep[k] if k in keep else v for k, v in draws.items()}

    def _summaries(
        self,
        x: Tensor,
        y: Tensor | None,
        *,
        masked: Masking,
        threshold: float | None,
        sample: bool = False,
    ) -> dict[str, Tensor]:
        """Per draw and row: class ``probs`` or ``mean``/``variance`` of the observation model,
        ``log_lik`` of ``y`` and, with ``sample``, a posterior predictive ``sample``."""
        draws = self.submodel_draws(masked, threshold)
        with data_dtype(self.x.dtype):
            return self._predictive.summaries(x, y, draws, sample=sample)

    @isolated
    def predict(
        self, x: Tensor, *, masked: Masking = False, threshold: float | None = None
    ) -> dict[str, Tensor]:
        """Monte Carlo posterior predictive at ``x``.

        Classification returns ``probs`` (mean class probabilities) and ``draw_probs`` (per draw);
        regression returns ``mean`` and ``std`` (total predictive standard deviation). With
        ``masked=True`` the weights outside :meth:`masks` ``(threshold)`` are set to zero (by
        default the predictive-budget masks); with ``masked`` a mapping of keep-masks (e.g.
        ``result.masks(by="ard")``) those masks apply and ``threshold`` is not used.
        ``evaluate`` and ``pointwise_log_likelihood`` alike.
        """
        x, _ = self._check_data(x)
        out = self._summaries(x, None, masked=masked, threshold=threshold)
        if "probs" in out:
            return {"probs": out["probs"].mean(0), "draw_probs": out["probs"]}
        std = (out["variance"].mean(0) + out["mean"].var(0, unbiased=False)).sqrt()
        return {"mean": out["mean"].mean(0), "std": std}

    @isolated
    def pointwise_log_likelihood(
        self, x: Tensor, y: Tensor, *, masked: Masking = False, threshold: float | None = None
    ) -> Tensor:
        """``log p(y_i | x_i, draw)`` for every draw and row: shape ``(chain, draw, n)``."""
        x, y = self._check_data(x, y)
        out = self._summaries(x, y, masked=masked, threshold=threshold)
        return out["log_lik"].reshape(self.num_chains, self.num_draws, -1)

    @isolated
    def evaluate(
        self, x: Tensor, y: Tensor, *, masked: Masking = False, threshold: float | None = None
    ) -> dict[str, float]:
        """Test metrics: accuracy, NLL, Brier, ECE (classification) or RMSE, NLL (regression).

        NLL is the exact Monte Carlo predictive ``-mean_i log mean_s p(y_i | draw_s)``.
        """
        x, y = self._check_data(x, y)
        out = self._summaries(x, y, masked=masked, threshold=threshold)
        ll = out["log_lik"]
        nll = float(-(torch.logsumexp(ll, 0) - math.log(ll.shape[0])).mean())
        if "probs" in out:
            p, labels = out["probs"].mean(0), y.long()
            return {
                "accuracy": metrics.accuracy(p, labels),
                "nll": nll,
                "brier": metrics.brier_score(p, labels),
                "ece": metrics.expected_calibration_error(p, labels),
            }
        return {"rmse": metrics.rmse(out["mean"].mean(0), y), "nll": nll}

    @isolated
    def loo_metrics(self, *, masked: Masking = False, threshold: float | None = None) -> dict:
        """Leave-one-out NLL (``-elpd_loo`` per row) and, for a classifier, accuracy on the
        training data, by Pareto-smoothed importance sampling over the stored draws (Vehtari,
        Gelman & Gabry 2017); ``masked`` as in :meth:`evaluate`. With fewer than 20 draws (a
        point estimate) the plain training metrics instead."""
        losses = self._losses(self.x, self.y, self._keep(masked, threshold), loo=True)
        out = {"nll": float(losses["nll"].mean())}
        if "error" in losses:
            out["accuracy"] = 1.0 - float(losses["error"].mean())
        return out

    def _loo_reliable(self) -> bool:
        """Whether PSIS-LOO of the full posterior is trustworthy: 20+ draws, every Pareto
        ``k <= 0.7`` (Vehtari et al. 2024)."""
        ll = self._summaries(self.x, self.y, masked=False, threshold=None)["log_lik"]
        if ll.shape[0] < 20:
            return False
        _, k = psb_arviz.psis_log_weights(ll.detach().cpu().numpy())
        return bool((k <= 0.7).all())

    def _training_losses(self, keep: dict[str, Tensor], *, in_sample: bool) -> dict[str, Tensor]:
        """Per-row losses on the training data by PSIS-LOO, and in-sample as ``train_*``."""
        loo = self._losses(self.x, self.y, keep, loo=True)
        if not in_sample:
            return loo
        return loo | {f"train_{k}": v for k, v in self._losses(self.x, self.y, keep).items()}

    def _losses(
        self, x: Tensor, y: Tensor, keep: dict[str, Tensor], *, loo: bool = False
    ) -> dict[str, Tensor]:
        """Per-row ``nll`` (and ``error`` of a classifier) of the posterior predictive with the
        weights outside ``keep`` zeroed; with ``loo``, leave-one-out by PSIS (20+ draws)."""
        out = self._summaries(x, y, masked=keep, threshold=None)
        ll = out["log_lik"]
        if loo and ll.shape[0] >= 20:
            lw, _ = psb_arviz.psis_log_weights(ll.detach().cpu().numpy())
            weights = torch.as_tensor(lw, dtype=ll.dtype, device=ll.device)
        else:
            weights = torch.full_like(ll, -math.log(ll.shape[0]))
        losses = {"nll": -torch.logsumexp(weights + ll, 0)}
        if "probs" in out:
            probs = (weights.exp().unsqueeze(-1) * out["probs"]).sum(0)
            losses["error"] = (probs.argmax(-1) != y.long()).to(ll.dtype)
        return losses

    @isolated
    def to_arviz(
        self,
        x: Tensor | None = None,
        y: Tensor | None = None,
        *,
        seed: int = 0,
        masks: Mapping[str, Tensor] | None = None,
    ) -> Any:
        """``InferenceData`` with posterior, posterior_predictive, log_likelihood, observed_data,
        sample_stats (if any) and a ``relevance`` group (per-weight SNR and keep-masks: ``masks``,
        by default :meth:`masks`).

        Defaults to the training data; ``seed`` fixes the posterior predictive draws.
        """
        if (x is None) != (y is None):
            raise ValueError("to_arviz needs both x and y, or neither (the training data)")
        x, y = (self.x, self.y) if x is None else self._check_data(x, y)
        check_seed(seed)
        pyro.set_rng_seed(seed)
        out = self._summaries(x, y, masked=False, threshold=None, sample=True)
        shape = (self.num_chains, self.num_draws)
        numpy = {k: v.detach().cpu().numpy() for k, v in self.samples.items()}
        scores = self.relevance()
        masks = self._keep(masks, None) if masks is not None else self.masks()
        scores = {f"{k}_relevance": v.cpu().numpy() for k, v in scores.items()}
        scores |= {f"{k}_kept": m.cpu().numpy() for k, m in masks.items()}
        dims, coords = psb_arviz.weight_dims(self.samples, self.weight_sites)
        dims |= {"y": ["obs"]}
        dims |= {f"{k}_relevance": dims[k] for k in self.weight_sites}
        dims |= {f"{k}_kept": dims[k] for k in self.weight_sites}
        return psb_arviz.to_inference_data(
            posterior=numpy,
            posterior_predictive={"y": out["sample"].reshape(*shape, -1).cpu().numpy()},
            log_likelihood={"y": out["log_lik"].reshape(*shape, -1).cpu().numpy()},
            observed_data={"y": y.cpu().numpy()},
            sample_stats={k: v.cpu().numpy() for k, v in self.sample_stats.items()},
            extra_groups={"relevance": scores},
            coords=coords,
            dims=dims,
        )

    @isolated
    def save(self, path: str | os.PathLike) -> Path:
        """Write the result (model, guide, draws, data, info) to ``path`` atomically.

        A hand-written model must be importable by name (a module-level function) to be saved.
        An optimiser in ``info`` is saved as its ``state_dict()``.
        """
        return write_fields({k: getattr(self, k) for k in SAVED_FIELDS}, path)

    @classmethod
    @isolated
    def load(cls, path: str | os.PathLike, *, trusted: Sequence[Any] = ()) -> FitResult:
        """Read a result written by :meth:`save`; a clear ``ValueError`` for a bad file.

        Loading runs no code from the file (``torch.load(weights_only=True)``): it rebuilds
        tensors, plain values and the classes of torch, Pyro and this toolkit only. A result
        whose model is your own function or module class loads when you pass that object in
        ``trusted`` (the error names it), which says you trust the file.
        """
        fields = read_fields(path, trusted=trusted)
        return cls(fields.pop("model"), fields.pop("samples"), **fields)
