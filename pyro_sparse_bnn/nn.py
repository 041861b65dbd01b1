"""Sparse Bayesian networks from plain ``torch.nn`` modules.

:class:`SparseBNN` keeps a copy of the user's network and, on every call, draws each layer's weight
from its shrinkage prior (one ``pyro.sample`` hierarchy per layer, named after the module path, e.g.
``"0.weight"``) and runs the network with those weights through :func:`torch.func.functional_call`.
Any architecture built of ``Linear``/``Conv1d``/``Conv2d`` layers works unchanged; ``nn.LSTM`` and
``nn.GRU`` layers become their fused one-matrix form (:mod:`pyro_sparse_bnn.recurrent`), whose
weight site (e.g. ``"1.weight"``) has one row per gate of each neuron and one column per input and
per hidden neuron.

>>> import torch, pyro
>>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
>>> bnn = SparseBNN(mlp([4, 8, 3]), priors.Horseshoe(), likelihoods.Categorical())
>>> bnn.weight_sites
['0.weight', '2.weight']
>>> tr = pyro.poutine.trace(bnn).get_trace(torch.randn(5, 4))
>>> tr.nodes["y"]["value"].shape
torch.Size([5])
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from .isolation import LocalParams
from .likelihoods import Likelihood
from .priors import Prior
from .recurrent import FusedGRU, FusedLSTM, fuse_recurrent

__all__ = ["BAYESIAN_LAYERS", "BIAS_PARAMS", "RECURRENT_LAYERS", "SparseBNN", "mlp"]

RECURRENT_LAYERS = (FusedLSTM, FusedGRU)
BIAS_PARAMS = ("bias", "bias_hn")
"""Bias parameter names a ``bias_prior`` covers (``bias_hn``: a GRU's candidate bias)."""
BAYESIAN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, *RECURRENT_LAYERS)


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A plain multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between.

    >>> mlp([4, 8, 3])
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=3, bias=True)
    )
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(isinstance(n, int) and n > 0 for n in sizes):
        raise ValueError(f"sizes must list at least two positive ints, got {sizes!r}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class SparseBNN(LocalParams, PyroModule):
    """A Pyro model ``(x, y=None) -> y`` whose layer weights carry shrinkage priors.

    Args:
        net: a plain network; it is copied, the original is never changed. Its ``nn.LSTM`` and
            ``nn.GRU`` layers (one layer, one direction each) become fused layers.
        prior: one prior for every layer, or a mapping from layer name (module path) to prior.
        likelihood: the observation model applied to the network output.
        bias_prior: a prior for the biases, or ``None`` to learn them as point estimates.
    """

    def __init__(
        self,
        net: nn.Module,
        prior: Prior | Mapping[str, Prior],
        likelihood: Likelihood,
        *,
        bias_prior: Prior | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if not isinstance(likelihood, Likelihood):
            raise TypeError(f"likelihood must be a Likelihood, got {type(likelihood).__name__}")
        if bias_prior is not None and not isinstance(bias_prior, Prior):
            raise TypeError(f"bias_prior must be a Prior or None, got {type(bias_prior).__name__}")
        fused = fuse_recurrent(net)
        layers = [(n, m) for n, m in fused.named_modules() if isinstance(m, BAYESIAN_LAYERS)]
        if not layers:
            raise ValueError("net must contain at least one Linear, Conv, LSTM or GRU layer")
        names = [n for n, _ in layers]
        priors = _priors_per_layer(prior, names)
        self.net = fused
        self.likelihood = likelihood
        self.priors = nn.ModuleDict({_key(n): p for n, p in priors.items()})
        self.bias_prior = bias_prior
        self.layer_names = names
        for name in names:
            for param in self._sampled_params(name):
                _freeze_as_buffer(self.net.get_submodule(name), param)

    @property
    def weight_sites(self) -> list[str]:
        """Names of the weight sample sites, one per Bayesian layer."""
        return [_site(n, "weight") for n in self.layer_names]

    @property
    def in_features(self) -> int:
        """Feature (channel, or per-step input) count the first Bayesian layer expects."""
        first = self.net.get_submodule(self.layer_names[0])
        if isinstance(first, RECURRENT_LAYERS):
            return first.input_size
        return first.in_features if isinstance(first, nn.Linear) else first.in_channels

    @property
    def out_features(self) -> int:
        """Output width of the last Bayesian layer."""
        last = self.net.get_submodule(self.layer_names[-1])
        if isinstance(last, RECURRENT_LAYERS):
            return last.hidden_size
        return last.out_features if isinstance(last, nn.Linear) else last.out_channels

    def initial_weights(self) -> dict[str, Tensor]:
        """Site values that reproduce the copied network's initial weights (a guide's start)."""
        values = {}
        for layer in self.layer_names:
            for p in self._sampled_params(layer):
                prior = self.priors[_key(layer)] if p == "weight" else self.bias_prior
                weight = getattr(self.net.get_submodule(layer), p)
                values |= prior.init_values(_site(layer, p), weight)
        return values

    def _sampled_params(self, layer: str) -> list[str]:
        if self.bias_prior is None:
            return ["weight"]
        module = self.net.get_submodule(layer)
        return ["weight", *(b for b in BIAS_PARAMS if getattr(module, b, None) is not None)]

    def sample_params(self) -> dict[str, Tensor]:
        """Draw every Bayesian parameter from its prior (emitting the Pyro sites)."""
        params = {}
        for layer in self.layer_names:
            module = self.net.get_submodule(layer)
            for p in self._sampled_params(layer):
                prior = self.priors[_key(layer)] if p == "weight" else self.bias_prior
                params[_site(layer, p)] = prior.sample(_site(layer, p), getattr(module, p).shape)
        return params

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.likelihood(self.run_net(self.sample_params(), x), y)

    def run_net(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """The network output at ``x`` with the given parameter values.

        Parameters may carry leading batch dims from enclosing plates (as under a vectorised
        ``pyro.plate`` over posterior draws); their last batch dim is the data plate's slot and
        must be 1. The network is then vmapped over the draws and the output gets the batch dims.
        """
        name, value = next(iter(params.items()))
        batch = value.shape[: value.dim() - self._buffer(name).dim()]
        if not batch:
            return torch.func.functional_call(self.net, params, (x,))
        if batch[-1] != 1:
            raise ValueError(f"parameter batch shape {tuple(batch)} must end in the data slot 1")
        flat = {
            k: v.expand(*batch, *self._buffer(k).shape).reshape(-1, *self._buffer(k).shape)
            for k, v in params.items()
        }
        out = torch.func.vmap(lambda p: torch.func.functional_call(self.net, p, (x,)))(flat)
        return out.reshape(*batch[:-1], *out.shape[1:])

    def _buffer(self, site: str) -> Tensor:
        layer, _, param = site.rpartition(".")
        return getattr(self.net.get_submodule(layer), param)

    def check_data(self, x: Tensor, y: Tensor | None = None) -> None:
        """Raise ``ValueError``/``TypeError`` if ``x``/``y`` do not fit this network (a network
        with a ``check_input(x, in_features)`` method, such as a bag network, checks ``x``)."""
        first = self.net.get_submodule(self.layer_names[0])
        linear = isinstance(first, nn.Linear)
        check_input = getattr(self.net, "check_input", None)
        if callable(check_input):
            check_input(x, self.in_features)
        elif isinstance(first, RECURRENT_LAYERS):
            if x.dim() != 3 or x.shape[2] != self.in_features:
                raise ValueError(
                    f"X must have shape (n, steps, {self.in_features}) for this recurrent network "
                    f"(one sequence per row), got {tuple(x.shape)}"
                )
        elif x.dim() < 2 or x.shape[1] != self.in_features or (linear and x.dim() != 2):
            expected = f"(n, {self.in_features})" if linear else f"(n, {self.in_features}, ...)"
            raise ValueError(f"X must have shape {expected} for this network, got {tuple(x.shape)}")
        if y is not None:
            self.likelihood.check_targets(y, self.out_features)


def _key(layer: str) -> str:
    """ModuleDict key of a layer path ("" is the root module itself)."""
    return layer.replace(".", "__") or "__root__"


def _site(layer: str, param: str) -> str:
    """Site name of a layer parameter: its ``state_dict`` key, e.g. ``"0.weight"``."""
    return f"{layer}.{param}" if layer else param


def _priors_per_layer(prior: Prior | Mapping[str, Prior], names: list[str]) -> dict[str, Prior]:
    if isinstance(prior, Prior):
        return dict.fromkeys(names, prior)
    if not isinstance(prior, Mapping):
        raise TypeError(f"prior must be a Prior or a mapping of layer name to Prior, got {prior!r}")
    unknown, missing = set(prior) - set(names), set(names) - set(prior)
    if unknown or missing:
        raise ValueError(
            f"prior mapping must name exactly the layers {names}; "
            f"unknown {sorted(unknown)}, missing {sorted(missing)}"
        )
    for name, p in prior.items():
        if not isinstance(p, Prior):
            raise TypeError(f"prior[{name!r}] must be a Prior, got {type(p).__name__}")
    return dict(prior)


def _freeze_as_buffer(module: nn.Module, name: str) -> None:
    """Turn parameter ``name`` into a buffer: the prior supplies its value at run time."""
    value = getattr(module, name).detach().clone()
    delattr(module, name)
    module.register_buffer(name, value)
