"""A function of tensors compiled by Inductor without TorchDynamo, for inputs of fixed shapes.

``torch.compile`` runs every call through TorchDynamo: guards on each argument, AOTAutograd's
runtime wrapper and config patching. On a small model that was most of a NUTS leaf step in our
profiles, and Dynamo's cache is kept per code object, so every sampler of a process would share
(and after eight fits, exhaust) one list of cache entries. A sampler's step has fixed shapes for
its whole run and needs no guards: :func:`compile_function` traces it once with ``make_fx`` into
a graph of ATen operations and hands that graph to Inductor (``torch._inductor.compile``), whose
compiled call checks sizes and strides and runs the kernels (docs/architecture.md).

>>> import torch
>>> double = compile_function(lambda x, y: [2 * x + y])
>>> double(torch.arange(3.0), torch.ones(3))[0]
tensor([1., 3., 5.])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["compile_function"]


def compile_function(fn: Callable[..., list[Tensor]]) -> Callable[..., list[Tensor]]:
    """``fn`` (tensors in, a list of tensors out, no side effects) compiled on its first call,
    for those arguments' shapes and strides (checked on every call), and again for each other
    combination of dtypes it is called with (which the compiled code does not check)."""
    compiled: dict[tuple[torch.dtype, ...], Callable[..., list[Tensor]]] = {}

    def run(*args: Tensor) -> list[Tensor]:
        dtypes = tuple(a.dtype for a in args)
        if dtypes not in compiled:
            # traced on copies: tracing would merge arguments that are one tensor into one input
            graph = make_fx(fn)(*(a.clone() for a in args))
            compiled[dtypes] = torch._inductor.compile(graph, list(args))
        return compiled[dtypes](*args)

    return run
