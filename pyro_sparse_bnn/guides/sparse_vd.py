"""The SparseVD posterior family: a Normal per weight parameterised by ``(theta, log_sigma2)``.

:class:`SparseVDGuide` is the variational family of sparse variational dropout (Molchanov et al.
2017). Each real-valued latent site gets ``Normal(theta, exp(log_sigma2 / 2))`` sampled *at the
site itself*, so :class:`~pyro.infer.TraceMeanField_ELBO` finds the registered analytic KL against
:class:`~pyro_sparse_bnn.priors.LogUniform` (the SparseVD approximation) or
:class:`~pyro_sparse_bnn.priors.ProfiledARD` (the ARD closed form). Positive or bounded sites
(hierarchical scales) get the same Normal pushed through the support's bijection, with a Monte
Carlo KL. Weights start at the network's own initialisation, ``log_sigma2`` at -10.

>>> import torch
>>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
>>> bnn = SparseBNN(mlp([4, 3]), priors.LogUniform(), likelihoods.Categorical())
>>> guide = sparse_vd(bnn)
>>> draws = guide(torch.randn(2, 4), torch.tensor([0, 2]))
>>> bool(torch.allclose(guide.loc("0.weight"), bnn.initial_weights()["0.weight"]))
True
>>> guide.log_alpha("0.weight").shape
torch.Size([3, 4])
"""

from __future__ import annotations

from contextlib import ExitStack
from operator import attrgetter
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from pyro.nn import PyroModule, PyroParam
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to, constraints

from .. import distributions
from ..isolation import LocalParams
from ..sites import unwrap
from ..validation import check_number

__all__ = ["SparseVDGuide", "sparse_vd", "weight_moments"]

DEFAULT_LOG_SIGMA2 = -10.0
"""Initial ``log sigma^2`` of every site (Molchanov et al. 2017)."""

_IMPROPER = (distributions.LogUniform, distributions.ARDNormal)


def _sparse_init(model: Any):
    """Initial value per site: ``model.initial_weights()`` (the network's own initialisation) where
    it has one, ones for improper priors, else a prior median."""
    initial = getattr(model, "initial_weights", dict)()

    def init(site: dict) -> Tensor:
        name = site["name"]
        if name in initial:
            return initial[name].detach().clone()
        if isinstance(unwrap(site["fn"]), _IMPROPER):
            return torch.ones(site["fn"].shape())
        return init_to_median(site, num_samples=15)

    return init


class SparseVDGuide(LocalParams, AutoGuide):
    """Mean-field guide with ``Normal(loc, exp(log_sigma2 / 2))`` per latent site.

    Args:
        model: a Pyro model, typically a :class:`~pyro_sparse_bnn.SparseBNN`.
        init_log_sigma2: initial ``log sigma^2`` (the same for every site).
        init_loc_fn: per-site initial ``loc`` (default: the network's weights, ones for improper
            priors, a prior median otherwise).

    Real sites are sampled from the Normal directly (analytic KL where one is registered);
    constrained sites from ``TransformedDistribution(Normal, biject_to(support))``. Parameters
    are ``guide.locs.<site>`` and ``guide.log_sigma2s.<site>``; :meth:`log_alpha` gives the
    clipped SparseVD dropout rate (the KL clips it to [-8, 8] as well).
    """

    def __init__(
        self,
        model: Any,
        *,
        init_log_sigma2: float = DEFAULT_LOG_SIGMA2,
        init_loc_fn: Any = None,
    ) -> None:
        init_log_sigma2 = check_number(init_log_sigma2, "init_log_sigma2")
        if init_loc_fn is not None and not callable(init_loc_fn):
            raise TypeError(f"init_loc_fn must be callable, got {type(init_loc_fn).__name__}")
        self._init_log_sigma2 = float(init_log_sigma2)
        init = _sparse_init(model) if init_loc_fn is None else init_loc_fn
        super().__init__(InitMessenger(init)(model))

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.locs = PyroModule()
        self.log_sigma2s = PyroModule()
        self._event_dims: dict[str, int] = {}
        self._supports: dict[str, constraints.Constraint] = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if site_is_subsample(site) or any(
                f.full_size not in (None, f.size) for f in site["cond_indep_stack"]
            ):
                raise NotImplementedError("SparseVDGuide does not support subsampled plates")
            support = unwrap(site["fn"]).support
            transform = biject_to(support)
            if support.event_dim != 0 or transform.domain.event_dim != 0:
                raise ValueError(
                    f"site {name!r} has support {support}; SparseVDGuide handles only "
                    "elementwise supports (real, positive, intervals)"
                )
            loc = transform.inv(site["value"].detach()).detach().clone()
            self._supports[name] = support
            self._event_dims[name] = site["fn"].event_dim
            _deep_setattr(self.locs, name, PyroParam(loc, constraints.real))
            log_sigma2 = torch.full_like(loc, self._init_log_sigma2)
            _deep_setattr(self.log_sigma2s, name, PyroParam(log_sigma2, constraints.real))

    def site_names(self) -> list[str]:
        """Names of the latent sites this guide covers."""
        return list(self._supports)

    def loc(self, name: str) -> Tensor:
        """Posterior mean ``theta`` of site ``name`` (in the unconstrained space)."""
        return attrgetter(name)(self.locs)

    def scale(self, name: str) -> Tensor:
        """Posterior standard deviation ``sigma = exp(log_sigma2 / 2)`` (unconstrained space)."""
        return torch.exp(0.5 * attrgetter(name)(self.log_sigma2s))

    def log_alpha(self, name: str) -> Tensor:
        """Clipped ``log sigma^2 - log(theta^2 + 1e-8)`` of site ``name`` (no gradient)."""
        with torch.no_grad():
            return distributions.log_alpha(self.loc(name), self.scale(name))

    def posterior(self, name: str) -> dist.TorchDistribution:
        """The guide's distribution for site ``name`` (without plates)."""
        normal = dist.Normal(self.loc(name), self.scale(name))
        support = self._supports[name]
        if not isinstance(support, type(constraints.real)):
            normal = dist.TransformedDistribution(normal, biject_to(support))
        return normal.to_event(self._event_dims[name])

    def exact_moments(self, model: Any, sites: list[str]) -> dict[str, tuple[Tensor, Tensor]]:
        """Exact posterior ``(mean, sd)`` of those ``sites`` this guide determines: the layer
        weights of a ``SparseBNN`` (:func:`weight_moments`) and each site it holds a Normal for."""
        exact = {}
        if hasattr(model, "layer_names"):
            exact = {k: (m, v.sqrt()) for k, (m, v) in weight_moments(model, self).items()}
        for k in set(self.site_names()) & set(sites) - set(exact):
            exact[k] = (self.loc(k).detach().clone(), self.scale(k).detach())
        return {k: exact[k] for k in sites if k in exact}

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(name, self.posterior(name))
        return result

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior median of every latent site (the mean ``theta`` for real sites)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return {name: biject_to(s)(self.loc(name)).clone() for name, s in self._supports.items()}


def _deep_setattr(module: PyroModule, name: str, value: PyroParam) -> None:
    """``module.a.b.c = value`` for ``name = "a.b.c"``, creating PyroModules on the way."""
    *path, leaf = name.split(".")
    for part in path:
        if not hasattr(module, part):
            setattr(module, part, PyroModule())
        module = getattr(module, part)
    setattr(module, leaf, value)


def sparse_vd(model: Any, *, init_log_sigma2: float = DEFAULT_LOG_SIGMA2) -> SparseVDGuide:
    """The SparseVD guide for ``model`` (the ``"sparse_vd"`` entry of ``guides.GUIDES``).

    Use it with ``priors.LogUniform()`` (SparseVD) or ``priors.ProfiledARD()`` (ARD) and an
    ELBO that uses analytic KLs: ``elbo="mean_field"`` in ``fit`` or the local reparameterisation
    ELBO of :mod:`pyro_sparse_bnn.lrt`.

    >>> import torch
    >>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
    >>> bnn = SparseBNN(mlp([4, 3]), priors.LogUniform(), likelihoods.Categorical())
    >>> sparse_vd(bnn, init_log_sigma2=-8.0)(torch.randn(1, 4), torch.tensor([1]))["0.weight"].shape
    torch.Size([3, 4])
    """
    return SparseVDGuide(model, init_log_sigma2=init_log_sigma2)


def _scale_moments(guide: SparseVDGuide, scaled: dict, moments: dict, num_samples: int) -> None:
    """Accumulate ``E[s]`` and ``E[s^2]`` of each non-centred site's scale over guide draws."""
    for _ in range(num_samples):
        nodes = poutine.trace(guide).get_trace(None, None).nodes
        values = {k: v["value"] for k, v in nodes.items() if v["type"] == "sample"}
        with poutine.block(), poutine.condition(data=values):
            for site, prior in scaled.items():
                scale = prior.weight_scale(site, tuple(guide.loc(f"{site}_decentered").shape))
                moments[site][0] = moments[site][0] + scale / num_samples
                moments[site][1] = moments[site][1] + scale.square() / num_samples


@torch.no_grad()
def weight_moments(
    model: Any, guide: SparseVDGuide, num_samples: int = 500
) -> dict[str, tuple[Tensor, Tensor]]:
    """Posterior mean and variance of every weight site of a ``SparseBNN`` under ``guide``.

    A centred weight is the guide's Normal: ``(theta, sigma^2)`` exactly. A non-centred weight
    ``w = z * s`` has ``z ~ Normal(theta, sigma^2)`` independent of its prior scale ``s``
    (mean-field), so ``E[w] = theta E[s]`` and ``Var[w] = (theta^2 + sigma^2) E[s^2] - theta^2
    E[s]^2``, with ``E[s]`` and ``E[s^2]`` from ``num_samples`` guide draws of the scale sites.
    ``log(Var / E^2)`` is then the weight's effective ``log_alpha``.

    >>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
    >>> bnn = SparseBNN(mlp([4, 3]), priors.LogUniform(), likelihoods.Categorical())
    >>> guide = sparse_vd(bnn)
    >>> _ = guide(torch.randn(1, 4), torch.tensor([0]))
    >>> mean, var = weight_moments(bnn, guide)["0.weight"]
    >>> bool(torch.equal(mean, guide.loc("0.weight"))), round(var.max().log().item(), 3)
    (True, -10.0)
    """
    if not isinstance(guide, SparseVDGuide) or guide.prototype_trace is None:
        raise TypeError("guide must be a SparseVDGuide that has been run once (it sets up lazily)")
    priors = dict(zip(model.layer_names, model.priors.values(), strict=True))
    names = guide.site_names()
    out, scaled = {}, {}
    for layer, site in zip(model.layer_names, model.weight_sites, strict=True):
        if site in names:
            out[site] = (guide.loc(site).clone(), guide.scale(site).square())
        elif f"{site}_decentered" in names:
            scaled[site] = priors[layer]
        else:
            raise ValueError(
                f"weight site {site!r} has neither a centred nor a decentred guide site"
            )
    moments = {site: [0.0, 0.0] for site in scaled}
    # the scale moments are Monte Carlo estimates: a fixed, private random stream makes them (and
    # the masks built on them) repeat exactly without touching the caller's random state
    cuda = [p.device for p in guide.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)
        _scale_moments(guide, scaled, moments, num_samples)
    for site, (mean_s, mean_s2) in moments.items():
        theta = guide.loc(f"{site}_decentered")
        var = guide.scale(f"{site}_decentered").square()
        mean = theta * mean_s
        out[site] = (mean, (theta.square() + var) * mean_s2 - mean.square())
    return {site: out[site] for site in model.weight_sites}
