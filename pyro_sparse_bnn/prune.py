"""Pruning: masked networks and physically smaller networks.

Masks (``True`` = keep, keyed like a ``state_dict``) come from :mod:`pyro_sparse_bnn.sparsity`.
:func:`masked_network` sets a network's weights and zeroes the pruned entries (SparseVD's
test-time network); :func:`apply_masks` does the same through ``torch.nn.utils.prune``;
:func:`prune` returns the network with the dead neurons and channels removed, computing the same
function: a plain ``nn.Sequential`` (made of torch modules only, so it loads without this
package) for sequential, bag and recurrent nets, and the same architecture narrower for any other
(through :func:`~pyro_sparse_bnn.prune_graph.prune_graph`).

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
>>> with torch.no_grad():
...     net[0].weight[1:] = 0.0  # hidden units 1-3 get no input: they output relu(bias)
>>> small = prune(net)
>>> small
Sequential(
  (0): Linear(in_features=3, out_features=1, bias=True)
  (1): ReLU()
  (2): Linear(in_features=1, out_features=2, bias=True)
)
>>> x = torch.randn(5, 3)
>>> bool(torch.allclose(small(x), net(x), atol=1e-6))
True
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from .mil.bags import BagPooling, MILNet
from .nn import BAYESIAN_LAYERS, RECURRENT_LAYERS
from .projection import linear_layer
from .prune_graph import prune_graph
from .recurrent import FusedGRU, RecurrentOutput, fuse_recurrent
from .sparsity import scalp_masks
from .validation import check_nonnegative

__all__ = [
    "apply_masks",
    "masked_network",
    "prune",
    "prune_result",
    "scalp_prune",
]

_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_SEQUENTIAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _check_masks(net: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    state = net.state_dict()
    out = {}
    for name, mask in masks.items():
        if name not in state:
            raise ValueError(f"mask {name!r} names no parameter of the network")
        if not isinstance(mask, Tensor) or mask.shape != state[name].shape:
            raise ValueError(
                f"mask {name!r} must be a tensor of shape {tuple(state[name].shape)}, got "
                f"{getattr(mask, 'shape', type(mask).__name__)}"
            )
        out[name] = mask.to(device=state[name].device, dtype=torch.bool)
    return out


def masked_network(
    net: nn.Module,
    params: Mapping[str, Tensor] | None = None,
    masks: Mapping[str, Tensor] | None = None,
) -> nn.Module:
    """A copy of ``net`` with ``params`` loaded (``state_dict`` keys) and masked entries zeroed.

    With the posterior means as ``params`` and :func:`log_alpha_masks` this is SparseVD's
    deterministic test-time network.

    >>> net = nn.Linear(2, 1)
    >>> masked_network(net, masks={"weight": torch.tensor([[True, False]])}).weight[0, 1].item()
    0.0
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    out = copy.deepcopy(net)
    state = out.state_dict()
    for name, value in (params or {}).items():
        if name not in state:
            raise ValueError(f"params names {name!r}, which is not in the network's state_dict")
        if value.shape != state[name].shape:
            raise ValueError(f"params[{name!r}] has shape {tuple(value.shape)}, expected "
                             f"{tuple(state[name].shape)}")  # fmt: skip
    masks = _check_masks(out, masks or {})
    with torch.no_grad():
        for name, value in (params or {}).items():
            state[name].copy_(value)
        for name, mask in masks.items():
            state[name].masked_fill_(~mask, 0.0)
    return out


def apply_masks(net: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``net`` with ``torch.nn.utils.prune.custom_from_mask`` applied per mask.

    The copy keeps ``<param>_orig`` and ``<param>_mask`` as ``torch.nn.utils.prune`` does; call
    ``torch.nn.utils.prune.remove`` to make the zeros permanent.

    >>> net = apply_masks(nn.Linear(2, 1), {"weight": torch.tensor([[True, False]])})
    >>> net.weight_mask.tolist()
    [[1.0, 0.0]]
    """
    out = copy.deepcopy(net)
    for name, mask in _check_masks(out, masks).items():
        module_name, _, param = name.rpartition(".")
        torch_prune.custom_from_mask(out.get_submodule(module_name), param, mask)
    return out


def _flatten(net: nn.Module) -> list[nn.Module]:
    if isinstance(net, nn.Sequential):
        return [m for child in net for m in _flatten(child)]
    if isinstance(net, MILNet):
        return [*_flatten(net.instance), net.pool, *_flatten(net.bag)]
    return [net]


def _assemble(modules: list[nn.Module]) -> nn.Module:
    """``modules`` as an ``nn.Sequential``, or as a ``MILNet`` split at its bag pooling."""
    pools = [i for i, m in enumerate(modules) if isinstance(m, BagPooling)]
    if not pools:
        return nn.Sequential(*modules)
    i = pools[0]
    instance, bag = nn.Sequential(*modules[:i]), nn.Sequential(*modules[i + 1 :])
    return MILNet(instance, bag, pooling=modules[i].mode)


def _sequential(modules: list[nn.Module]) -> bool:
    """Whether the Sequential pruner below (which also folds constant units) handles these."""
    try:
        _check_supported(modules)
    except ValueError:
        return False
    return True


def _check_supported(modules: list[nn.Module]) -> None:
    for m in modules:
        if isinstance(m, BAYESIAN_LAYERS) and not isinstance(m, _SEQUENTIAL_LAYERS):
            raise ValueError(f"the Sequential pruner takes Linear/Conv1d/Conv2d layers, got {m}")
        if isinstance(m, BAYESIAN_LAYERS):
            if isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups != 1:
                raise ValueError(f"grouped convolutions are not supported, got {m}")
        elif not isinstance(m, _ELEMENTWISE + _POOLS + (nn.Flatten, BagPooling)):
            raise ValueError(
                f"prune supports Sequential nets of Linear/Conv1d/Conv2d, elementwise activations, "
                f"pooling and Flatten, and bag networks (MILNet) of them; got {type(m).__name__}"
            )
    if not any(isinstance(m, BAYESIAN_LAYERS) for m in modules):
        raise ValueError("net must contain at least one Linear or Conv layer")
    if any(isinstance(m, BagPooling) for m in modules) and not all(
        isinstance(m, nn.Linear) for m in modules if isinstance(m, BAYESIAN_LAYERS)
    ):
        raise ValueError("prune supports bag networks (MILNet) of Linear layers only")


class _Layer:
    """A layer's weight and bias (being pruned), the modules after it, and its output shape."""

    def __init__(self, module: nn.Module, after: list[nn.Module], out_shape: torch.Size) -> None:
        self.module = module
        self.weight = module.weight.detach().clone()
        bias = module.bias
        zeros = self.weight.new_zeros(self.weight.shape[0])
        self.bias = zeros if bias is None else bias.detach().clone()
        self.has_bias = bias is not None
        self.after = after
        self.out_shape = out_shape  # (units, *spatial) of the layer's output

    @property
    def units(self) -> int:
        return self.weight.shape[0]


def _in_columns(nxt: _Layer, layer: _Layer) -> int:
    """How many input columns of ``nxt`` each unit of ``layer`` feeds (1 unless flattened or
    pooled into several copies). Flattening puts a unit's columns side by side; bag pooling puts
    the copies in blocks (all means, then all maxima)."""
    if isinstance(nxt.module, nn.Linear) and any(isinstance(m, nn.Flatten) for m in layer.after):
        return nxt.weight.shape[1] // layer.units
    return math.prod(m.copies for m in layer.after if isinstance(m, BagPooling))


def _in_blocks(layer: _Layer) -> bool:
    return any(isinstance(m, BagPooling) for m in layer.after)


def _incoming(nxt: _Layer, layer: _Layer) -> Tensor:
    """``nxt``'s weights grouped by the unit of ``layer`` they read: ``(units, out, ...)``, or
    ``(units, out, k)`` where each unit feeds ``k`` columns."""
    k = _in_columns(nxt, layer)
    w = nxt.weight
    if k > 1 and _in_blocks(layer):
        return w.reshape(w.shape[0], k, layer.units).permute(2, 0, 1)
    if k > 1:
        return w.reshape(w.shape[0], layer.units, k).transpose(0, 1)
    return w.transpose(0, 1)


def _constant_outputs(layer: _Layer) -> Tensor | None:
    """Per unit, the constant each *input-dead* unit emits after the modules that follow the layer
    (flattened to the next layer's columns as ``(units, k)``), or ``None`` if not constant."""
    x = layer.bias.reshape(1, -1, *(1,) * (len(layer.out_shape) - 1))
    x = x.expand(1, *layer.out_shape).clone()
    for m in layer.after:
        if isinstance(m, BagPooling):  # every pool of a constant is that constant
            x = x.repeat_interleave(m.copies, -1)
        elif not isinstance(m, nn.Flatten):
            x = m(x)
    per_unit = x.reshape(layer.units, -1) if x.dim() > 1 else x.reshape(layer.units, 1)
    if not torch.allclose(per_unit, per_unit[:, :1].expand_as(per_unit)):
        return None
    return per_unit


def _fold_constants(nxt: _Layer, layer: _Layer, units: Tensor, const: Tensor) -> bool:
    """Add the constant outputs of ``units`` into ``nxt``'s bias; False if not exact."""
    k = _in_columns(nxt, layer)
    incoming = _incoming(nxt, layer)[units]  # (u, out, ...)
    if isinstance(nxt.module, nn.Linear):
        c = const[units]
        c = c[:, :1].expand(-1, k) if c.shape[1] != k else c
        contrib = torch.einsum("uok,uk->o", incoming.reshape(len(units), -1, k), c)
    else:
        padding = nxt.module.padding
        if padding != "valid" and any(p != 0 for p in _pair(padding)):
            return False
        contrib = torch.einsum("uo...,u->o", incoming, const[units, 0])
    nxt.bias += contrib
    nxt.has_bias = True
    return True


def _pair(v: Any) -> tuple:
    return tuple(v) if isinstance(v, tuple | list) else (v,)


def _columns(nxt: _Layer, layer: _Layer, units: Tensor) -> Tensor:
    """Boolean mask over ``nxt``'s input columns read from the given units of ``layer``."""
    k = _in_columns(nxt, layer)
    if k > 1:
        return units.repeat(k) if _in_blocks(layer) else units.repeat_interleave(k)
    return units


def _remove_units(layer: _Layer, nxt: _Layer, keep: Tensor) -> None:
    cols = _columns(nxt, layer, keep)
    layer.weight = layer.weight[keep]
    layer.bias = layer.bias[keep]
    layer.out_shape = torch.Size([int(keep.sum()), *layer.out_shape[1:]])
    nxt.weight = nxt.weight[:, cols]


def _prune_pass(layer: _Layer, nxt: _Layer) -> bool:
    """Remove ``layer``'s units that feed nothing or receive nothing; True if any were."""
    reads = _incoming(nxt, layer).reshape(layer.units, -1)
    out_dead = ~(reads != 0).any(1)
    in_dead = ~(layer.weight.reshape(layer.units, -1) != 0).any(1)
    const = _constant_outputs(layer)
    foldable = in_dead & ~out_dead
    if foldable.any() and (
        const is None or not _fold_constants(nxt, layer, foldable.nonzero()[:, 0], const)
    ):
        foldable = torch.zeros_like(foldable)
    drop = out_dead | foldable
    if drop.all():  # keep one unit (zero weights both ways) so every layer has a width
        drop[0] = False
        layer.weight[0] = 0.0
        nxt.weight[:, _columns(nxt, layer, torch.arange(layer.units) == 0)] = 0.0
    if not drop.any():
        return False
    _remove_units(layer, nxt, ~drop)
    return True


def _rebuild(layer: _Layer) -> nn.Module:
    m = layer.module
    w = layer.weight
    if isinstance(m, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0], bias=layer.has_bias)
    else:
        new = type(m)(
            w.shape[1],
            w.shape[0],
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            bias=layer.has_bias,
            padding_mode=m.padding_mode,
        )
    new = new.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.has_bias:
            new.bias.copy_(layer.bias)
    return new


def prune(
    net: nn.Module, example_input: Tensor | None = None, *, inputs: str = "keep"
) -> nn.Module:
    """A smaller network computing the same function as ``net`` (weights as they are).

    Zero weights mark what was pruned (see :func:`masked_network`). A hidden unit (neuron or
    channel) with no non-zero outgoing weights is removed; one with no non-zero incoming weights
    outputs a constant (its activated bias), which is folded into the next layer's bias before it
    is removed (for a convolution only when the next layer has no padding, where this is exact).
    Output units are never removed. This repeats until nothing changes.

    Args:
        net: an ``nn.Sequential`` (nesting allowed) of ``Linear``/``Conv1d``/``Conv2d`` layers,
            elementwise activations, pooling and ``Flatten``; or a
            :class:`~pyro_sparse_bnn.mil.MILNet` whose instance and bag networks are Sequentials
            of ``Linear`` layers and elementwise activations (then a ``MILNet`` is returned); or
            a Sequential of ``nn.LSTM``/``nn.GRU`` layers (or their fused forms), each followed
            by a :class:`~pyro_sparse_bnn.recurrent.RecurrentOutput`, then a feed-forward tail
            whose first layer is ``Linear``: hidden units that nothing downstream reads are
            removed, the rest returned as smaller plain ``nn.LSTM``/``nn.GRU`` layers; or any
            other feed-forward network (residual additions, concatenations, BatchNorm,
            depthwise convolutions, transformer encoder layers), pruned by
            :func:`~pyro_sparse_bnn.prune_graph.prune_graph` into a narrower copy.
        example_input: one input batch; needed when the net has convolutions (for the spatial
            sizes) or is not a sequential, bag or recurrent net (to trace it).
        inputs: ``"keep"``: the small net reads the same input as ``net`` (input features no
            weight reads keep their zero columns); ``"select"``: the first layer reads only the
            used features (channels), listed in the buffer ``small.kept_inputs``, so call
            ``small(x[:, small.kept_inputs])``.

    >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> with torch.no_grad():
    ...     net[0].weight[:, 1] = 0.0  # no weight reads feature 1
    >>> small = prune(net, inputs="select")
    >>> small[0].in_features, small.kept_inputs.tolist()
    (2, [0, 2])
    >>> x = torch.randn(4, 3)
    >>> bool(torch.allclose(small(x[:, small.kept_inputs]), net(x)))
    True
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if inputs not in ("keep", "select"):
        raise ValueError(f"inputs must be 'keep' or 'select', got {inputs!r}")
    modules = _flatten(fuse_recurrent(net).eval())
    recurrent = any(isinstance(m, RECURRENT_LAYERS) for m in modules)
    if inputs == "select" and (isinstance(net, MILNet) or recurrent):
        raise ValueError("inputs='select' is not supported for bag or recurrent networks")
    if recurrent:
        return _prune_recurrent(modules, example_input)
    if not isinstance(net, MILNet) and not _sequential(modules):
        if inputs == "select":
            raise ValueError(
                "inputs='select' is supported for Sequential nets of Linear/Conv layers, "
                "elementwise activations, pooling and Flatten only"
            )
        if example_input is None:
            raise ValueError("example_input is required to prune a network that is not a "
                             "Sequential of Linear layers")  # fmt: skip
        return prune_graph(net, example_input)
    _check_supported(modules)
    has_conv = any(isinstance(m, nn.Conv1d | nn.Conv2d) for m in modules)
    if has_conv and example_input is None:
        raise ValueError("example_input is required to prune a network with convolutions")
    shapes = _output_shapes(modules, example_input, has_conv)
    positions = [i for i, m in enumerate(modules) if isinstance(m, BAYESIAN_LAYERS)]
    bounds = [*positions[1:], len(modules)]
    layers = [
        _Layer(modules[i], modules[i + 1 : end], shapes[i])
        for i, end in zip(positions, bounds, strict=True)
    ]
    with torch.no_grad():
        first = layers[0]
        used = (first.weight.transpose(0, 1).reshape(first.weight.shape[1], -1) != 0).any(1)
        if inputs == "keep":
            used[:] = True
        elif not used.any():
            used[0] = True
        first.weight = first.weight[:, used]
        changed = True
        while changed:
            changed = False
            for layer, nxt in itertools.pairwise(layers):
                changed |= _prune_pass(layer, nxt)
        out = modules[: positions[0]]
        for layer in layers:
            out.append(_rebuild(layer))
            out.extend(layer.after)
    small = _assemble(out).eval()
    if inputs == "select":
        small.register_buffer("kept_inputs", used.nonzero()[:, 0])
    return small


def _output_shapes(
    modules: list[nn.Module], example_input: Tensor | None, has_conv: bool
) -> list[torch.Size]:
    """Per module, its output shape without the batch dim (from ``example_input`` if given)."""
    if not has_conv:
        return [
            torch.Size([m.out_features]) if isinstance(m, nn.Linear) else torch.Size()
            for m in modules
        ]
    shapes = []
    x = example_input[:1]
    with torch.no_grad():
        for m in modules:
            x = m(x)
            shapes.append(x.shape[1:])
    return shapes


def posterior_network(result: Any) -> tuple[nn.Module, dict[str, Tensor], Tensor]:
    """A ``SparseBNN`` result's network, its posterior-mean parameters and one training row."""
    net = getattr(result.model, "net", None)
    if not isinstance(net, nn.Module):
        raise TypeError("result.model must be a SparseBNN (a model with a .net network)")
    state = net.state_dict()
    params = {k: v.mean(0) for k, v in result.sample_posterior().items() if k in state}
    params |= {k: mean for k, (mean, _) in result.weight_moments().items()}
    return net, params, result.x[:1]


def masked_result_network(result: Any, masks: Mapping[str, Tensor]) -> nn.Module:
    """The full-size network of a ``SparseBNN`` result with posterior-mean weights, zeroed outside
    ``masks`` (``result.masks(...)``): what :func:`prune_result` makes smaller.

    Weight means are ``result.weight_moments()``'s (exact under a SparseVD guide); for a network
    of one ``nn.Linear`` layer, the means of the projected submodel
    (``result.submodel_draws(masks)``). Non-Bayesian biases are the fitted ones, Bayesian biases
    their posterior means. A BatchNorm channel whose input layer keeps no weight there still
    emits its shift, a constant the next layers read: it stays, as the masked posterior's
    predictive has it (:func:`~pyro_sparse_bnn.prune_graph.silence_dead_norms` zeroes such
    channels, a different network, to be evaluated as one).
    """
    net, params, _ = posterior_network(result)
    if linear_layer(result.model) is not None:
        projected = result.submodel_draws(dict(masks))
        params |= {k: v.mean(0) for k, v in projected.items() if k in params}
    return masked_network(net, params, dict(masks)).eval()


def prune_result(
    result: Any,
    masks: Mapping[str, Tensor],
    example_input: Tensor | None = None,
    inputs: str = "keep",
) -> nn.Module:
    """:func:`prune` the :func:`masked_result_network` of a :class:`~pyro_sparse_bnn.FitResult`.

    ``example_input`` (validated) defaults to a training row; ``inputs`` is :func:`prune`'s.
    """
    x = result.x[:1] if example_input is None else example_input
    return prune(masked_result_network(result, masks), x, inputs=inputs)


def live_masks(result: Any, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``masks`` less the kept weights that :func:`prune_result` removes: those on no path from
    an input to an output (or folded into a bias). A Bayesian bias stays kept while its unit has
    a live incoming weight (always, in the output layer).

    Each kept weight is numbered in a float64 copy of the network, the copy is pruned, and the
    numbers that survive name the live weights.
    """
    net, params, x = posterior_network(result)
    numbers, start = {}, 1
    for name, mask in masks.items():
        if name.endswith("weight"):
            count = torch.arange(start, start + mask.numel(), dtype=torch.float64, device=x.device)
            numbers[name] = count.reshape(mask.shape) * mask
            start += mask.numel()
    numbered = masked_network(copy.deepcopy(net).double(), params | numbers).eval()
    small = prune(numbered, x.double())
    found = torch.cat([p.reshape(-1) for k, p in small.named_parameters() if "weight" in k])
    found = found[found != 0]
    out = {name: torch.isin(n, found) & masks[name] for name, n in numbers.items()}
    output_layer = result.model.layer_names[-1]
    for name in set(masks) - set(numbers):
        layer = name.rpartition(".")[0]
        if isinstance(net.get_submodule(layer), RECURRENT_LAYERS):  # constant gates need them
            out[name] = masks[name]
            continue
        incoming = out[f"{layer}.weight" if layer else "weight"]
        alive = incoming.reshape(incoming.shape[0], -1).any(1)
        out[name] = masks[name] if layer == output_layer else masks[name] & alive
    return {name: out[name] for name in masks}


def scalp_prune(
    result: Any, threshold: float, *, sites: Sequence[str] | None = None
) -> tuple[nn.Sequential, dict[str, Tensor]]:
    """ScaLP's neuron pruning of a fitted ``SparseBNN``: the smaller plain network and the masks.

    Weights are posterior means; in each of ``sites`` (default: every weight site but the first,
    whose inputs are the data features) the input neurons whose outgoing mean ``|w|`` is below
    ``threshold`` are removed, with their incoming weights (:func:`~pyro_sparse_bnn.prune.prune`).
    The final width of a hidden layer is the ``in_features`` of the layer after it.
    """
    threshold = float(check_nonnegative(threshold, "threshold"))
    net = getattr(getattr(result, "model", None), "net", None)
    if not isinstance(net, nn.Module):
        raise TypeError("result must be a FitResult of a SparseBNN (a model with a .net network)")
    sites = list(result.weight_sites[1:] if sites is None else sites)
    unknown = set(sites) - set(result.weight_sites)
    if unknown:
        raise ValueError(f"sites {sorted(unknown)} are not weight sites {result.weight_sites}")
    state = net.state_dict()
    draws = result.sample_posterior()
    params = {k: v.mean(0) for k, v in draws.items() if k in state}
    masks = scalp_masks({k: params[k] for k in sites}, threshold)
    return prune(masked_network(net, params, masks), result.x[:1]), masks


def _kept_units(layer: nn.Module, read: Tensor) -> Tensor:
    """The hidden units of a fused recurrent ``layer`` that matter: those ``read`` downstream and,
    repeatedly, those whose state a kept unit's gates read."""
    hidden = layer.weight[:, layer.input_size :] != 0  # (gates * units, units)
    keep = read.clone()
    while True:
        grown = keep | hidden[keep.repeat(layer.gates)].any(0)
        if torch.equal(grown, keep):
            return keep
        keep = grown


def _shrink(layer: nn.Module, units: Tensor, inputs: Tensor) -> nn.RNNBase:
    """The plain ``nn.LSTM``/``nn.GRU`` of ``layer`` restricted to hidden ``units`` and
    ``inputs`` (boolean masks)."""
    rows = units.repeat(layer.gates)
    small = type(layer)(int(inputs.sum()), int(units.sum()), bias=layer.bias is not None,
                        batch_first=layer.batch_first)  # fmt: skip
    small = small.to(layer.weight)
    with torch.no_grad():
        small.weight.copy_(layer.weight[rows][:, torch.cat([inputs, units])])
        if layer.bias is not None:
            small.bias.copy_(layer.bias[rows])
        if isinstance(layer, FusedGRU) and layer.bias_hn is not None:
            small.bias_hn.copy_(layer.bias_hn[units])
    return small.to_torch()


def _prune_recurrent(modules: list[nn.Module], example_input: Tensor | None) -> nn.Sequential:
    """:func:`prune` for a Sequential of fused recurrent layers (each followed by a
    :class:`~pyro_sparse_bnn.recurrent.RecurrentOutput`) and then a feed-forward tail.

    A hidden unit is removed when nothing downstream reads it: no kept weight of the tail (or the
    next recurrent layer) and no gate of a kept unit. A unit whose gates read nothing still
    evolves over time (its cell integrates its biases), so it is kept while it is read; a gate
    whose row is zero is constant, its bias, as in the plain ``nn.LSTM`` returned.
    """
    positions = [i for i, m in enumerate(modules) if isinstance(m, RECURRENT_LAYERS)]
    for i in positions:
        if i + 1 >= len(modules) or not isinstance(modules[i + 1], RecurrentOutput):
            raise ValueError("prune needs a RecurrentOutput after each recurrent layer")
    between = [m for m in modules[: positions[-1]] if not isinstance(m, RECURRENT_LAYERS)]
    if not all(isinstance(m, (*_ELEMENTWISE, RecurrentOutput)) for m in between):
        raise ValueError("prune supports elementwise modules only before the last recurrent layer")
    last = modules[positions[-1]]
    tail = modules[positions[-1] + 2 :]
    head = modules[: positions[-1] + 2]
    out_tail: list[nn.Module] = []
    read = torch.ones(last.hidden_size, dtype=torch.bool, device=last.weight.device)
    if any(isinstance(m, BAYESIAN_LAYERS) for m in tail):
        if not isinstance(next(m for m in tail if isinstance(m, BAYESIAN_LAYERS)), nn.Linear):
            raise ValueError("prune needs a Linear layer first after the last recurrent layer")
        tail_input = None
        if example_input is not None:
            with torch.no_grad():
                tail_input = nn.Sequential(*head)(example_input[:1])
        small_tail = prune(nn.Sequential(*tail), tail_input, inputs="select")
        read = torch.zeros_like(read)
        read[small_tail.kept_inputs] = True
        out_tail = _flatten(small_tail)
    else:
        out_tail, small_tail = tail, None
    units = _kept_units(last, read)
    if small_tail is not None:  # the tail's first layer reads the kept units, in order
        first = next(i for i, m in enumerate(out_tail) if isinstance(m, BAYESIAN_LAYERS))
        layer = out_tail[first]
        weight = layer.weight.new_zeros(layer.out_features, int(units.sum()))
        weight[:, read[units]] = layer.weight.detach()
        wider = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
        wider = wider.to(weight)
        with torch.no_grad():
            wider.weight.copy_(weight)
            if layer.bias is not None:
                wider.bias.copy_(layer.bias)
        out_tail[first] = wider
    pruned: dict[int, nn.Module] = {}
    for index in reversed(positions):
        layer = modules[index]
        earlier = [p for p in positions if p < index]
        inputs = torch.ones(layer.input_size, dtype=torch.bool, device=units.device)
        if earlier:  # the earlier layer keeps the units this one reads, and what they read
            reads = (layer.weight[units.repeat(layer.gates), : layer.input_size] != 0).any(0)
            reads[0] |= not reads.any()
            inputs = _kept_units(modules[earlier[-1]], reads)
        pruned[index] = _shrink(layer, units, inputs)
        units = inputs
    out = [pruned.get(i, m) for i, m in enumerate(head)]
    return nn.Sequential(*out, *out_tail).eval()
