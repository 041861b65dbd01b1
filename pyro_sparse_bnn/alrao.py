"""Alrao: all learning rates at once (Blier, Wolinski & Ollivier, "Learning with Random Learning
Rates", 2019).

* Every neuron (output unit or channel) of the internal layers gets its own learning rate, drawn
  once, log-uniformly in ``(eta_min, eta_max)``; all its incoming parameters use it
  (:class:`Alrao`, a wrapper around any optimiser whose step is proportional to its ``lr``).
* The output layer becomes ``n_copies`` independent copies, copy ``j`` with the learning rate
  ``eta_min (eta_max / eta_min)^((j - 1) / (n_copies - 1))`` (log-evenly spread), and the network
  predicts with the mixture ``sum_j a_j p_j(y | x)`` (:class:`AlraoOutput`). Each copy learns from
  its own loss; the internal layers learn from the mixture's loss.
* The mixture weights ``a_j`` (``sum_j a_j = 1``) are the posterior over copies of switch Bayesian
  model averaging (:class:`SwitchAveraging`), updated after each minibatch with each copy's
  log-likelihood on it.

Alrao is an optimiser, not an inference method: :func:`fit_alrao` returns an :class:`AlraoFit`
(a trained network with ``predict``/``evaluate``), not a ``FitResult``. With
``eta_min == eta_max`` and one copy it is plain training with the base optimiser at that rate,
which the Alrao-vs-grid benchmark uses for its baselines.

>>> import pyro_sparse_bnn as psb
>>> X, y = psb.datasets.load("iris")
>>> fit = fit_alrao(psb.mlp([4, 16, 3]), X, y, eta_min=1e-3, eta_max=1.0, epochs=20, progress=False)
>>> round(float(fit.network.output.switch.weights.sum()), 6)
1.0
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .infer.loop import LoopOptions
from .isolation import check_seed, isolated
from .validation import check_number, check_positive, check_positive_int, check_xy

__all__ = [
    "Alrao",
    "AlraoFit",
    "AlraoLoss",
    "AlraoNetwork",
    "AlraoOutput",
    "SwitchAveraging",
    "fit_alrao",
    "log_spaced",
    "log_uniform",
]

BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}


def _check_range(eta_min: float, eta_max: float) -> tuple[float, float]:
    eta_min, eta_max = check_positive(eta_min, "eta_min"), check_positive(eta_max, "eta_max")
    if eta_min > eta_max:
        raise ValueError(f"eta_min ({eta_min}) must not exceed eta_max ({eta_max})")
    return float(eta_min), float(eta_max)


def log_uniform(
    shape: tuple[int, ...],
    eta_min: float,
    eta_max: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draws with ``log(eta)`` uniform on ``[log eta_min, log eta_max]``.

    >>> eta = log_uniform((1000,), 1e-5, 10.0, generator=torch.Generator().manual_seed(0))
    >>> bool(eta.min() >= 1e-5 and eta.max() <= 10.0)
    True
    """
    lo, hi = (math.log(v) for v in _check_range(eta_min, eta_max))
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return (lo + (hi - lo) * u).exp()


def log_spaced(n: int, eta_min: float, eta_max: float) -> Tensor:
    """``n`` rates evenly spread in log scale from ``eta_min`` to ``eta_max`` (their geometric mean
    for ``n = 1``).

    >>> [f"{eta:.3g}" for eta in log_spaced(3, 1e-4, 1.0)]
    ['0.0001', '0.01', '1']
    """
    n = check_positive_int(n, "n")
    lo, hi = (math.log(v) for v in _check_range(eta_min, eta_max))
    if n == 1:
        return torch.tensor([math.exp((lo + hi) / 2)], dtype=torch.float64)
    return torch.linspace(lo, hi, n, dtype=torch.float64).exp()


class SwitchAveraging(nn.Module):
    """Posterior over ``n_models`` predictors under a switch prior (van Erven et al.).

    The hidden state is the model in use and whether switching has stopped for good: with prior
    probability ``freeze_prob`` it never switches (plain Bayesian model averaging), otherwise
    after update ``t`` it switches, with probability ``1 / (t + 1)``, to a model drawn uniformly.
    Each :meth:`update` multiplies the state weights by the models' likelihoods of the new data,
    normalises, then applies the switch. :attr:`weights` (summing to 1) is the posterior over the
    model in use, i.e. the mixture weights for the next prediction.

    >>> switch = SwitchAveraging(3, freeze_prob=1.0)  # no switching: Bayes' rule
    >>> switch.update(torch.tensor([0.0, -1.0, -2.0]))
    >>> [round(a, 4) for a in switch.weights.tolist()]
    [0.6652, 0.2447, 0.09]
    """

    def __init__(self, n_models: int, *, freeze_prob: float = 0.5) -> None:
        super().__init__()
        n_models = check_positive_int(n_models, "n_models")
        freeze_prob = check_number(freeze_prob, "freeze_prob", low=0, high=1)
        prior = torch.tensor([1.0 - freeze_prob, freeze_prob], dtype=torch.float64)
        log_w = (prior.log() - math.log(n_models))[:, None].repeat(1, n_models)
        self.register_buffer("log_state", log_w)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def weights(self) -> Tensor:
        """Posterior probability of each model (sums to 1)."""
        return self.log_state.logsumexp(dim=0).exp()

    def update(self, log_likelihoods: Tensor) -> None:
        """Condition on new data: ``log_likelihoods[j] = log p_j(batch)`` (non-finite counts as
        ``-inf``, a model that cannot explain the data)."""
        ll = torch.as_tensor(log_likelihoods, dtype=torch.float64, device=self.log_state.device)
        if ll.shape != self.log_state.shape[1:]:
            raise ValueError(
                f"log_likelihoods must have shape ({self.log_state.shape[1]},), "
                f"got {tuple(ll.shape)}"
            )
        ll = torch.where(torch.isfinite(ll), ll, -math.inf)
        if not torch.isfinite(ll).any():
            return  # no model explains the batch: nothing to learn from it
        with torch.no_grad():
            log_w = self.log_state + (ll - ll.max())  # only differences matter; keeps precision
            log_w = log_w - log_w.logsumexp(dim=(0, 1))
            self.steps += 1
            rate = 1.0 / (self.steps.item() + 1.0)
            switching = log_w[0]
            jump = switching.logsumexp(dim=0) - math.log(switching.numel())
            log_w[0] = torch.logaddexp(switching + math.log1p(-rate), jump + math.log(rate))
            self.log_state.copy_(log_w)


def _fresh_copy(layer: nn.Module) -> nn.Module:
    """A deep copy of ``layer`` with freshly initialised (non-tied) parameters."""
    out = copy.deepcopy(layer)
    for m in out.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return out


class AlraoLoss(NamedTuple):
    """What one Alrao minibatch step needs: the loss to differentiate, the mixture's mean NLL
    (what the network's predictions score) and each copy's summed log-likelihood (for the
    switch)."""

    loss: Tensor
    mixture_nll: Tensor
    copy_log_lik: Tensor


class AlraoOutput(nn.Module):
    """``n_copies`` independent copies of a classifier layer mixed by :class:`SwitchAveraging`.

    ``forward(z)`` returns the mixture's log-probabilities ``log sum_j a_j softmax(C_j(z))``.

    >>> out = AlraoOutput(nn.Linear(5, 3), n_copies=4)
    >>> out(torch.randn(2, 5)).exp().sum(-1).tolist()  # a distribution per row
    [1.0, 1.0]
    """

    def __init__(self, layer: nn.Module, n_copies: int = 10, *, freeze_prob: float = 0.5) -> None:
        super().__init__()
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
        n_copies = check_positive_int(n_copies, "n_copies")
        self.copies = nn.ModuleList(_fresh_copy(layer) for _ in range(n_copies))
        self.switch = SwitchAveraging(n_copies, freeze_prob=freeze_prob)

    def copy_log_probs(self, z: Tensor, *, detach_params: bool = False) -> Tensor:
        """Each copy's log-probabilities, ``(n_copies, n, classes)``.

        A copy whose logits are not all finite (a diverged copy) gets ``-inf`` everywhere, with no
        gradient, so it cannot poison the features or the mixture.
        """
        outs = []
        for layer in self.copies:
            if detach_params:
                params = {k: v.detach() for k, v in layer.named_parameters()}
                logits = torch.func.functional_call(layer, params, (z,))
            else:
                logits = layer(z)
            if torch.isfinite(logits).all():
                outs.append(torch.log_softmax(logits, dim=-1))
            else:
                outs.append(torch.full_like(logits, -math.inf).detach())
        return torch.stack(outs)

    def _mix(self, logp: Tensor) -> Tensor:
        log_a = self.switch.weights.log().to(logp.dtype)
        return (logp + log_a[:, None, None]).logsumexp(dim=0)

    def forward(self, z: Tensor) -> Tensor:
        return self._mix(self.copy_log_probs(z))

    def losses(self, z: Tensor, y: Tensor) -> AlraoLoss:
        """The mixture's mean NLL, whose gradient reaches the features ``z`` but not the copies,
        plus each copy's own mean NLL, whose gradient reaches that copy only."""
        labels = y.long()
        mixture_nll = (
            -self._mix(self.copy_log_probs(z, detach_params=True))
            .gather(-1, labels[:, None])
            .mean()
        )
        index = labels[None, :, None].expand(len(self.copies), -1, 1)
        own = self.copy_log_probs(z.detach()).gather(-1, index).squeeze(-1)
        healthy = torch.isfinite(own).all(dim=1)
        loss = mixture_nll - own[healthy].mean(dim=1).sum()
        return AlraoLoss(loss, mixture_nll.detach(), own.detach().sum(dim=1))


class AlraoNetwork(nn.Module):
    """A classifier ``nn.Sequential`` whose last layer is replaced by an :class:`AlraoOutput`.

    ``forward(x)`` returns the mixture's log-probabilities.

    >>> from pyro_sparse_bnn import mlp
    >>> AlraoNetwork(mlp([4, 8, 3]), n_copies=5).output.switch.weights.shape
    torch.Size([5])
    """

    def __init__(self, net: nn.Sequential, n_copies: int = 10, *, freeze_prob: float = 0.5):
        super().__init__()
        if not isinstance(net, nn.Sequential) or len(net) < 1:
            raise TypeError(f"net must be a non-empty nn.Sequential, got {type(net).__name__}")
        if not isinstance(net[-1], nn.Linear):
            raise ValueError(
                f"net must end in an nn.Linear classifier, got {type(net[-1]).__name__}"
            )
        self.features = copy.deepcopy(net[:-1])
        self.output = AlraoOutput(net[-1], n_copies, freeze_prob=freeze_prob)

    @property
    def classes(self) -> int:
        return self.output.copies[0].out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.features(x))

    def loss(self, x: Tensor, y: Tensor) -> AlraoLoss:
        """See :meth:`AlraoOutput.losses`."""
        return self.output.losses(self.features(x), y)


def _neuron_rates(
    params: list[nn.Parameter], eta: tuple[float, float], gen: torch.Generator
) -> list[Tensor]:
    """One log-uniform rate per output neuron (dim 0), shared by a module's parameters (a weight
    row and its bias entry), shaped to broadcast against each parameter."""
    drawn: dict[int, Tensor] = {}
    rates = []
    for p in params:
        size = p.shape[0] if p.dim() else 1
        if size not in drawn:
            drawn[size] = log_uniform((size,), *eta, generator=gen)
        rates.append(drawn[size].reshape(p.shape[:1] + (1,) * (p.dim() - 1)))
    return rates


class Alrao:
    """Per-neuron random learning rates around a base optimiser.

    Every parameter of ``model`` gets a learning-rate tensor: the copies of an
    :class:`AlraoOutput` their log-spaced rates (:func:`log_spaced`), every other module one rate
    per output neuron (dim 0 of its parameters; a layer's weight row and bias entry share it),
    drawn with :func:`log_uniform`. :meth:`step` runs the base optimiser at ``lr=1`` and scales
    each parameter's change by its rate, which is exact for optimisers whose step is proportional
    to ``lr`` (SGD with or without momentum, Adam, RMSprop, Adagrad).

    >>> net = AlraoNetwork(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), n_copies=3)
    >>> opt = Alrao(net, 1e-3, 1e-1, seed=0)
    >>> opt.learning_rates["features.0.weight"].shape, opt.learning_rates["output.copies.2.bias"]
    (torch.Size([4, 1]), tensor([0.1000]))
    """

    def __init__(
        self,
        model: nn.Module,
        eta_min: float,
        eta_max: float,
        *,
        base: str | type[torch.optim.Optimizer] = "sgd",
        seed: int = 0,
        **base_options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        eta = _check_range(eta_min, eta_max)
        if isinstance(base, str):
            if base not in BASE_OPTIMIZERS:
                raise ValueError(
                    f"base must be one of {sorted(BASE_OPTIMIZERS)} or an optimiser class"
                )
            base = BASE_OPTIMIZERS[base]
        if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
            raise TypeError(
                f"base must be a name or a torch.optim.Optimizer subclass, got {base!r}"
            )
        gen = torch.Generator().manual_seed(seed)
        rates: dict[str, Tensor] = {}
        copy_params: set[int] = set()
        for prefix, module in model.named_modules():
            if isinstance(module, AlraoOutput):
                spread = log_spaced(len(module.copies), *eta)
                for j, layer in enumerate(module.copies):
                    for name, p in layer.named_parameters():
                        path = ".".join(s for s in (prefix, "copies", str(j), name) if s)
                        rates[path] = spread[j : j + 1].reshape((1,) * p.dim())
                        copy_params.add(id(p))
        for prefix, module in model.named_modules():
            own = [
                (n, p)
                for n, p in module.named_parameters(recurse=False)
                if id(p) not in copy_params
            ]
            drawn = _neuron_rates([p for _, p in own], eta, gen)
            for (name, _), rate in zip(own, drawn, strict=True):
                rates[f"{prefix}.{name}" if prefix else name] = rate
        named = dict(model.named_parameters())
        self._params = [named[k] for k in rates]
        self.learning_rates = {
            k: r.to(device=named[k].device, dtype=named[k].dtype) for k, r in rates.items()
        }
        self.base = base(self._params, lr=1.0, **base_options)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimiser's state (the learning rates follow from the seed)."""
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)

    def step(self) -> None:
        """One base step at ``lr=1``, each parameter's change scaled by its learning rate."""
        with torch.no_grad():
            before = [p.detach().clone() for p in self._params]
        self.base.step()
        with torch.no_grad():
            for p, old, rate in zip(
                self._params, before, self.learning_rates.values(), strict=True
            ):
                p.copy_(old.add_(rate * (p - old)))


@dataclass
class AlraoFit:
    """A network trained by :func:`fit_alrao`, with its training record."""

    network: AlraoNetwork
    optimizer: Alrao
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    diverged: bool = False

    def predict(self, x: Tensor) -> Tensor:
        """Class probabilities of the switch mixture, ``(n, classes)``."""
        x, _ = check_xy(x)
        with torch.no_grad():
            return torch.nan_to_num(self.network(x).exp(), nan=0.0)

    def evaluate(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """``accuracy`` and ``nll`` (mean negative log-probability of the labels)."""
        x, y = check_xy(x, y)
        with torch.no_grad():
            logp = self.network(x)
        accuracy = float((torch.nan_to_num(logp, nan=-math.inf).argmax(-1) == y).float().mean())
        return {"accuracy": accuracy, "nll": float(-logp.gather(-1, y.long()[:, None]).mean())}


@isolated
def fit_alrao(
    net: nn.Sequential,
    X: Tensor,
    y: Tensor,
    *,
    eta_min: float = 1e-5,
    eta_max: float = 10.0,
    n_copies: int = 10,
    base: str | type[torch.optim.Optimizer] = "sgd",
    freeze_prob: float = 0.5,
    epochs: int = 50,
    batch_size: int | None = 32,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: str | os.PathLike | None = None,
    **base_options: Any,
) -> AlraoFit:
    """Train a classifier with Alrao on integer labels ``y`` (minibatches, reshuffled each epoch).

    ``net`` (copied) must be an ``nn.Sequential`` ending in the ``nn.Linear`` classifier. The
    history holds the mean mixture NLL per epoch; training stops with ``diverged=True`` when it
    becomes non-finite. ``progress``, ``callback``, ``checkpoint``, ``checkpoint_every`` and
    ``resume`` are the training loop's (:class:`~pyro_sparse_bnn.infer.loop.LoopOptions`).
    """
    x, y = check_xy(X, y)
    if y is None or y.dtype.is_floating_point or y.dim() != 1:
        raise TypeError("y must be a 1-D tensor of integer class labels")
    loop = LoopOptions(
        epochs,
        progress,
        callback,
        checkpoint,
        checkpoint_every,
        resume,
        desc="alrao",
        stop_when_nonfinite=True,
    )
    n = x.shape[0]
    size = n if batch_size is None else min(check_positive_int(batch_size, "batch_size"), n)
    torch.manual_seed(check_seed(seed))
    network = AlraoNetwork(net, n_copies, freeze_prob=freeze_prob).to(
        device=x.device, dtype=x.dtype
    )
    if y.numel() and (y.min() < 0 or y.max() >= network.classes):
        raise ValueError(f"y labels must lie in [0, {network.classes})")
    optimizer = Alrao(network, eta_min, eta_max, base=base, seed=seed, **base_options)
    order = torch.Generator().manual_seed(seed)

    def epoch(e: int) -> float:
        total = 0.0
        for idx in torch.randperm(n, generator=order).to(x.device).split(size):
            step = network.loss(x[idx], y[idx])
            if not torch.isfinite(step.mixture_nll):
                return math.inf
            optimizer.zero_grad()
            step.loss.backward()
            optimizer.step()
            network.output.switch.update(step.copy_log_lik)
            total += step.mixture_nll.item() * len(idx) / n
        return total

    network.train()
    parts = {"network": network, "optimizer": optimizer}
    run = loop.run(epoch, parts=parts, generators={"order": order})
    network.eval()
    return AlraoFit(network, optimizer, run["history"], run["seconds"], run["diverged"])
