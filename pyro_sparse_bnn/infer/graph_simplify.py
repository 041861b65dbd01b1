"""Fewer operations per replay of a traced ATen graph (``make_fx``), with the same results.

Traced Pyro steps carry much arithmetic that does not depend on what changes between replays
(the data, prior hyperparameters), identities (``x / 1`` for a unit prior scale, ``pow(x, 1)`` in
autograd's derivative of ``x ** 2``) and elementwise work on broadcast scalars. Each of those is a
pass over a weight-sized tensor on every step; :func:`simplify_graph` removes them.

>>> import torch
>>> from torch.fx.experimental.proxy_tensor import make_fx
>>> one = torch.ones(3)  # a stored constant of the graph, e.g. a prior scale
>>> graph = make_fx(lambda x: (x / one) ** 1.0 + x.sum().expand(3) * 2)(torch.ones(3))
>>> [str(n.target) for n in simplify_graph(graph).graph.nodes if n.op == "call_function"]
['aten.sum.default', 'aten.mul.Tensor', 'aten.expand.default', 'aten.add.Tensor']
>>> graph(torch.tensor([1.0, 2.0, 3.0]))
tensor([13., 14., 15.])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, fx
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = [
    "Traced",
    "checked_trace",
    "fold_broadcast_bmm",
    "merge_common_subexpressions",
    "simplify_graph",
]


class Traced(NamedTuple):
    """What :func:`checked_trace` found: the graph, or ``None`` with the ``error`` that stopped
    tracing (``None`` when the graph was built but disagreed with the eager computation)."""

    graph: fx.GraphModule | None
    error: str | None = None


def checked_trace(
    fn: Callable,
    args: Sequence[Any],
    agrees: Callable[[fx.GraphModule], bool],
    passes: Sequence[Callable[[fx.GraphModule], Any]] = (),
    **make_fx_options: Any,
) -> Traced:
    """Trace ``fn(*args)`` into an ATen graph, run ``passes`` over it and keep it only if
    ``agrees(graph)`` (it reproduces the eager computation at another point): the one way the
    toolkit replaces a Python step by a graph (NUTS's potential, SG-MCMC's gradient, the SVI
    step). Any failure on the way keeps the eager computation.

    >>> ok = checked_trace(torch.sin, (torch.zeros(2),), lambda g: bool(g(torch.ones(2))[0] > 0))
    >>> ok.graph is not None, checked_trace(torch.sin, (1,), lambda g: True).error is not None
    (True, True)
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = make_fx(fn, **make_fx_options)(*args)
            for simplify in passes:
                graph = simplify(graph) or graph
            if not agrees(graph):
                return Traced(None)
    except Exception as error:  # any failure to trace or replay: stay eager
        return Traced(None, f"{type(error).__name__}: {error}")
    return Traced(graph)


_aten = torch.ops.aten
_NOOP_IF_SAME_SHAPE = {
    _aten.view.default, _aten.expand.default, _aten._unsafe_view.default, _aten.reshape.default,
}  # fmt: skip
_ALIASES = {_aten.alias.default}
_VIEWS = _NOOP_IF_SAME_SHAPE | _ALIASES | {
    _aten.permute.default, _aten.unsqueeze.default, _aten.squeeze.dims, _aten.slice.Tensor,
    _aten.select.int, _aten.t.default, _aten.transpose.int,
}  # fmt: skip
# op -> the second argument that makes it return its first unchanged (not ``x + 0``: -0 -> +0)
_IDENTITY = {
    _aten.mul.Tensor: 1, _aten.mul.Scalar: 1, _aten.div.Tensor: 1, _aten.div.Scalar: 1,
    _aten.pow.Tensor_Scalar: 1, _aten.sub.Tensor: 0,
}  # fmt: skip
# elementwise ops whose arguments other than the first are numbers: op(expand(s)) == expand(op(s))
_ELEMENTWISE = {
    _aten.neg.default, _aten.exp.default, _aten.log.default, _aten.sqrt.default,
    _aten.reciprocal.default, _aten.mul.Tensor, _aten.mul.Scalar, _aten.div.Tensor,
    _aten.div.Scalar, _aten.pow.Tensor_Scalar, _aten.add.Tensor, _aten.sub.Tensor,
}  # fmt: skip


def simplify_graph(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Simplify a traced ATen graph in place and return it.

    In one pass over the graph: folds every operation whose inputs are all constants (stored
    tensors such as the data or prior hyperparameters) into a stored tensor; drops identities
    (``x * 1``, ``x / 1``, ``x - 0``, ``x ** 1``, the ``1`` or ``0`` a number or a stored tensor
    of ones or zeros, the result of ``x``'s shape and dtype); computes elementwise operations on a
    broadcast (``expand``) before broadcasting, where no view or graph output sees the broadcast
    result; drops no-op views (same shape, or ``alias``) and merges duplicate operations. Random
    draws, and values that an in-place operation may mutate (through any chain of views), are
    never folded, merged or read through an identity.
    """
    graph = graph_module.graph
    mutated = _mutated(graph)
    constants: dict[fx.Node, Any] = {}
    seen: dict[tuple, fx.Node] = {}
    for node in list(graph.nodes):
        if node.op == "get_attr":
            constants[node] = getattr(graph_module, node.target)
            continue
        if node.op != "call_function" or node in mutated or _is_mutating(node) or _is_random(node):
            continue
        if all(n in constants for n in node.all_input_nodes):
            _fold(graph_module, node, constants)
            continue
        source = node.args[0] if node.args else None
        if (
            node.target in _ALIASES
            or (node.target in _NOOP_IF_SAME_SHAPE and _same_shape(source, node))
            or (source not in mutated and _is_identity(node, constants))
        ):
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            continue
        if _sink_below_expand(graph, node):
            continue
        if any(n in mutated for n in node.all_input_nodes):
            continue  # two reads of a value may straddle its mutation
        key = (node.target, repr(node.args), repr(node.kwargs))
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph.erase_node(node)
        else:
            seen[key] = node
    graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module


def _mutated(graph: fx.Graph) -> set[fx.Node]:
    """Nodes an in-place operation writes to, directly or through a chain of views."""
    mutated: set[fx.Node] = set()
    for node in graph.nodes:
        if _is_mutating(node):
            target = node.args[0]
            while isinstance(target, fx.Node) and target not in mutated:
                mutated.add(target)
                target = target.args[0] if target.target in _VIEWS else None
    return mutated


def _fold(graph_module: fx.GraphModule, node: fx.Node, constants: dict[fx.Node, Any]) -> None:
    """Replace ``node`` (constant inputs only) by a stored tensor holding its value."""
    value = node.target(
        *fx.map_arg(node.args, constants.get), **fx.map_arg(node.kwargs, constants.get)
    )
    if isinstance(value, Tensor):
        name = f"_folded_{len(constants)}"
        graph_module.register_buffer(name, value.clone())
        with graph_module.graph.inserting_before(node):
            folded = graph_module.graph.get_attr(name)
        folded.meta["val"] = _meta(value.shape, value.dtype)
        node.replace_all_uses_with(folded)
        graph_module.graph.erase_node(node)
        constants[folded] = value


def _is_identity(node: fx.Node, constants: dict[fx.Node, Any]) -> bool:
    """Whether ``node`` returns its first argument unchanged (see :data:`_IDENTITY`)."""
    if node.target not in _IDENTITY or len(node.args) != 2 or node.kwargs:
        return False
    source, other = node.args
    other = constants.get(other, other) if isinstance(other, fx.Node) else other
    neutral = _IDENTITY[node.target]
    if isinstance(other, Tensor):
        if not bool((other == neutral).all()):
            return False
    elif isinstance(other, bool) or not isinstance(other, int | float) or other != neutral:
        return False
    if source.op in ("placeholder", "get_attr") and any(u.op == "output" for u in node.users):
        return False  # the graph would return its input or a stored tensor, for callers to mutate
    before, after = _val(source), _val(node)
    return (
        before is not None
        and after is not None
        and before.shape == after.shape
        and before.dtype == after.dtype
    )


def _sink_below_expand(graph: fx.Graph, node: fx.Node) -> bool:
    """Rewrite ``op(expand(s), numbers...)`` as ``expand(op(s, numbers...))``; whether it did."""
    if node.target not in _ELEMENTWISE or node.kwargs or not node.args:
        return False
    expand, *rest = node.args
    if not (
        isinstance(expand, fx.Node)
        and expand.target is _aten.expand.default
        and all(isinstance(a, int | float) and not isinstance(a, bool) for a in rest)
    ):
        return False
    small, out = _val(expand.args[0]), _val(node)
    if any(user.op != "call_function" or user.target in _VIEWS for user in node.users):
        return False  # a broadcast result must not become a view's base or a returned gradient
    if small is None or out is None or small.numel() == out.numel():
        return False
    with graph.inserting_before(node):
        inner = graph.call_function(node.target, (expand.args[0], *rest))
        inner.meta["val"] = _meta(small.shape, out.dtype)
        outer = graph.call_function(_aten.expand.default, (inner, *expand.args[1:]))
        outer.meta["val"] = _meta(out.shape, out.dtype)
    node.replace_all_uses_with(outer)
    graph.erase_node(node)
    return True


def _val(node: Any) -> Tensor | None:
    """The tensor (a fake or meta one: shape and dtype) that ``node`` held when traced."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value if isinstance(value, Tensor) else None


def _meta(shape: torch.Size, dtype: torch.dtype) -> Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _is_mutating(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


def _same_shape(source: Any, node: fx.Node) -> bool:
    """Whether ``node`` (a view of ``source``) has its source's shape, as traced."""
    before, after = _val(source), _val(node)
    return before is not None and after is not None and before.shape == after.shape


def _is_random(node: fx.Node) -> bool:
    """A random draw: each replay must draw afresh, so it is never folded or merged."""
    return torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())


def fold_broadcast_bmm(graph: Any) -> None:
    """Rewrite ``bmm`` with an operand broadcast over the batch (stride 0) as one ``mm``.

    ``vmap`` over chains turns ``x @ w_chain`` with shared data ``x`` into a ``bmm`` of the
    expanded ``x``: a batch of matrix-vector products when ``w`` is a column, ~15x slower on CPU
    than the single matrix product that reads ``x`` once. Both sides of each rewrite are exact
    (the traced graph is still checked against eager afterwards).
    """
    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.target is not aten.bmm.default:
            continue
        left, right = node.args
        lv, rv = left.meta.get("val"), right.meta.get("val")
        if not isinstance(lv, Tensor) or not isinstance(rv, Tensor) or lv.shape[0] < 2:
            continue
        batch, n, p = lv.shape
        k = rv.shape[2]

        def call(op: Any, *args: Any) -> Any:
            return graph.call_function(op, args)

        with graph.inserting_before(node):
            if lv.stride(0) == 0:  # out[b] = x @ right[b] = (x @ [right[0] ... right[B-1]])
                columns = call(
                    aten.reshape.default,
                    call(aten.permute.default, right, [1, 0, 2]),
                    [p, batch * k],
                )
                product = call(aten.mm.default, call(aten.select.int, left, 0, 0), columns)
                folded = call(
                    aten.permute.default,
                    call(aten.reshape.default, product, [n, batch, k]),
                    [1, 0, 2],
                )
                folded = graph.call_function(
                    aten.clone.default, (folded,), {"memory_format": torch.contiguous_format}
                )
            elif rv.stride(0) == 0:  # out[b] = left[b] @ x: stack the left rows
                rows = call(aten.reshape.default, left, [batch * n, p])
                product = call(aten.mm.default, rows, call(aten.select.int, right, 0, 0))
                folded = call(aten.reshape.default, product, [batch, n, k])
            else:
                continue
        node.replace_all_uses_with(folded)
        graph.erase_node(node)


def merge_common_subexpressions(graph: Any) -> None:
    """Let repeated pure ATen calls with equal arguments share one node (e.g. the residual that
    both the log-likelihood and the RSS use). Graphs with in-place ops are left alone: merging
    two equal tensors is only safe when neither is mutated later."""

    def key(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(key(v) for v in value)
        if isinstance(value, dict):
            return tuple(sorted((k, key(v)) for k, v in value.items()))
        return value

    schemas = [getattr(n.target, "_schema", None) for n in graph.nodes if n.op == "call_function"]
    if any(schema is None or schema.is_mutable for schema in schemas):
        return
    seen: dict[Any, Any] = {}
    for node in list(graph.nodes):
        target = node.target
        if node.op != "call_function":
            continue
        if torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
            continue
        signature = (target, key(node.args), key(node.kwargs))
        if signature in seen:
            node.replace_all_uses_with(seen[signature])
            graph.erase_node(node)
        else:
            seen[signature] = node
