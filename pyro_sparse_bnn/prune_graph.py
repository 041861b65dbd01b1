"""Structured pruning of any feed-forward network, through torch-pruning's dependency graph.

`torch-pruning <https://github.com/VainF/Torch-Pruning>`_ traces a network once and groups the
channels that must be removed together: a convolution's output channel with its BatchNorm, the
next layers' input channels, and every layer tied to it by a residual addition or concatenation.
It removes what it is told to. This module decides *what* can go without changing the function:
in a group, channel ``c`` goes when

- nothing reads it: every layer that consumes the group has zero weights on ``c``; or
- it is zero: every layer that produces the group (convolution or linear rows and biases,
  BatchNorm scales and shifts) is zero on ``c``; or
- it is a constant (its producers' weights are zero there, their biases not) that every reader
  can take into its bias exactly: a ``Linear`` layer, or a convolution without padding (with
  padding, the constant's contribution differs at the borders), or any reader if the constant
  is zero (a negative bias after a ReLU). The constant is measured where
  each reader receives it; it must be the same at every position of two inputs.

The first two are exact for any input. Each removal is checked against the unpruned network on the
example input and undone if the outputs differ (a nonlinearity that does not map zero to zero,
an operation that mixes channels); groups with channel-mixing normalisation (LayerNorm,
GroupNorm) or grouped convolutions that are not depthwise are left whole.

>>> import torch
>>> from torch import nn
>>> class Block(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 4)
...     def forward(self, x):
...         return x + self.b(torch.relu(self.a(x)))
>>> net = Block()
>>> with torch.no_grad():
...     net.a.weight[3:] = 0.0; net.a.bias[3:] = 0.0  # hidden units 3-5 are zero
>>> x = torch.randn(8, 4)
>>> small = prune_graph(net, x)
>>> small.a
Linear(in_features=4, out_features=3, bias=True)
>>> bool(torch.allclose(small(x), net(x), atol=1e-6))
True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

__all__ = ["prune_graph", "shared_inputs", "silence_dead_norms"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MIXING = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
ATOL = 1e-5
"""Largest output change a removal may cause (float64 check; relative to the largest output
where that is above 1) before it is undone."""


def _zero(t: Tensor | None, dim: int = 0) -> Tensor | None:
    """Per index along ``dim``, whether every entry of ``t`` is zero (``None`` for no tensor)."""
    if t is None:
        return None
    return ~(t.detach().transpose(0, dim).reshape(t.shape[dim], -1) != 0).any(1)


def _out_zero(m: nn.Module) -> Tensor:
    """Per output channel, whether module ``m`` outputs zero there whatever its input."""
    if isinstance(m, _NORMS):
        if not m.affine:
            return torch.zeros(m.num_features, dtype=torch.bool)
        return _zero(m.weight) & _zero(m.bias)
    rows = _zero(m.weight, 1 if isinstance(m, _CONV_T) else 0)
    bias = _zero(m.bias)
    return rows if bias is None else rows & bias


def _in_zero(m: nn.Module) -> Tensor:
    """Per input channel, whether module ``m`` ignores it (all its weights on it are zero)."""
    return _zero(m.weight, 0 if isinstance(m, _CONV_T) else 1)


@dataclass
class _Verdict:
    """Per root channel of a group: read by nothing, zero, or fed by biases only (a constant);
    and the layers that read the group, with their local and root channel indices."""

    unread: Tensor
    zero: Tensor
    constant: Tensor
    readers: list[tuple[nn.Module, Tensor, Tensor]] = field(default_factory=list)


def _verdict(graph: tp.DependencyGraph, group: tp.dependency.Group) -> _Verdict | None:
    """The :class:`_Verdict` of ``group``; ``None`` if it has a channel-mixing or unknown layer,
    or no reader (it is an output)."""
    n = len(group[0].idxs)
    verdict = _Verdict(*(torch.ones(n, dtype=torch.bool) for _ in range(3)))
    for item in group:
        m, fn = item.dep.target.module, item.dep.handler
        idxs, roots = torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs)
        if type(m).__module__.startswith("torch_pruning"):
            continue  # an elementwise op, concatenation, reshape: checked by the output test
        if isinstance(m, _MIXING) or not isinstance(m, (nn.Linear, *_CONV, *_CONV_T, *_NORMS)):
            return None
        depthwise = isinstance(m, _CONV) and m.groups > 1
        if depthwise and m.groups != m.in_channels:
            return None
        # a depthwise convolution passes channel c on as channel c: it is not a final reader
        if graph.is_in_channel_pruning_fn(fn) and not depthwise and not isinstance(m, _NORMS):
            verdict.unread[roots] &= _in_zero(m)[idxs]
            verdict.readers.append((m, idxs, roots))
        if isinstance(m, _NORMS):
            verdict.zero[roots] &= _out_zero(m)[idxs]
        elif depthwise or graph.is_out_channel_pruning_fn(fn):
            verdict.zero[roots] &= _out_zero(m)[idxs]
            verdict.constant[roots] &= _zero(m.weight, 1 if isinstance(m, _CONV_T) else 0)[idxs]
    return verdict if verdict.readers else None


def _with_parameters(net: nn.Module) -> nn.Module:
    """``net`` with layer weights and biases held as buffers (as in a ``SparseBNN``) turned back
    into parameters: the dependency graph is traced through the parameters' gradients."""
    for m in net.modules():
        for name in ("weight", "bias", "in_proj_weight", "in_proj_bias"):
            value = m._buffers.get(name)
            if value is not None and value.is_floating_point():
                del m._buffers[name]
                m.register_parameter(name, nn.Parameter(value))
    return net


@torch.no_grad()
def _close(net: nn.Module, inputs: list[Tensor], references: list[Tensor]) -> bool:
    for x, reference in zip(inputs, references, strict=True):
        try:
            out = net(x)
        except RuntimeError:  # a removal torch-pruning could not carry through every layer
            return False
        atol = ATOL * max(1.0, float(reference.abs().max()))
        if out.shape != reference.shape or not torch.allclose(out, reference, rtol=0, atol=atol):
            return False
    return True


def _second_input(x: Tensor) -> Tensor:
    """Another input of ``x``'s kind, so that a removal is checked on more than one."""
    if not x.is_floating_point():
        return x.roll(1, 0)
    g = torch.Generator(device=x.device).manual_seed(0)
    return x + x.std() * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def prune_graph(net: nn.Module, example_input: Tensor) -> nn.Module:
    """A copy of ``net`` (in eval mode) with the channels and neurons removed that nothing reads
    or that are zero, computing the same function; the first layer keeps every input.

    A channel fed by biases only is a constant; where every layer that reads it sees that
    constant at every position and can take it into its bias exactly (a ``Linear`` layer, a
    convolution without padding), it is folded there and removed too. Works in float64 and
    returns the input's floating dtype; the result is made of the same torch modules as
    ``net``, only narrower.
    """
    _check_arguments(net, example_input)
    dtype = net_dtype(net)
    small = _with_parameters(copy.deepcopy(net).eval().double())
    x = example_input.double() if example_input.is_floating_point() else example_input
    inputs = [x, _second_input(x)]
    with torch.no_grad():
        references = [small(i) for i in inputs]
    skip: set[str] = set()
    while True:
        graph = tp.DependencyGraph().build_dependency(small, example_inputs=x)
        names = {m: n for n, m in small.named_modules()}
        for group in graph.get_all_groups(root_module_types=(nn.Linear, *_CONV, *_CONV_T)):
            root = names[group[0].dep.target.module]
            verdict = None if root in skip else _verdict(graph, group)
            if verdict is None or not (verdict.unread | verdict.zero | verdict.constant).any():
                continue
            trial = _remove(small, root, group[0].dep.handler, verdict, inputs, references)
            if trial is None:
                skip.add(root)
                continue
            small = trial
            break
        else:
            return small.to(dtype)


def _remove(
    net: nn.Module,
    root: str,
    handler: object,
    verdict: _Verdict,
    inputs: list[Tensor],
    references: list[Tensor],
) -> nn.Module | None:
    """A copy of ``net`` with the removable channels of the group rooted at module ``root``
    removed, or ``None`` if that changes the output. Tried in turn: with constants folded, the
    zero and unread channels, the unread ones."""
    folded = _foldable(net, verdict, inputs)
    for channels, fold in (
        (verdict.unread | verdict.zero | folded, True),
        (verdict.unread | verdict.zero, False),
        (verdict.unread, False),
    ):
        if fold and not folded.any():
            continue
        if channels.all():  # keep one channel so every layer has a width
            channels = channels.clone()
            channels[0] = False
        if not channels.any():
            continue
        trial = copy.deepcopy(net)
        if fold:
            _fold(trial, net, verdict, folded & channels, inputs[0])
        graph = tp.DependencyGraph().build_dependency(trial, example_inputs=inputs[0])
        idxs = channels.nonzero()[:, 0].tolist()
        graph.get_pruning_group(trial.get_submodule(root), handler, idxs).prune()
        if _close(trial, inputs, references):
            return trial
    return None


def _reader_inputs(net: nn.Module, readers: list[nn.Module], x: Tensor) -> dict[nn.Module, Tensor]:
    """What each of ``readers`` receives when ``net`` runs on ``x``."""
    seen: dict[nn.Module, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.setdefault(m, args[0].detach()))
             for m in readers]  # fmt: skip
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _channel_values(m: nn.Module, received: Tensor, idxs: Tensor) -> Tensor:
    """``(len(idxs), positions)``: every value reader ``m`` received on its channels ``idxs``."""
    dim = -1 if isinstance(m, nn.Linear) else 1
    return received.movedim(dim, 0)[idxs].reshape(len(idxs), -1)


def _foldable(net: nn.Module, verdict: _Verdict, inputs: list[Tensor]) -> Tensor:
    """Root channels fed by biases only that every reader sees as one constant (on every input,
    at every position) and can take into its bias: a ``Linear`` layer or an unpadded
    convolution, or any reader if the constant is zero."""
    foldable = verdict.constant & ~verdict.unread & ~verdict.zero
    if not foldable.any():
        return foldable
    seen = [_reader_inputs(net, [m for m, _, _ in verdict.readers], x) for x in inputs]
    for m, idxs, roots in verdict.readers:
        values = torch.cat([_channel_values(m, s[m], idxs) for s in seen], 1)
        same = (values == values[:, :1]).all(1)
        if not (isinstance(m, nn.Linear) or _unpadded(m)):
            same &= values[:, 0] == 0
        foldable[roots[~same]] = False
    return foldable


def _unpadded(m: nn.Module) -> bool:
    return isinstance(m, _CONV) and m.groups == 1 and all(p == 0 for p in _tuple(m.padding))


def _tuple(v: object) -> tuple:
    return (v,) if isinstance(v, int | str) else tuple(v)


@torch.no_grad()
def _fold(trial: nn.Module, net: nn.Module, verdict: _Verdict, channels: Tensor, x: Tensor) -> None:
    """In ``trial`` (a copy of ``net``), add what each reader receives on the root ``channels``
    (constants) to its bias and zero its weights there, so the channels become unread."""
    names = {m: n for n, m in net.named_modules()}
    seen = _reader_inputs(net, [m for m, _, _ in verdict.readers], x)
    for m, idxs, roots in verdict.readers:
        chosen = channels[roots]
        if not chosen.any():
            continue
        local = idxs[chosen]
        constants = _channel_values(m, seen[m], local)[:, 0]
        target = trial.get_submodule(names[m])
        w = target.weight[:, local]
        shift = torch.einsum("oc...,c->o", w, constants.to(w.dtype))
        if target.bias is None:
            target.bias = nn.Parameter(torch.zeros_like(shift))
        target.bias += shift
        target.weight[:, local] = 0.0


def silence_dead_norms(net: nn.Module, example_input: Tensor) -> nn.Module:
    """Zero the scale and shift of every BatchNorm channel whose input layer has only zero
    weights (and bias) there, so the channel is zero, not a constant, and can be removed.

    This changes the function (the shift was the channel's constant output, which later layers
    read): evaluate the silenced network before shipping it."""
    _check_arguments(net, example_input)
    x = example_input.double() if example_input.is_floating_point() else example_input
    graph = tp.DependencyGraph().build_dependency(copy.deepcopy(net).double(), example_inputs=x)
    originals = dict(zip(graph.model.modules(), net.modules(), strict=True))
    with torch.no_grad():
        for m, node in graph.module2node.items():
            if not isinstance(m, _NORMS) or not m.affine or len(node.inputs) != 1:
                continue
            source = node.inputs[0].module
            if isinstance(source, (nn.Linear, *_CONV, *_CONV_T)):
                dead = _out_zero(source)
                norm = originals[m]
                norm.weight[dead] = 0.0
                norm.bias[dead] = 0.0
    return net


def shared_inputs(net: nn.Module, example_input: Tensor) -> list[list[str]]:
    """The layers that read the same channels, one list per channel group read by two or more:
    the ``ties`` of a :class:`~pyro_sparse_bnn.SparseBNN` whose ``groups="in"`` prior should
    switch a channel off in all of them at once (the layers after a residual addition).

    Only ``Linear`` and ungrouped convolutions that read every channel of the group in order
    count (not a layer reading a concatenation or a flattened feature map).

    >>> class Residual(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         h = self.a(x)
    ...         return self.head(h + self.b(torch.relu(h)))
    >>> shared_inputs(Residual(), torch.randn(2, 4))
    [['b', 'head']]
    """
    _check_arguments(net, example_input)
    copied = _with_parameters(copy.deepcopy(net).eval())
    graph = tp.DependencyGraph().build_dependency(copied, example_inputs=example_input)
    names = {m: n for n, m in copied.named_modules()}
    ties = []
    for group in graph.get_all_groups(root_module_types=(nn.Linear, *_CONV, *_CONV_T)):
        width = len(group[0].idxs)
        readers = [
            names[item.dep.target.module] for item in group
            if graph.is_in_channel_pruning_fn(item.dep.handler)
            and _reads_whole(item.dep.target.module, width)
            and list(item.idxs) == list(item.root_idxs) == list(range(width))
        ]  # fmt: skip
        if len(readers) > 1:
            ties.append(sorted(set(readers), key=list(names.values()).index))
    return ties


def _reads_whole(m: nn.Module, width: int) -> bool:
    """Whether ``m`` is a Linear layer or an ungrouped convolution with ``width`` inputs."""
    if isinstance(m, nn.Linear):
        return m.in_features == width
    return isinstance(m, _CONV) and m.groups == 1 and m.in_channels == width


def _check_arguments(net: object, example_input: object) -> None:
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(example_input, Tensor) or example_input.dim() == 0:
        raise TypeError(f"example_input must be a batch tensor (one row or more), got "
                        f"{type(example_input).__name__}")  # fmt: skip


def net_dtype(net: nn.Module) -> torch.dtype:
    """The floating dtype of ``net``'s first parameter or buffer (float32 if it has none)."""
    for t in (*net.parameters(), *net.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32
