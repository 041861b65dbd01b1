"""Per-example squared gradients for VOGN without per-example gradient tensors where possible.

For a Linear layer ``out = a W^T + b`` and the output gradient ``d_i`` of example ``i``, the
example's weight gradient is ``d_i a_i^T``, so the sum over a minibatch of its elementwise square
is ``(d * d)^T (a * a)``: two squared tensors and one matrix product (Goodfellow, 2015; the
technique behind BackPACK and Opacus). A convolution's per-example gradient sums over positions,
``d_i (unfold a_i)^T``, so it is formed per example (a batched matrix product) and squared after
that sum. Each recorded layer call gives the squares of the weight and bias tensors it used.

A tensor that is not the weight or bias of exactly one such call (a shared weight, a parameter used
by another operation, a layer whose examples are not its input's first dimension) gets per-example
gradients from one batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``) of
the per-example losses instead. :func:`moments` checks, on the first call for each tensor, that
the closed form reproduces the autograd gradient, and falls back when it does not.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> net = torch.nn.Linear(3, 2)
>>> x = torch.randn(5, 3)
>>> with recorded_calls() as calls:
...     losses = net(x).pow(2).sum(1)
>>> loss, grads, squares = moments(losses, [net.weight], calls, checked=set())
>>> jacobian = torch.autograd.functional.jacobian(lambda w: (x @ w.T + net.bias).pow(2).sum(1),
...                                               net.weight.detach())
>>> torch.allclose(squares[0], jacobian.pow(2).mean(0), atol=1e-5)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class LayerCall:
    """One call of a Linear or Conv layer: its module, input, the tensors it used as weight and
    bias, and (after the backward pass) the gradient of the summed loss at its output."""

    module: nn.Module
    inputs: Tensor
    weight: Tensor
    bias: Tensor | None
    grad: Tensor | None = None

    def record_grad(self, grad: Tensor) -> None:
        self.grad = grad


@contextmanager
def recorded_calls() -> Iterator[list[LayerCall]]:
    """Record every Linear/Conv call that builds an autograd graph inside the block.

    The hook is registered for all modules and removed when the block exits.
    """
    calls: list[LayerCall] = []

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        if not isinstance(module, _LAYERS) or not isinstance(output, Tensor):
            return
        if not output.requires_grad or not args or not isinstance(args[0], Tensor):
            return
        call = LayerCall(module, args[0].detach(), module.weight, module.bias)
        output.register_hook(call.record_grad)
        calls.append(call)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _conv_columns(call: LayerCall) -> Tensor | None:
    """The unfolded input ``(M, C * prod(kernel), positions)`` of a conv call, or ``None`` where
    its options have no unfold equivalent here."""
    m = call.module
    assert isinstance(m, nn.Conv1d | nn.Conv2d)
    if (
        m.groups != 1
        or m.padding_mode != "zeros"
        or (isinstance(m.padding, str) and m.padding != "valid")
    ):
        return None
    padding = (0,) * len(m.kernel_size) if isinstance(m.padding, str) else m.padding
    a = call.inputs
    if isinstance(m, nn.Conv1d):
        if a.dim() != 3:
            return None
        return F.unfold(
            a.unsqueeze(2),
            (1, m.kernel_size[0]),
            dilation=(1, m.dilation[0]),
            padding=(0, padding[0]),
            stride=(1, m.stride[0]),
        )
    if a.dim() != 4:
        return None
    return F.unfold(a, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)


def _layer_sums(call: LayerCall, role: str, check: bool) -> tuple[Tensor, Tensor | None] | None:
    """The mean over the examples of the squared per-example gradient of the call's ``role``
    tensor (``"weight"`` or ``"bias"``) and, if ``check``, the mean gradient the closed form
    implies; ``None`` where it has none. The recorded output gradient is that of the mean loss,
    so example ``i``'s own gradient is ``M`` times its part of it."""
    a, d = call.inputs, call.grad
    rows = a.shape[0]
    if d is None or d.shape[0] != rows:
        return None
    if isinstance(call.module, nn.Linear) and a.dim() == 2:
        if role == "bias":
            return (d * d).sum(0) * rows, d.sum(0) if check else None
        return (d * d * rows).T @ (a * a), d.T @ a if check else None
    if isinstance(call.module, nn.Linear):
        per_example = d.reshape(rows, -1, d.shape[-1]).sum(1)
        if role == "weight":
            per_example = torch.einsum("n...o,n...i->noi", d, a)
    else:
        per_example = d.reshape(rows, d.shape[1], -1).sum(2)
        if role == "weight":
            columns = _conv_columns(call)
            if columns is None:
                return None
            per_example = torch.bmm(d.reshape(rows, d.shape[1], -1), columns.transpose(1, 2))
            per_example = per_example.reshape(rows, *call.weight.shape)
    square = (per_example * per_example).sum(0) * rows
    return square, per_example.sum(0) if check else None


def _single_use(calls: list[LayerCall], params: list[Tensor]) -> dict[int, tuple[LayerCall, str]]:
    """``{index of param: (call, role)}`` for the params that are the weight or bias of exactly
    one recorded call."""
    uses: dict[int, list[tuple[LayerCall, str]]] = {}
    index = {id(p): i for i, p in enumerate(params)}
    for call in calls:
        for role, tensor in (("weight", call.weight), ("bias", call.bias)):
            if tensor is not None and id(tensor) in index:
                uses.setdefault(index[id(tensor)], []).append((call, role))
    return {i: found[0] for i, found in uses.items() if len(found) == 1}


def moments(
    losses: Tensor, params: list[Tensor], calls: list[LayerCall], *, checked: set[int]
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The mean loss, mean gradients and mean squared per-example gradients of ``params``.

    ``losses`` holds the ``M`` per-example losses of a graph built inside :func:`recorded_calls`
    (the ``calls`` it recorded). Calls ``backward`` on ``losses.mean()``, so every other leaf of
    the graph also gets the mean's gradient in ``.grad``. ``checked`` holds the ids of
    tensors whose closed form was already verified against autograd; it is updated.
    """
    rows = losses.shape[0]
    for p in params:
        p.grad = None
    uses = _single_use(calls, params)
    torch.autograd.backward(losses.mean(), retain_graph=True)  # for the fallback below
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    squares: list[Tensor | None] = [None] * len(params)
    for i, (call, role) in uses.items():
        check = id(params[i]) not in checked
        sums = _layer_sums(call, role, check) if call.inputs.shape[0] == rows else None
        if sums is None:
            continue
        square, grad = sums
        if grad is not None:
            if (grad - grads[i]).abs().max() > 1e-4 * grads[i].abs().max() + 1e-30:
                continue
            checked.add(id(params[i]))
        squares[i] = square
    missing = [i for i, s in enumerate(squares) if s is None and params[i].requires_grad]
    if missing:
        eye = torch.eye(rows, dtype=losses.dtype, device=losses.device)
        per_example = torch.autograd.grad(
            losses, [params[i] for i in missing], eye, is_grads_batched=True, allow_unused=True
        )
        for i, g in zip(missing, per_example, strict=True):
            squares[i] = None if g is None else (g * g).mean(0)
    filled = [torch.zeros_like(p) if s is None else s for p, s in zip(params, squares, strict=True)]
    return losses.detach().mean(), grads, filled
