"""LSTM and GRU layers with one weight matrix per layer, so priors see neurons and gates.

``nn.LSTM`` keeps two weights per layer, ``weight_ih`` (gates x inputs) and ``weight_hh`` (gates x
hidden). :class:`FusedLSTM` and :class:`FusedGRU` hold them side by side as one ``weight`` of
shape ``(gates * hidden, input + hidden)``: a row is one gate of one neuron (a gate
preactivation), a column one input feature or one hidden neuron. A prior with ``groups="out"``
therefore puts one variable on each gate preactivation and ``groups="in"`` one on each input and
each hidden neuron, the group variables of Lobacheva, Chirkova & Vetrov (2018).
:class:`~pyro_sparse_bnn.SparseBNN` converts every ``nn.LSTM``/``nn.GRU`` of a network into
these (:func:`fuse_recurrent`); :meth:`FusedLSTM.to_torch` converts back, exactly.

The recurrence is an explicit loop over time steps: the weight drawn for a forward pass is used at
every step of every sequence in it (never redrawn per step), and the loop runs under
``torch.func.vmap`` over posterior draws. :class:`RecurrentOutput` takes the output sequence (or its
last step) from a layer's ``(output, state)`` so recurrent nets can be ``nn.Sequential``.

>>> import torch
>>> from torch import nn
>>> lstm = nn.LSTM(3, 4, batch_first=True)
>>> fused = FusedLSTM.from_torch(lstm)
>>> fused.weight.shape
torch.Size([16, 7])
>>> x = torch.randn(2, 5, 3)
>>> bool(torch.allclose(fused(x)[0], lstm(x)[0], atol=1e-6))
True
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["FusedGRU", "FusedLSTM", "RecurrentOutput", "fuse_recurrent"]


class _Fused(nn.Module):
    """One recurrent layer with ``weight = [weight_ih | weight_hh]`` and one summed bias."""

    gates = 0
    torch_type: type[nn.RNNBase] = nn.RNNBase

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 batch_first: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.batch_first = batch_first
        rows = self.gates * hidden_size
        self.weight = nn.Parameter(torch.zeros(rows, input_size + hidden_size))
        self.bias = nn.Parameter(torch.zeros(rows)) if bias else None

    @classmethod
    def from_torch(cls, module: nn.RNNBase) -> _Fused:
        """The fused copy of a one-layer, one-direction ``nn.LSTM``/``nn.GRU`` (same function)."""
        if type(module) is not cls.torch_type:
            raise TypeError(f"module must be an {cls.torch_type.__name__}, got {module!r}")
        unsupported = {
            "num_layers": module.num_layers != 1,
            "bidirectional": module.bidirectional,
            "proj_size": getattr(module, "proj_size", 0) != 0,
            "dropout": module.dropout != 0,
        }
        found = [k for k, bad in unsupported.items() if bad]
        if found:
            raise ValueError(
                f"{module!r}: sparse recurrent layers are one-layer and one-direction, without "
                f"projection or dropout (unsupported: {', '.join(found)}); stack one-layer "
                "layers with RecurrentOutput between them instead"
            )
        out = cls(module.input_size, module.hidden_size, bias=module.bias,
                  batch_first=module.batch_first)  # fmt: skip
        w_ih, w_hh = module.weight_ih_l0, module.weight_hh_l0
        out = out.to(device=w_ih.device, dtype=w_ih.dtype)
        with torch.no_grad():
            out.weight.copy_(torch.cat([w_ih, w_hh], 1))
            if module.bias:
                out._load_biases(module.bias_ih_l0, module.bias_hh_l0)
        return out

    def _load_biases(self, b_ih: Tensor, b_hh: Tensor) -> None:
        self.bias.copy_(b_ih + b_hh)

    def _torch_biases(self) -> tuple[Tensor, Tensor]:
        return self.bias, torch.zeros_like(self.bias)

    def to_torch(self) -> nn.RNNBase:
        """The plain ``nn.LSTM``/``nn.GRU`` computing the same function."""
        w = self.weight.detach()
        out = self.torch_type(self.input_size, self.hidden_size, bias=self.bias is not None,
                              batch_first=self.batch_first)  # fmt: skip
        out = out.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight_ih_l0.copy_(w[:, : self.input_size])
            out.weight_hh_l0.copy_(w[:, self.input_size :])
            if self.bias is not None:
                b_ih, b_hh = self._torch_biases()
                out.bias_ih_l0.copy_(b_ih)
                out.bias_hh_l0.copy_(b_hh)
        return out

    def _sequence(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Time-major inputs ``(T, batch, input)`` and their input parts of the gates."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            order = "(batch, time, input)" if self.batch_first else "(time, batch, input)"
            raise ValueError(f"input must have shape {order} with input = {self.input_size}, "
                             f"got {tuple(x.shape)}")  # fmt: skip
        x = x.transpose(0, 1) if self.batch_first else x
        pre = x @ self.weight[:, : self.input_size].T
        return x, pre if self.bias is None else pre + self.bias

    def _output(self, steps: list[Tensor]) -> Tensor:
        return torch.stack(steps, 1 if self.batch_first else 0)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, bias={self.bias is not None}, "
                f"batch_first={self.batch_first}")  # fmt: skip


class FusedLSTM(_Fused):
    """An ``nn.LSTM`` (one layer) with gates ``[i, f, g, o]`` and ``weight = [W_ih | W_hh]``.

    Returns ``(output, (h_n, c_n))`` as ``nn.LSTM`` does; ``hx`` is the initial ``(h_0, c_0)``.
    """

    gates = 4
    torch_type = nn.LSTM

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple:
        x, pre = self._sequence(x)
        w_hh = self.weight[:, self.input_size :]
        if hx is None:
            h = c = x.new_zeros(x.shape[1], self.hidden_size)
        else:
            h, c = hx[0][0], hx[1][0]
        steps = []
        for t in range(x.shape[0]):
            i, f, g, o = (pre[t] + h @ w_hh.T).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            steps.append(h)
        return self._output(steps), (h.unsqueeze(0), c.unsqueeze(0))


class FusedGRU(_Fused):
    """An ``nn.GRU`` (one layer) with gates ``[r, z, n]`` and ``weight = [W_ih | W_hh]``.

    ``bias`` sums both biases of the ``r`` and ``z`` rows; the candidate's hidden bias ``b_hn``
    sits inside the reset product, so it stays apart as ``bias_hn`` (a point estimate).
    Returns ``(output, h_n)`` as ``nn.GRU`` does.
    """

    gates = 3
    torch_type = nn.GRU

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True,
                 batch_first: bool = True) -> None:  # fmt: skip
        super().__init__(input_size, hidden_size, bias=bias, batch_first=batch_first)
        self.bias_hn = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def _load_biases(self, b_ih: Tensor, b_hh: Tensor) -> None:
        n = self.hidden_size
        self.bias.copy_(torch.cat([b_ih[: 2 * n] + b_hh[: 2 * n], b_ih[2 * n :]]))
        self.bias_hn.copy_(b_hh[2 * n :])

    def _torch_biases(self) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros_like(self.bias[: 2 * self.hidden_size])
        return self.bias, torch.cat([zeros, self.bias_hn])

    def forward(self, x: Tensor, hx: Tensor | None = None) -> tuple:
        x, pre = self._sequence(x)
        w_hh = self.weight[:, self.input_size :]
        h = x.new_zeros(x.shape[1], self.hidden_size) if hx is None else hx[0]
        steps = []
        for t in range(x.shape[0]):
            pre_r, pre_z, pre_n = pre[t].chunk(3, -1)
            hid_r, hid_z, hid_n = (h @ w_hh.T).chunk(3, -1)
            if self.bias_hn is not None:
                hid_n = hid_n + self.bias_hn
            r, z = torch.sigmoid(pre_r + hid_r), torch.sigmoid(pre_z + hid_z)
            h = (1 - z) * torch.tanh(pre_n + r * hid_n) + z * h
            steps.append(h)
        return self._output(steps), h.unsqueeze(0)


FUSED = {nn.LSTM: FusedLSTM, nn.GRU: FusedGRU}


class RecurrentOutput(nn.Module):
    """The output sequence of a recurrent layer's ``(output, state)``, or only its last step.

    >>> net = nn.Sequential(nn.GRU(3, 4, batch_first=True), RecurrentOutput(last_step=True),
    ...                     nn.Linear(4, 2))
    >>> tuple(net(torch.randn(5, 7, 3)).shape)
    (5, 2)
    """

    def __init__(self, last_step: bool = False, *, batch_first: bool = True) -> None:
        super().__init__()
        for value, name in ((last_step, "last_step"), (batch_first, "batch_first")):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        self.last_step = last_step
        self.batch_first = batch_first

    def forward(self, out: tuple | Tensor) -> Tensor:
        seq = out[0] if isinstance(out, tuple) else out
        if not self.last_step:
            return seq
        return seq[:, -1] if self.batch_first else seq[-1]

    def extra_repr(self) -> str:
        return f"last_step={self.last_step}, batch_first={self.batch_first}"


def fuse_recurrent(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every ``nn.LSTM``/``nn.GRU`` replaced by its fused layer.

    >>> fuse_recurrent(nn.Sequential(nn.LSTM(2, 3), RecurrentOutput()))[0]
    FusedLSTM(2, 3, bias=True, batch_first=False)
    """
    if type(net) in FUSED:
        return FUSED[type(net)].from_torch(net)
    out = copy.deepcopy(net)
    for name, module in list(out.named_modules()):
        if type(module) in FUSED:
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent), child, FUSED[type(module)].from_torch(module))
    return out
