"""A traced ATen graph as one flat Python function that calls each operator's C++ entry.

``fx.GraphModule`` runs its graph through generated code that looks every operator up as
``torch.ops.aten.<name>.<overload>`` and calls it through ``OpOverload.__call__``: a chain of
attribute lookups and a Python frame per operation. A traced SVI step is a few hundred small
operations, so that lookup is a visible share of its replay. :func:`flat_function` binds each
operator's C++ entry (``OpOverload._op``, what ``__call__`` forwards to) once and frees every
intermediate after its last use, as FX's own code does.

>>> import torch
>>> from torch.fx.experimental.proxy_tensor import make_fx
>>> graph = make_fx(lambda x, y: (x * y + 1).sum(0))(torch.ones(2, 3), torch.ones(3))
>>> run = flat_function(graph)
>>> run(torch.ones(2, 3), torch.arange(3.0))
tensor([2., 4., 6.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

__all__ = ["flat_function"]


def flat_function(graph_module: fx.GraphModule) -> Callable[..., Any]:
    """``graph_module``'s computation as a plain function of its placeholders, in order.

    Operator overloads are called through their C++ entry, every other callable as it is;
    stored tensors (``get_attr``) and constant arguments are bound once, not rebuilt per call.
    Under ``torch.compile``, which cannot trace those entries, the function runs the graph
    module itself, so a compiled caller sees the same graph.
    """
    scope: dict[str, Any] = {}
    names: dict[fx.Node, str] = {}

    def source(value: Any) -> str:
        if isinstance(value, fx.Node):
            return names[value]
        if not _holds_node(value):
            name = f"c{len(scope)}"  # a constant, bound once
            scope[name] = value
            return name
        if not isinstance(value, list | tuple):
            raise ValueError(f"flat_function: graph nodes inside a {type(value).__name__}")
        inner = ", ".join(source(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner},)"

    last_use: dict[fx.Node, fx.Node] = {}
    for node in reversed(graph_module.graph.nodes):
        for used in node.all_input_nodes:
            last_use.setdefault(used, node)
    inputs: list[str] = []
    body: list[str] = []
    for i, node in enumerate(graph_module.graph.nodes):
        names[node] = name = f"v{i}"
        if node.op == "placeholder":
            inputs.append(name)
        elif node.op == "get_attr":
            scope[name] = _attr(graph_module, node.target)
        elif node.op == "call_function":
            scope[f"f{i}"] = getattr(node.target, "_op", node.target)
            args = [source(a) for a in node.args]
            args += [f"{key}={source(v)}" for key, v in node.kwargs.items()]
            body.append(f"{name} = f{i}({', '.join(args)})")
        elif node.op == "output":
            body.append(f"return {source(node.args[0])}")
        else:
            raise ValueError(f"flat_function supports ATen graphs only, got a {node.op!r} node")
        local = [n for n in node.all_input_nodes if n.op != "get_attr"]  # stored tensors stay
        dead = [names[n] for n in local if last_use[n] is node]
        if dead and node.op != "output":
            body.append(f"del {', '.join(dead)}")
    code = f"def run({', '.join(inputs)}):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(code, "<flat_function>", "exec"), scope)  # our names, bound objects
    flat = scope["run"]

    def run(*args: Any) -> Any:
        # ``torch.compile`` cannot trace the C++ entries: while it traces, it sees the graph
        return graph_module(*args) if torch.compiler.is_compiling() else flat(*args)

    return run


def _attr(module: fx.GraphModule, target: str) -> Any:
    """The object a ``get_attr`` node reads (a dotted path below ``module``)."""
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _holds_node(value: Any) -> bool:
    if isinstance(value, fx.Node):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list | tuple) and any(map(_holds_node, value))
