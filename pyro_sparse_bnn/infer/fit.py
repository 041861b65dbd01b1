"""``fit``: one entry point that dispatches to each inference method."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..dtypes import data_dtype
from ..isolation import isolated
from ..nn import SparseBNN
from ..norms import has_running_statistics, recompute_statistics
from ..prune import posterior_network
from ..validation import as_tensor, check_keywords
from .ivon import fit_ivon
from .mcmc import KERNELS, fit_mcmc
from .penalized import fit_l0, fit_l1
from .result import FitResult
from .sgmcmc import SGMCMC_METHODS, fit_sgmcmc
from .svi import fit_svi
from .vadam import fit_vadam

__all__ = ["METHODS", "Method", "fit"]


class Method(NamedTuple):
    """A ``fit`` method: its name, the public function that runs it and the options it fixes.

    >>> METHODS["sgld_sa"].fixed  # doctest: +ELLIPSIS
    {'sampler': 'sgld', 'prior': SSGLPrior(update='sa', ...)}
    >>> "num_samples" in METHODS["nuts"].options(), "kernel" in METHODS["nuts"].options()
    (True, False)
    """

    name: str
    function: Callable[..., FitResult]
    fixed: Mapping[str, Any] = {}

    def options(self) -> list[str]:
        """The keyword options ``fit`` passes on: ``function``'s, less the fixed ones."""
        parameters = inspect.signature(self.function).parameters.values()
        return [
            p.name
            for p in parameters
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in self.fixed
        ]

    def check(self, options: Mapping[str, Any]) -> None:
        """Reject options the method fixes (ValueError) or does not know (TypeError)."""
        clash = sorted(set(options) & set(self.fixed))
        if clash:
            raise ValueError(
                f"method {self.name!r} fixes {clash} ({dict(self.fixed)}); call "
                f"{self.function.__name__} to choose them"
            )
        check_keywords(f"fit(method={self.name!r})", options, self.options())

    def __call__(self, model: Callable, X: Tensor, y: Tensor, **options: Any) -> FitResult:
        self.check(options)
        return self.function(model, X, y, **self.fixed, **options)


METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        Method("svi", fit_svi),
        Method("vadam", fit_vadam),
        Method("ivon", fit_ivon),
        Method("l0", fit_l0),
        Method("l1", fit_l1),
        *[Method(name, fit_sgmcmc, fixed) for name, fixed in SGMCMC_METHODS.items()],
        *[Method(kernel, fit_mcmc, {"kernel": kernel}) for kernel in KERNELS],
    ]
}


@isolated
def fit(model: Callable, X: Tensor, y: Tensor, *, method: str = "svi", **options: Any) -> FitResult:
    """Fit a :class:`~pyro_sparse_bnn.SparseBNN` or any Pyro model ``model(x, y=None)``.

    ``method`` picks the inference method; ``options`` are the keyword options of the function
    that runs it (``help`` of that function lists them; ``METHODS[method].options()`` names them):

    - ``"svi"``: :func:`~pyro_sparse_bnn.infer.fit_svi`, stochastic variational inference
      (mean-field, SparseVD, local reparameterisation, MAP guides).
    - ``"vadam"``: :func:`~pyro_sparse_bnn.infer.fit_vadam`, VADAM / VOGN natural-gradient
      variational steps, VADAM-ARD with ``ard=True``.
    - ``"ivon"``: :func:`~pyro_sparse_bnn.infer.fit_ivon`, IVON natural-gradient variational
      learning (wrapping ``ivon-opt``), IVON-ARD with ``ard=True``.
    - ``"l1"``, ``"l0"``: :func:`~pyro_sparse_bnn.infer.fit_l1`,
      :func:`~pyro_sparse_bnn.infer.fit_l0`, penalised point estimates (the baselines).
    - ``"nuts"``, ``"hmc"``: :func:`~pyro_sparse_bnn.infer.fit_mcmc` with that ``kernel``.
    - ``"sgld"``, ``"sghmc"``: :func:`~pyro_sparse_bnn.infer.fit_sgmcmc` under the model's prior;
      ``"sgld_sa"``, ``"sghmc_sa"``, ``"sgld_em"``, ``"sghmc_em"``: the same samplers under the
      spike-and-slab group lasso prior adapted by stochastic approximation or EM.

    A keyword the method does not take raises a TypeError naming the closest valid ones. The
    model runs in ``X``'s floating dtype (:mod:`~pyro_sparse_bnn.dtypes`). A ``SparseBNN`` with
    BatchNorm layers trains in train mode and comes back in eval mode, its running statistics
    recomputed at the posterior-mean weights (:mod:`~pyro_sparse_bnn.norms`).

    >>> import pyro_sparse_bnn as psb
    >>> X, y = psb.datasets.load("iris")
    >>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
    >>> result = psb.fit(bnn, X, y, epochs=5, progress=False)
    >>> result.method
    'svi'
    >>> psb.fit(bnn, X, y, method="nuts", num_sample=10)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: fit(method='nuts') got an unknown option 'num_sample'; did you mean 'num_samples' ...
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    batch_norm = isinstance(model, SparseBNN) and has_running_statistics(model.net)
    if batch_norm and not model.training:  # a fitted model, say: train as a torch loop would
        model = copy.deepcopy(model).train()
    with data_dtype(as_tensor(X, "X").dtype):
        result = METHODS[method](model, X, y, **options)
    if isinstance(result.model, SparseBNN) and has_running_statistics(result.model.net):
        net, params, _ = posterior_network(result)
        run = lambda batch: torch.func.functional_call(net, params, (batch,))  # noqa: E731
        recompute_statistics(net, run, result.x)  # see pyro_sparse_bnn.norms
        result.model.eval()
    return result
