"""Tests for pyro_sparse_bnn.infer.vadam.per_example: closed-form per-example squared gradients
against torch.func.vmap(grad), the batched-backward fallback, and VOGN's two closure forms."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from pyro_sparse_bnn.infer.vadam import VOGN
from pyro_sparse_bnn.infer.vadam.per_example import moments, recorded_calls


def vmapped_squares(net: nn.Module, loss, *batch: Tensor) -> dict[str, Tensor]:
    """Mean squared per-example gradient of every parameter, one example at a time."""
    names = [n for n, _ in net.named_parameters()]

    def one(params: tuple[Tensor, ...], *example: Tensor) -> Tensor:
        out = functional_call(net, dict(zip(names, params, strict=True)), (example[0][None],))
        return loss(out, *(e[None] for e in example[1:])).sum()

    params = tuple(p.detach() for p in net.parameters())
    grads = vmap(grad(one), in_dims=(None, *(0,) * len(batch)))(params, *batch)
    return {n: (g * g).mean(0) for n, g in zip(names, grads, strict=True)}


def closed_form_squares(net: nn.Module, loss, *batch: Tensor, checked=None) -> dict[str, Tensor]:
    with recorded_calls() as calls:
        losses = loss(net(batch[0]), *batch[1:])
    params = list(net.parameters())
    _, _, squares = moments(losses, params, calls, checked=set() if checked is None else checked)
    return dict(zip([n for n, _ in net.named_parameters()], squares, strict=True))


def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.reshape(len(y), -1), y, reduction="none")


NETS = {
    "mlp": lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)),
    "conv2d": lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 2, dilation=2),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 3),
    ),
    "conv1d": lambda: nn.Sequential(
        nn.Conv1d(2, 3, 3, padding="valid"), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4, 3)
    ),
    "sequence_linear": lambda: nn.Sequential(
        nn.Linear(6, 4), nn.ReLU(), nn.Flatten(), nn.Linear(20, 3)
    ),
}
INPUTS = {"mlp": (6,), "conv2d": (2, 8, 8), "conv1d": (2, 6), "sequence_linear": (5, 6)}


@pytest.mark.parametrize("name", list(NETS))
def test_closed_form_equals_vmapped_per_example_gradients(name: str) -> None:
    """Linear on (M, in) and (M, T, in) inputs, strided/dilated/padded Conv2d and Conv1d: the
    closed form matches vmap(grad) to 1e-5 relative, for weights and biases."""
    torch.manual_seed(0)
    net = NETS[name]()
    x, y = torch.randn(7, *INPUTS[name]), torch.randint(0, 3, (7,))
    expected = vmapped_squares(net, cross_entropy, x, y)
    got = closed_form_squares(net, cross_entropy, x, y)
    for key, value in expected.items():
        assert torch.allclose(got[key], value, rtol=1e-5, atol=1e-9), key


def test_a_shared_weight_and_an_extra_use_fall_back_to_the_batched_backward() -> None:
    """A layer called twice and a weight also used outside its layer have no closed form: the
    batched backward pass still gives the exact squares (and the verification catches the
    second case, whose single recorded call alone would give a wrong answer)."""
    torch.manual_seed(0)
    layer, head = nn.Linear(4, 4), nn.Linear(4, 2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer, self.head = layer, head

        def forward(self, x: Tensor) -> Tensor:
            hidden = torch.tanh(self.layer(torch.tanh(self.layer(x))))
            out = self.head(hidden)  # the head's weight is used once more, on the first logit:
            return torch.cat([out[:, :1] + x[:, :2] @ self.head.weight[:, :1], out[:, 1:]], 1)

    net = Net()
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    expected = vmapped_squares(net, cross_entropy, x, y)
    checked: set[int] = set()
    got = closed_form_squares(net, cross_entropy, x, y, checked=checked)
    for key, value in expected.items():
        assert torch.allclose(got[key], value, rtol=1e-5, atol=1e-9), key
    assert id(head.weight) not in checked and id(head.bias) in checked


def test_vogn_closure_forms_take_the_same_step() -> None:
    """``step(closure)`` returning per-example NLLs and ``step(closure, batch)`` over one example
    give the same update from the same weight noise."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    base = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    names = [n for n, _ in base.named_parameters()]
    finals = []
    for form in ("closed", "vmapped"):
        net = copy.deepcopy(base)
        params = list(net.parameters())
        opt = VOGN(params, num_data=160, lr=0.01, generator=torch.Generator().manual_seed(1))

        def batched(net: nn.Module = net) -> Tensor:
            return nn.functional.cross_entropy(net(x), y, reduction="none")

        def one(ps: tuple[Tensor, ...], xi: Tensor, yi: Tensor, net: nn.Module = net) -> Tensor:
            out = functional_call(net, dict(zip(names, ps, strict=True)), (xi[None],))
            return nn.functional.cross_entropy(out, yi[None])

        for _ in range(3):
            if form == "closed":
                opt.step(batched)
            else:
                opt.step(one, (x, y))
        finals.append([p.detach().clone() for p in params])
    for a, b in zip(*finals, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_closure_form_errors() -> None:
    w = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="per-example NLLs"):
        VOGN([w], num_data=10).step(lambda: (w * torch.ones(2)).sum())
    with pytest.raises(ValueError, match="batch"):
        VOGN([w], num_data=10).step(lambda p, x: (p[0] * x).sum())
