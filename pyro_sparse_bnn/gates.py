"""L0 regularisation with hard-concrete gates (Louizos, Welling & Kingma 2018).

:class:`L0Network` copies a plain network and gates it: one gate per *input feature* of every
``Linear`` layer (a gate at 0 removes an input neuron) and one per *output channel* of every
``Conv1d``/``Conv2d`` layer (a gate at 0 removes a feature map). Gates follow
:class:`~pyro_sparse_bnn.distributions.HardConcrete` with a learned ``log_alpha`` per gate:

* training (``net.train()``): a fresh gate per example and group (local noise, as in the paper's
  code), multiplying the layer's input (Linear) or its output before the bias (conv);
* evaluation (``net.eval()``): the deterministic gate
  ``clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)``.

The objective is ``mean NLL + penalty / N`` with :meth:`L0Network.penalty`
``= sum_g P(z_g != 0) (lambda + 0.5 wd ||w_g||^2) + 0.5 wd ||b||^2``; after every optimiser step
call :meth:`L0Network.clamp_` (``log_alpha`` to ``[log 0.01, log 100]``).

>>> import torch
>>> from torch import nn
>>> gated = L0Network(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), seed=0)
>>> gated.net[0]
GatedLayer(
  (layer): Linear(in_features=4, out_features=8, bias=True)
)
>>> round(float(gated.expected_l0()), 1)  # 4 input gates at P(z != 0) = 0.96, 8 at 0.83
10.5
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .distributions import HardConcrete
from .nn import BAYESIAN_LAYERS
from .validation import check_nonnegative, check_number

__all__ = ["LOG_ALPHA_RANGE", "GatedLayer", "L0Network"]

GATED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""Layers L0 gates cover (an attention layer reads its output projection's weight directly)."""
LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))
"""``log_alpha`` is clamped to this range after each step (Louizos et al.'s code)."""


class GatedLayer(nn.Module):
    """A ``Linear`` (gates on its input features) or conv layer (gates on its output channels).

    >>> layer = GatedLayer(nn.Linear(3, 2), torch.zeros(3)).eval()
    >>> layer.gate().deterministic_gate().tolist()
    [0.5, 0.5, 0.5]
    """

    def __init__(self, layer: nn.Module, log_alpha: Tensor) -> None:
        super().__init__()
        if not isinstance(layer, GATED_LAYERS):
            raise TypeError(f"layer must be Linear, Conv1d or Conv2d, got {type(layer).__name__}")
        self.layer = layer
        self.log_alpha = nn.Parameter(log_alpha)
        self.group_dim = 1 if isinstance(layer, nn.Linear) else 0

    def gate(self) -> HardConcrete:
        """The layer's gate distribution."""
        return HardConcrete(self.log_alpha)

    def _gates(self, batch: int) -> Tensor:
        gate = self.gate()
        return gate.rsample((batch,)) if self.training else gate.deterministic_gate()

    def forward(self, x: Tensor) -> Tensor:
        if self.group_dim == 1:  # one gate draw per example, shared by its positions (if any)
            z = self._gates(x.shape[0])
            if z.dim() == 2:
                z = z.reshape(z.shape[0], *(1,) * (x.dim() - 2), -1)
            return self.layer(x * z)
        out = self.layer(x)
        z = self._gates(out.shape[0])
        z = z.reshape(*z.shape, *(1,) * (out.dim() - 2))
        if self.layer.bias is None:
            return out * z
        bias = self.layer.bias.reshape(-1, *(1,) * (out.dim() - 2))
        return (out - bias) * z + bias

    def scaled_weight(self, z: Tensor) -> Tensor:
        """The layer's weight with gates ``z`` folded in."""
        shape = [1] * self.layer.weight.dim()
        shape[self.group_dim] = -1
        return self.layer.weight * z.reshape(shape)

    def group_norms(self) -> Tensor:
        """``||w_g||^2`` per gated group."""
        w = self.layer.weight
        return w.square().sum([d for d in range(w.dim()) if d != self.group_dim])


class L0Network(nn.Module):
    """A plain network with hard-concrete gates on its Linear inputs and conv output channels.

    Each gated layer of the copy is wrapped in a :class:`GatedLayer`; ``layer_names`` lists the
    original layer paths (weights keep their ``state_dict`` names ``"<layer>.weight"`` in
    :meth:`deterministic_weights`, :meth:`sample_weights` and :meth:`plain_network`).

    Args:
        net: the network (copied; the original is not changed).
        droprate_init: initial drop probability ``p`` of the gates (``log_alpha`` starts at
            ``log((1 - p) / p)`` plus ``N(0, 0.01^2)`` noise).
        input_droprate_init: the same for the first layer's gates.
        seed: seeds the ``log_alpha`` initialisation.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        droprate_init: float = 0.5,
        input_droprate_init: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        rates = (
            float(
                check_number(
                    input_droprate_init,
                    "input_droprate_init",
                    low=0,
                    high=1,
                    low_open=True,
                    high_open=True,
                )
            ),
            float(
                check_number(
                    droprate_init, "droprate_init", low=0, high=1, low_open=True, high_open=True
                )
            ),
        )
        self.net = copy.deepcopy(net)
        self.layer_names = [
            n for n, m in self.net.named_modules() if isinstance(m, BAYESIAN_LAYERS)
        ]
        if not self.layer_names:
            raise ValueError("net must contain at least one Linear or Conv layer")
        if "" in self.layer_names:
            raise ValueError("net must contain its layers (a bare Linear/Conv cannot be wrapped)")
        gated = {n: isinstance(self.net.get_submodule(n), GATED_LAYERS) for n in self.layer_names}
        others = [n for n, ok in gated.items() if not ok]
        if others:
            raise ValueError(f"L0 gates cover Linear, Conv1d and Conv2d layers; net also has "
                             f"{others} (use SparseVD or L1 for them)")  # fmt: skip
        gen = torch.Generator().manual_seed(seed)
        for i, name in enumerate(self.layer_names):
            layer = self.net.get_submodule(name)
            p = rates[0] if i == 0 else rates[1]
            size = layer.in_features if isinstance(layer, nn.Linear) else layer.out_channels
            init = math.log(1 - p) - math.log(p) + 0.01 * torch.randn(size, generator=gen)
            parent, _, child = name.rpartition(".")
            setattr(self.net.get_submodule(parent), child, GatedLayer(layer, init.to(layer.weight)))

    def gated(self, name: str) -> GatedLayer:
        """The :class:`GatedLayer` wrapping layer ``name``."""
        return self.net.get_submodule(name)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def prob_nonzero(self) -> dict[str, Tensor]:
        """``P(z != 0)`` per gate, keyed by layer name."""
        return {name: self.gated(name).gate().prob_nonzero() for name in self.layer_names}

    def expected_l0(self) -> Tensor:
        """Expected number of open gates (a differentiable scalar)."""
        return sum(p.sum() for p in self.prob_nonzero().values())

    def penalty(self, lambdas: float | Sequence[float] = 0.1, weight_decay: float = 5e-4) -> Tensor:
        """``sum_g P(z_g != 0) (lambda_l + 0.5 wd ||w_g||^2) + 0.5 wd ||b||^2`` over all layers.

        ``lambdas`` is one value or one per gated layer (Louizos et al.'s "L0-sep"). The bias term
        (not gated) follows the authors' code.
        """
        if isinstance(lambdas, int | float) and not isinstance(lambdas, bool):
            lambdas = [lambdas] * len(self.layer_names)
        lambdas = [float(check_nonnegative(v, "lambdas")) for v in lambdas]
        if len(lambdas) != len(self.layer_names):
            raise ValueError(
                f"lambdas must be one number or {len(self.layer_names)} (one per gated layer), "
                f"got {len(lambdas)}"
            )
        wd = float(check_nonnegative(weight_decay, "weight_decay"))
        total: Tensor | float = 0.0
        for name, lam in zip(self.layer_names, lambdas, strict=True):
            gated = self.gated(name)
            p = gated.gate().prob_nonzero()
            total = total + (p * (lam + 0.5 * wd * gated.group_norms())).sum()
            if gated.layer.bias is not None:
                total = total + 0.5 * wd * gated.layer.bias.square().sum()
        return torch.as_tensor(total)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp every ``log_alpha`` to :data:`LOG_ALPHA_RANGE` in place."""
        for name in self.layer_names:
            self.gated(name).log_alpha.clamp_(*LOG_ALPHA_RANGE)

    @torch.no_grad()
    def deterministic_weights(self) -> dict[str, Tensor]:
        """Effective weights ``w * z_test`` of the test-time network, keyed ``"<layer>.weight"``."""
        return {
            f"{n}.weight": self.gated(n).scaled_weight(self.gated(n).gate().deterministic_gate())
            for n in self.layer_names
        }

    @torch.no_grad()
    def sample_weights(self, num_samples: int) -> dict[str, Tensor]:
        """``num_samples`` draws of the effective weights ``w * z`` (one gate draw per draw)."""
        out = {}
        for n in self.layer_names:
            gated = self.gated(n)
            draws = [gated.scaled_weight(gated.gate().rsample()) for _ in range(num_samples)]
            out[f"{n}.weight"] = torch.stack(draws)
        return out

    @torch.no_grad()
    def plain_network(self) -> nn.Module:
        """The network without gates, test-time gates folded into the weights (same output as
        ``self.eval()(x)``)."""
        out = copy.deepcopy(self.net)
        for name in self.layer_names:
            gated = out.get_submodule(name)
            gated.layer.weight.copy_(gated.scaled_weight(gated.gate().deterministic_gate()))
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent), child, gated.layer)
        return out
