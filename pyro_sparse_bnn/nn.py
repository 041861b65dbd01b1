"""Sparse Bayesian networks from plain ``torch.nn`` modules.

:class:`SparseBNN` keeps a copy of the user's network and, on every call, draws each layer's weight
from its shrinkage prior (one ``pyro.sample`` hierarchy per layer, named after the module path, e.g.
``"0.weight"``) and runs the network with those weights through :func:`torch.func.functional_call`.
Any architecture built of ``Linear``, ``Conv1d/2d/3d`` (grouped and depthwise too),
``ConvTranspose1d/2d/3d``, ``Embedding`` and ``MultiheadAttention`` layers works unchanged
(``nn.TransformerEncoderLayer`` is built of them); normalisation layers keep point-estimate
affine parameters (:mod:`pyro_sparse_bnn.norms`). ``nn.LSTM`` and ``nn.GRU`` layers become
their fused one-matrix form (:mod:`pyro_sparse_bnn.recurrent`), whose weight site (e.g.
``"1.weight"``) has one row per gate of each neuron and one column per input and per hidden
neuron.

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

import contextlib
import copy
import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from pyro.nn import PyroModule
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from .isolation import LocalParams
from .likelihoods import Likelihood
from .norms import NORM_LAYERS, batch_statistics
from .priors import Prior
from .recurrent import FusedGRU, FusedLSTM, fuse_recurrent

__all__ = ["BAYESIAN_LAYERS", "BIAS_PARAMS", "RECURRENT_LAYERS", "SparseBNN", "mlp", "weight_name"]

RECURRENT_LAYERS = (FusedLSTM, FusedGRU)
BIAS_PARAMS = ("bias", "bias_hn", "in_proj_bias")
"""Bias parameter names a ``bias_prior`` covers (``bias_hn``: a GRU's candidate bias,
``in_proj_bias``: an attention layer's query, key and value biases)."""
_CONV_LAYERS = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)  # fmt: skip
BAYESIAN_LAYERS = (nn.Linear, *_CONV_LAYERS, nn.Embedding, nn.MultiheadAttention,
                   *RECURRENT_LAYERS)  # fmt: skip
"""Layers whose weight gets the layer's prior (an attention layer: its query, key and value
projection ``in_proj_weight``; its output projection is a ``Linear`` layer of its own)."""
POINT_LAYERS = (*NORM_LAYERS, nn.PReLU)
"""Layers whose weights are point estimates (normalisation scales, activation slopes)."""


def weight_name(layer: nn.Module) -> str:
    """The name of the parameter of a Bayesian ``layer`` that carries its prior.

    >>> weight_name(nn.Linear(2, 3)), weight_name(nn.MultiheadAttention(4, 2))
    ('weight', 'in_proj_weight')
    """
    return "in_proj_weight" if isinstance(layer, nn.MultiheadAttention) else "weight"


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
            ``nn.GRU`` layers (one layer, one direction each) become fused layers. Parameters
            other than the Bayesian layers' weights (normalisation scales, biases without a
            ``bias_prior``, a position embedding) are learned as point estimates; a module with
            a weight no prior covers (``nn.RNN``, ``nn.Bilinear``) is refused here.
        prior: one prior for every layer, or a mapping from layer name (module path) to prior.
        likelihood: the observation model applied to the network output.
        bias_prior: a prior for the biases, or ``None`` to learn them as point estimates.
        norm_prior: a prior for the scales and shifts of the normalisation layers (BatchNorm,
            LayerNorm, GroupNorm), or ``None`` (default) to learn them as point estimates.
            Their sites are the ``state_dict`` keys (``"1.weight"``, ``"1.bias"``); a
            zero-centred shrinkage prior on them is Bayesian network slimming: a channel whose
            scale and shift are both zero is removed by ``prune``.
        ties: lists of layer names whose weights share one set of group variables (their
            prior's groups, e.g. ``groups="in"``, must have the same count in each): the
            layers that read the same channels across a residual addition, so a channel the
            shared variable switches off is read by none of them and goes as a whole
            (:func:`~pyro_sparse_bnn.prune_graph.shared_inputs` finds them). The tied layers
            need one prior with latent group variables; the model holds its own copy of it.
    """

    def __init__(
        self,
        net: nn.Module,
        prior: Prior | Mapping[str, Prior],
        likelihood: Likelihood,
        *,
        bias_prior: Prior | None = None,
        norm_prior: Prior | None = None,
        ties: Sequence[Sequence[str]] = (),
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if not isinstance(likelihood, Likelihood):
            raise TypeError(f"likelihood must be a Likelihood, got {type(likelihood).__name__}")
        for arg, value in (("bias_prior", bias_prior), ("norm_prior", norm_prior)):
            if value is not None and not isinstance(value, Prior):
                raise TypeError(f"{arg} must be a Prior or None, got {type(value).__name__}")
        fused = fuse_recurrent(net)
        _check_modules(fused)
        layers = [(n, m) for n, m in fused.named_modules() if isinstance(m, BAYESIAN_LAYERS)]
        if not layers:
            raise ValueError(
                "net must contain at least one Linear, Conv, ConvTranspose, Embedding, "
                "MultiheadAttention, LSTM or GRU layer"
            )
        names = [n for n, _ in layers]
        priors = _tie(_priors_per_layer(prior, names), ties, dict(layers))
        self.net = fused
        self.likelihood = likelihood
        # in layer order, whatever the order of a mapping: self.priors.values() pairs with
        # self.layer_names
        self.priors = nn.ModuleDict({_key(n): priors[n] for n in names})
        self.bias_prior = bias_prior
        self.layer_names = names
        self.ties = [list(tie) for tie in ties]
        self.norm_prior = norm_prior
        self.norm_names = [] if norm_prior is None else _affine_norms(fused)
        for name in names + self.norm_names:
            for param in self._sampled_params(name):
                _freeze_as_buffer(self.net.get_submodule(name), param)

    @property
    def weight_sites(self) -> list[str]:
        """Names of the weight sample sites, one per Bayesian layer."""
        return [_site(n, weight_name(self.net.get_submodule(n))) for n in self.layer_names]

    @property
    def in_features(self) -> int:
        """Feature (channel, per-step input, or vocabulary) count the first Bayesian layer
        expects."""
        return _widths(self.net.get_submodule(self.layer_names[0]))[0]

    @property
    def token_inputs(self) -> bool:
        """Whether the network reads integer token ids (its first Bayesian layer is an
        ``nn.Embedding``)."""
        return isinstance(self.net.get_submodule(self.layer_names[0]), nn.Embedding)

    @property
    def out_features(self) -> int:
        """Output width of the last Bayesian layer."""
        return _widths(self.net.get_submodule(self.layer_names[-1]))[1]

    def initial_weights(self) -> dict[str, Tensor]:
        """Site values that reproduce the copied network's initial weights (a guide's start)."""
        values = {}
        for layer, param, prior in self._sampled():
            weight = getattr(self.net.get_submodule(layer), param)
            values |= prior.init_values(_site(layer, param), weight)
        return values

    def _sampled_params(self, layer: str) -> list[str]:
        module = self.net.get_submodule(layer)
        if layer in self.norm_names:
            return [p for p in ("weight", "bias") if getattr(module, p, None) is not None]
        if self.bias_prior is None:
            return [weight_name(module)]
        biases = (b for b in BIAS_PARAMS if getattr(module, b, None) is not None)
        return [weight_name(module), *biases]

    def _sampled(self) -> list[tuple[str, str, Prior]]:
        """``(layer, parameter, prior)`` of every sampled parameter, in order."""
        out = []
        for layer in self.layer_names + self.norm_names:
            for p in self._sampled_params(layer):
                if layer in self.norm_names:
                    prior = self.norm_prior
                else:
                    prior = self.priors[_key(layer)] if p not in BIAS_PARAMS else self.bias_prior
                out.append((layer, p, prior))
        return out

    def sample_params(self) -> dict[str, Tensor]:
        """Draw every Bayesian parameter from its prior (emitting the Pyro sites; a group
        variable tied layers share, once)."""
        params = {}
        with _SampleOnce() if self.ties else contextlib.nullcontext():
            for layer, p, prior in self._sampled():
                shape = getattr(self.net.get_submodule(layer), p).shape
                params[_site(layer, p)] = prior.sample(_site(layer, p), shape)
        return params

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.likelihood(self.run_net(self.sample_params(), x), y)

    def run_net(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """The network output at ``x`` with the given parameter values.

        Parameters may carry leading batch dims from enclosing plates (as under a vectorised
        ``pyro.plate`` over posterior draws); their last batch dim is the data plate's slot and
        must be 1. The network is then vmapped over the draws and the output gets the batch dims.
        BatchNorm layers follow :func:`~pyro_sparse_bnn.norms.batch_statistics`.
        """
        with batch_statistics(self.net, rows=x.shape[0]):
            return self._run(params, x)

    def _run(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
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
        with a ``check_input(x, in_features)`` method, such as a bag network, checks ``x``).

        A Sequential whose first module is its first Bayesian layer is checked against that
        layer's width; any other network runs once on two rows of ``x`` (no gradient, running
        statistics untouched), and its error, if any, becomes the ``ValueError``.
        """
        first = self.net.get_submodule(self.layer_names[0])
        linear = isinstance(first, nn.Linear)
        check_input = getattr(self.net, "check_input", None)
        out_features = self.out_features
        vocabulary = first.num_embeddings if isinstance(first, nn.Embedding) else None
        if vocabulary is not None and x.numel() and (x.min() < 0 or x.max() >= vocabulary):
            raise ValueError(f"X must hold token ids in [0, {vocabulary}), got values in "
                             f"[{int(x.min())}, {int(x.max())}]")  # fmt: skip
        if callable(check_input):
            check_input(x, self.in_features)
        elif not _leads(self.net, first):
            out_features = self._probe(x)
        elif isinstance(first, nn.Embedding):
            pass
        elif isinstance(first, RECURRENT_LAYERS):
            if x.dim() != 3 or x.shape[2] != self.in_features:
                raise ValueError(
                    f"X must have shape (n, steps, {self.in_features}) for this recurrent network "
                    f"(one sequence per row), got {tuple(x.shape)}"
                )
        elif x.dim() < 2 or x.shape[-1 if linear else 1] != self.in_features:
            n = self.in_features
            expected = f"(n, {n}) or (n, ..., {n})" if linear else f"(n, {n}, ...)"
            raise ValueError(f"X must have shape {expected} for this network, got {tuple(x.shape)}")
        if y is not None:
            self.likelihood.check_targets(y, out_features)

    def _probe(self, x: Tensor) -> int:
        """Run the network on two rows of ``x``; its output width, or the error as ValueError."""
        rows = x[:2]
        try:
            with torch.no_grad(), batch_statistics(self.net, rows=rows.shape[0]):
                out = self.net(rows)
        except (RuntimeError, ValueError, IndexError, TypeError) as error:
            raise ValueError(f"X of shape {tuple(x.shape)} does not fit this network: "
                             f"{error}") from error  # fmt: skip
        return out.shape[-1] if out.dim() > 1 else 1


def _leads(net: nn.Module, layer: nn.Module) -> bool:
    """Whether ``net`` is a Sequential whose first module (nested Sequentials opened) is
    ``layer``: then the input goes to ``layer`` unchanged."""
    while isinstance(net, nn.Sequential) and len(net):
        net = net[0]
    return net is layer


def _widths(layer: nn.Module) -> tuple[int, int]:
    """A Bayesian layer's (input, output) width: features, channels, vocabulary or hidden size."""
    if isinstance(layer, RECURRENT_LAYERS):
        return layer.input_size, layer.hidden_size
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, nn.Embedding):
        return layer.num_embeddings, layer.embedding_dim
    if isinstance(layer, nn.MultiheadAttention):
        return layer.embed_dim, layer.embed_dim
    return layer.in_channels, layer.out_channels


def _check_modules(net: nn.Module) -> None:
    """Refuse what would silently go wrong: weights no prior covers, unsupported attention."""
    for name, m in net.named_modules():
        where = f"module {name!r} ({type(m).__name__})" if name else f"{type(m).__name__}"
        if isinstance(m, nn.MultiheadAttention) and not m._qkv_same_embed_dim:
            raise ValueError(
                f"{where}: attention with kdim/vdim other than embed_dim is not supported "
                "(its query, key and value weights are separate)"
            )
        if isinstance(m, BAYESIAN_LAYERS + POINT_LAYERS):
            continue
        weights = [p for p, _ in m.named_parameters(recurse=False) if "weight" in p]
        if weights:
            raise ValueError(
                f"{where} has weights {weights} that SparseBNN puts no prior on: it samples "
                "Linear, Conv, ConvTranspose, Embedding, MultiheadAttention, one-layer LSTM "
                "and GRU weights and learns normalisation and PReLU weights as point estimates"
            )


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


def _tie(priors: dict[str, Prior], ties: object, layers: dict[str, nn.Module]) -> dict[str, Prior]:
    """``priors`` with the layers of each tie sharing their group variables (sites ``tie<i>_...``),
    on copies of the priors involved; a ValueError/TypeError for a tie that cannot be."""
    if (
        isinstance(ties, str)
        or not isinstance(ties, Sequence)
        or any(isinstance(t, str) or not isinstance(t, Sequence) for t in ties)
    ):
        raise TypeError(f"ties must be a list of lists of layer names, got {ties!r}")
    seen: set[str] = set()
    for tie in ties:
        unknown = [n for n in tie if n not in layers]
        if unknown or len(tie) < 2 or seen & set(tie) or len(set(tie)) < len(tie):
            raise ValueError(
                f"ties: each tie must list two or more of the layers {list(layers)}, each "
                f"layer in one tie only; got {list(tie)!r}"
            )
        seen |= set(tie)
        prior = priors[tie[0]]
        if any(priors[n] is not prior for n in tie):
            raise ValueError(f"ties: the layers {list(tie)} must share one prior object")
        if prior.groups is None or not type(prior).can_tie:
            raise ValueError(
                f"ties: {prior!r} has no latent group variables to share; use a "
                "group prior such as GroupLogUniform() or Horseshoe(groups='in')"
            )
        counts = {n: math.prod(prior.group_shape(_weight_shape(layers[n]))) for n in tie}
        if len(set(counts.values())) > 1:
            raise ValueError(f"ties: the layers of a tie must have as many groups each under "
                             f"{prior!r}, got {counts}")  # fmt: skip
    if not ties:
        return priors
    priors = copy.deepcopy(priors)  # one copy per prior object: sharing is kept
    for i, tie in enumerate(ties):
        for n in tie:
            priors[n].tied[_site(n, weight_name(layers[n]))] = f"tie{i}"
    return priors


def _affine_norms(net: nn.Module) -> list[str]:
    """Paths of the normalisation layers of ``net`` with a learned scale; a ValueError if none."""
    names = [
        n for n, m in net.named_modules()
        if isinstance(m, NORM_LAYERS) and isinstance(getattr(m, "weight", None), Tensor)
    ]  # fmt: skip
    if not names:
        raise ValueError(
            "norm_prior is given but net has no normalisation layer with a learned scale "
            "(BatchNorm, LayerNorm or GroupNorm with affine parameters)"
        )
    return names


def _weight_shape(layer: nn.Module) -> tuple[int, ...]:
    return tuple(getattr(layer, weight_name(layer)).shape)


class _SampleOnce(Messenger):
    """Within one run, a site sampled again (a group variable tied layers share) takes the value
    of its first draw and is not recorded twice."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, Tensor] = {}

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = msg["stop"] = True

    def _pyro_post_sample(self, msg: dict) -> None:
        self.values.setdefault(msg["name"], msg["value"])


def _freeze_as_buffer(module: nn.Module, name: str) -> None:
    """Turn parameter ``name`` into a buffer: the prior supplies its value at run time."""
    value = getattr(module, name).detach().clone()
    delattr(module, name)
    module.register_buffer(name, value)
