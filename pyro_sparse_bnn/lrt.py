"""Local reparameterisation (Kingma, Salimans & Welling 2015) as a Pyro ELBO estimator.

With a Gaussian posterior on a weight matrix ``W``, the pre-activation ``b = x W^T`` of one example
is Gaussian with mean ``x theta^T`` and variance ``x^2 (sigma^2)^T``. Sampling ``b`` directly,
with fresh noise for every example and unit, gives an unbiased estimate of the expected
log-likelihood with far less variance than one weight draw shared by the minibatch, and it never
materialises a weight sample.

:class:`LocalReparameterizationELBO` estimates ``ELBO = E_q[log p(y | x, W)] - KL(q || p)`` this
way for any Pyro model whose weights enter ``F.linear``, ``F.conv1d/2d/3d`` or ``matmul``:

* the guide runs under a recorder that notes every Normal site (a direct ``Normal`` guide site
  such as :class:`~pyro_sparse_bnn.guides.SparseVDGuide`'s, or the auxiliary Normal of an
  ``AutoNormal`` site with real support) and the tensor it returned;
* the model runs under a scoped :class:`torch.overrides.TorchFunctionMode` (no global patching):
  a linear or convolution op whose *weight argument is* a recorded tensor returns
  ``op(x, theta) + sqrt(op(x^2, sigma^2) + 1e-8) * eps`` instead; multiplying a recorded tensor by
  another tensor (non-centred priors: ``w = z * scale``) and pure reshapes propagate the mean and
  variance, so the same holds for non-centred weights given their scales;
* the KL of a site consumed this way is computed analytically (the registered SparseVD, ARD or
  Normal KL, scaled like the site); every other site keeps the usual Monte Carlo term
  ``log p - log q``, or its analytic KL where one is known (as
  :class:`~pyro_sparse_bnn.elbo.MeanFieldELBO`).

Once a site has been seen to be used *only* through such ops (and has an analytic KL), later
calls skip its weight draw and pass the posterior mean instead; a later call that uses it any
other way is detected and recomputed with a real draw, so the estimate stays unbiased.

Each per-example law of the pre-activations is the one weight sampling gives, so predictions from
weight draws (:class:`~pyro_sparse_bnn.FitResult`) estimate the same predictive distribution;
:func:`lrt_predict` computes it with LRT instead.

>>> import torch
>>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
>>> from pyro_sparse_bnn.guides import sparse_vd
>>> bnn = SparseBNN(mlp([4, 8, 3]), priors.LogUniform(), likelihoods.Categorical())
>>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
>>> guide = sparse_vd(bnn)
>>> loss = LocalReparameterizationELBO().differentiable_loss(bnn, guide, x, y)
>>> loss.backward()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .elbo import AUX_SUFFIX, Q_KEY, MeanFieldELBO, mean_field_elbo
from .sites import unwrap

__all__ = ["LRT_EPS", "LocalReparameterization", "LocalReparameterizationELBO", "lrt_predict"]

LRT_EPS = 1e-8
"""Added to the pre-activation variance before the square root."""

_LINEAR = {F.linear}
_CONV = {F.conv1d, F.conv2d, F.conv3d}
_MATMUL = {"matmul", "__matmul__"}
_MUL = {"mul", "__mul__", "__rmul__", "multiply"}
_RESHAPE = {
    "t",
    "transpose",
    "permute",
    "reshape",
    "view",
    "unsqueeze",
    "squeeze",
    "flatten",
    "expand",
    "contiguous",
}
_TRANSPOSE_PROPERTIES = (torch.Tensor.T.__get__, torch.Tensor.mT.__get__)


def _is_normal(fn: Any) -> bool:
    return isinstance(unwrap(fn), torch.distributions.Normal)


class _Gaussian:
    """A recorded tensor: its posterior mean and variance, and the guide sites it comes from."""

    __slots__ = ("loc", "sites", "tensor", "var")

    def __init__(self, tensor: Tensor, loc: Tensor, var: Tensor, sites: frozenset[str]) -> None:
        self.tensor, self.loc, self.var, self.sites = tensor, loc, var, sites


class LocalReparameterization(Messenger):
    """Record the Normal sites of a guide; :meth:`mode` then applies LRT to the model's layers.

    One instance serves one guide run and the model run replayed against it::

        lrt = LocalReparameterization()
        guide_trace = poutine.trace(lrt(guide)).get_trace(x, y)
        with lrt.mode():
            model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x, y)

    Args:
        use_mean: guide sites whose value is replaced by the posterior mean (no draw). Only pass
            sites that the model uses exclusively through linear/conv/matmul ops (see
            :attr:`only_lrt`).

    After the model run, :attr:`consumed` holds the sites that fed an LRT op and :attr:`other_use`
    the sites whose value was used any other way.
    """

    def __init__(self, use_mean: frozenset[str] | set[str] = frozenset()) -> None:
        super().__init__()
        self.use_mean = frozenset(use_mean)
        self.consumed: set[str] = set()
        self.other_use: set[str] = set()
        self._gaussians: dict[int, _Gaussian] = {}
        self._aux: dict[str, tuple[Tensor, dist.TorchDistribution]] = {}

    # ---- guide side -------------------------------------------------------------------------
    def _pyro_sample(self, msg: dict) -> None:
        name = msg["name"].removesuffix(AUX_SUFFIX)
        if name in self.use_mean and msg["value"] is None and _is_normal(msg["fn"]):
            msg["value"] = unwrap(msg["fn"]).loc.expand(msg["fn"].shape())

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        name, fn, value = msg["name"], msg["fn"], msg["value"]
        if msg["infer"].get("is_auxiliary") and name.endswith(AUX_SUFFIX) and _is_normal(fn):
            self._aux[name.removesuffix(AUX_SUFFIX)] = (value, fn)
            return
        if _is_normal(fn):
            self._record(value, fn, name)
        elif name in self._aux and isinstance(unwrap(fn), dist.Delta):
            aux_value, aux_fn = self._aux[name]
            if unwrap(fn).v is aux_value:  # identity transform: the Delta is the Normal draw
                self._record(value, aux_fn, name)
                msg["infer"][Q_KEY] = aux_fn

    def _record(self, value: Tensor, fn: dist.TorchDistribution, name: str) -> None:
        base = unwrap(fn)
        shape = value.shape
        loc, var = base.loc.expand(shape), base.scale.square().expand(shape)
        self._gaussians[id(value)] = _Gaussian(value, loc, var, frozenset({name}))

    # ---- model side -------------------------------------------------------------------------
    def mode(self) -> _LRTMode:
        """A ``TorchFunctionMode`` applying LRT to linear ops whose weight is a recorded tensor."""
        return _LRTMode(self)

    def lookup(self, value: Any) -> _Gaussian | None:
        """The recorded Gaussian for tensor ``value`` (by identity), or ``None``."""
        found = self._gaussians.get(id(value)) if isinstance(value, Tensor) else None
        return found if found is not None and found.tensor is value else None

    def add(self, value: Tensor, loc: Tensor, var: Tensor, sites: frozenset[str]) -> None:
        """Record ``value`` as Gaussian with the given moments (derived from ``sites``)."""
        self._gaussians[id(value)] = _Gaussian(value, loc, var, sites)

    @property
    def only_lrt(self) -> set[str]:
        """Sites consumed by LRT ops and used nowhere else in the model run."""
        return self.consumed - self.other_use


def _flat_args(args: tuple, kwargs: dict) -> Iterator[Any]:
    for a in (*args, *kwargs.values()):
        if isinstance(a, list | tuple):
            yield from a
        else:
            yield a


class _LRTMode(TorchFunctionMode):
    def __init__(self, lrt: LocalReparameterization) -> None:
        super().__init__()
        self.lrt = lrt

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        lrt = self.lrt
        recorded = [g for a in _flat_args(args, kwargs) if (g := lrt.lookup(a)) is not None]
        if not recorded:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if func in _LINEAR or func in _CONV or name in _MATMUL:
            out = _lrt_layer(func, name, args, kwargs, lrt)
            if out is not None:
                return out
        elif name in _MUL and len(args) == 2 and not kwargs:
            out = func(*args)
            big = [g for g in recorded if g.tensor.shape == out.shape]
            if len(big) == 1:  # a Gaussian weight times a scale (a draw, or any tensor)
                gauss = big[0]
                other = args[1] if args[0] is gauss.tensor else args[0]
                if (g := lrt.lookup(other)) is not None:
                    lrt.other_use |= g.sites
                lrt.add(out, gauss.loc * other, gauss.var * other**2, gauss.sites)
                return out
            for gauss in recorded:
                lrt.other_use |= gauss.sites
            return out
        elif (name in _RESHAPE or func in _TRANSPOSE_PROPERTIES) and args[0] is recorded[0].tensor:
            gauss, rest = recorded[0], args[1:]
            out = func(*args, **kwargs)
            loc, var = func(gauss.loc, *rest, **kwargs), func(gauss.var, *rest, **kwargs)
            lrt.add(out, loc, var, gauss.sites)
            return out
        out = func(*args, **kwargs)
        if isinstance(out, Tensor) or (
            isinstance(out, list | tuple) and any(isinstance(o, Tensor) for o in out)
        ):
            for gauss in recorded:
                lrt.other_use |= gauss.sites
        return out


def _lrt_layer(
    func: Callable, name: str, args: tuple, kwargs: dict, lrt: LocalReparameterization
) -> Tensor | None:
    """``mean + sqrt(var + eps) * noise`` for a linear/conv/matmul op with a recorded weight."""
    args, kwargs = list(args), dict(kwargs)
    keys = ("input", "weight", "bias") if name not in _MATMUL else ("input", "other")
    for key in keys[len(args) :]:
        if key in kwargs:
            args.append(kwargs.pop(key))
    if len(args) < 2:
        return None
    x, weight, *rest = args
    gauss = lrt.lookup(weight)
    if gauss is None or lrt.lookup(x) is not None:
        return None
    if gauss.sites & lrt.consumed:
        raise ValueError(
            f"sites {sorted(gauss.sites & lrt.consumed)} feed more than one layer; local "
            "reparameterisation needs each weight in one layer (use a sampling ELBO)"
        )
    bias = rest[0] if rest and name not in _MATMUL else None
    rest = rest[1:] if name not in _MATMUL else rest
    bias_gauss = lrt.lookup(bias)
    bias_mean = bias_gauss.loc if bias_gauss is not None else bias
    if name in _MATMUL:
        mean, var = torch.matmul(x, gauss.loc), torch.matmul(x.square(), gauss.var)
    else:
        mean = func(x, gauss.loc, bias_mean, *rest, **kwargs)
        var = func(x.square(), gauss.var, None, *rest, **kwargs)
    if bias_gauss is not None:
        shape = (-1,) if func in _LINEAR else (-1, *(1,) * (var.dim() - 2))
        var = var + bias_gauss.var.reshape(shape)
        lrt.consumed |= bias_gauss.sites
    lrt.consumed |= gauss.sites
    return mean + torch.sqrt(var + LRT_EPS) * torch.randn_like(mean)


class LocalReparameterizationELBO(MeanFieldELBO):
    """Negative ELBO with the data term estimated by local reparameterisation (see module doc).

    Use it like any Pyro ELBO: ``differentiable_loss`` with a torch optimiser (the toolkit's
    PyroModules keep their parameters locally), or ``loss_and_grads`` inside ``pyro.infer.SVI``
    for param-store guides. Guide sites must be Normal (or ``AutoNormal``) for LRT to apply;
    other sites are handled as in :class:`~pyro_sparse_bnn.elbo.MeanFieldELBO`.

    Args:
        num_particles: independent estimates averaged per call.
    """

    def __init__(self, num_particles: int = 1) -> None:
        super().__init__(num_particles=num_particles)
        self._use_mean: set[str] = set()

    def _run(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[poutine.Trace, poutine.Trace, LocalReparameterization]:
        lrt = LocalReparameterization(self._use_mean)
        guide_trace = poutine.trace(lrt(guide)).get_trace(*args, **kwargs)
        with lrt.mode():
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        guide_trace = poutine.util.prune_subsample_sites(guide_trace)
        model_trace = poutine.util.prune_subsample_sites(model_trace)
        return model_trace, guide_trace, lrt

    def _traces(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[poutine.Trace, poutine.Trace]:
        """Model and guide traces of one particle, the model run with LRT."""
        model_trace, guide_trace, _ = self._run(model, guide, args, kwargs)
        return model_trace, guide_trace

    def _particle(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Tensor:
        """Negative ELBO of one particle.

        A site passed as its posterior mean that the model turned out to use otherwise (or whose
        KL is not analytic) leaves the mean set and the particle is redrawn.
        """
        model_trace, guide_trace, lrt = self._run(model, guide, args, kwargs)
        elbo, analytic = mean_field_elbo(model_trace, guide_trace)
        eligible = lrt.only_lrt & analytic
        if lrt.use_mean - eligible:
            self._use_mean &= eligible
            return self._particle(model, guide, args, kwargs)
        self._use_mean |= eligible
        return -elbo


@torch.no_grad()
def lrt_predict(
    model: Callable, guide: Callable, x: Tensor, num_samples: int = 100
) -> dict[str, Tensor]:
    """Monte Carlo posterior predictive at ``x`` with the pre-activations sampled by LRT.

    Returns ``probs`` and ``draw_probs`` for a classifier (an observation law with ``probs``),
    else ``mean`` and ``std``, as :meth:`~pyro_sparse_bnn.FitResult.predict` does.

    >>> import pyro_sparse_bnn as psb
    >>> from pyro_sparse_bnn.guides import sparse_vd
    >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.LogUniform(), psb.likelihoods.Categorical())
    >>> guide = sparse_vd(bnn)
    >>> _ = guide(torch.randn(1, 4), torch.tensor([0]))
    >>> lrt_predict(bnn, guide, torch.randn(5, 4), num_samples=10)["probs"].shape
    torch.Size([5, 3])
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    laws = []
    for _ in range(num_samples):
        lrt = LocalReparameterization()
        guide_trace = poutine.trace(lrt(guide)).get_trace(x, None)
        with lrt.mode():
            trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, None)
        sites = [
            site
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and name not in guide_trace.nodes
            and not site_is_subsample(site) and not site["infer"].get("_deterministic")
        ]  # fmt: skip
        if len(sites) != 1:
            raise ValueError(
                f"the model must have one observed site, found {[s['name'] for s in sites]}"
            )
        laws.append(unwrap(sites[0]["fn"]))
    if all(hasattr(law, "probs") for law in laws):
        draws = torch.stack([law.probs for law in laws])
        return {"probs": draws.mean(0), "draw_probs": draws}
    means = torch.stack([law.mean for law in laws])
    variances = torch.stack([law.variance for law in laws])
    return {"mean": means.mean(0), "std": (variances.mean(0) + means.var(0, unbiased=False)).sqrt()}
