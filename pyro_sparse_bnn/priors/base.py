"""The scale-mixture template every prior builds on: ``w | s ~ Normal(0, s)``, centred, not
centred, or centred in a learned proportion per weight."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from torch import Tensor, nn

from ..validation import check_positive

__all__ = ["WEIGHT_TAG", "Centring", "Groups", "Prior", "set_centring", "weight_deterministic"]

Groups = Literal["in", "out"] | tuple[Literal["in", "out"], int] | None
"""One mixing variable per weight (``None``), per input or output unit (``"in"``/``"out"``), or
per block of ``k`` consecutive units (``("in", k)``: e.g. the columns of one attention head in
an output projection)."""
Centring = bool | Literal["learned"]

WEIGHT_TAG = "psb_weight"
"""Key in a site's ``infer`` dict that marks it as a prunable weight for masks and compression."""


def weight_deterministic(name: str, value: Tensor, event_dim: int) -> Tensor:
    """``pyro.deterministic`` for a weight, tagged with :data:`WEIGHT_TAG`."""
    delta = dist.Delta(value, event_dim=event_dim).mask(False)
    return pyro.sample(name, delta, obs=value, infer={"_deterministic": True, WEIGHT_TAG: True})


def _check_groups(groups: object) -> Groups:
    """``groups`` if it is ``None``, ``"in"``, ``"out"`` or ``(side, k)`` with ``k >= 1``."""
    if groups in (None, "in", "out"):
        return groups
    if (
        isinstance(groups, tuple)
        and len(groups) == 2
        and groups[0] in ("in", "out")
        and isinstance(groups[1], int)
        and not isinstance(groups[1], bool)
        and groups[1] >= 1
    ):
        return groups
    raise ValueError(f"groups must be None, 'in', 'out' or ('in' | 'out', block size), "
                     f"got {groups!r}")  # fmt: skip


def _positive(name: str, value: float) -> float:
    return float(check_positive(value, name))


def _right_pad(t: Tensor, ndim: int) -> Tensor:
    """Append ``ndim`` singleton dims so a per-draw scalar broadcasts against an event tensor."""
    return t.reshape(t.shape + (1,) * ndim)


class Prior(nn.Module):
    """Base class: a Gaussian scale mixture ``w | s ~ Normal(0, s)``.

    Subclasses implement :meth:`mixing_scale`, which emits the hierarchical sites and returns the
    standard deviation ``s`` (the group shape, plus any batch dims from enclosing plates).
    Hyperparameters are buffers, so ``prior.to(device)`` moves them.

    ``centered`` chooses how the weight is drawn, never its distribution: ``True`` samples
    ``w ~ N(0, s)``; ``False`` samples ``z ~ N(0, 1)`` and sets ``w = s z``; ``"learned"`` (the
    variationally inferred parameterisation of Gorinova, Moore & Hoffman 2020) samples
    ``z ~ N(0, s^c)`` and sets ``w = s^(1-c) z`` with one ``c`` in (0, 1) per weight, an
    ``nn.Parameter`` that SVI optimises with the guide (any ``c`` leaves the model's
    distribution unchanged, so the ELBO stays a bound on the same evidence). Strongly
    identified weights then move towards centred, weakly identified ones towards non-centred,
    each where mean-field SVI fits it best.
    """

    learns_centring = True
    """Whether ``centered="learned"`` applies (a latent mixing scale and this class's sampler)."""
    can_tie = True
    """Whether layers can share this prior's group variables (``SparseBNN(..., ties=...)``):
    its latent group sites go through :meth:`_group_site`."""

    def __init__(self, *, groups: Groups = None, centered: Centring = False) -> None:
        super().__init__()
        self.groups = _check_groups(groups)
        self.centered = self._check_centring(centered)
        self.tied: dict[str, str] = {}
        """Weight site -> name of the group variables it shares with other weights (set by
        ``SparseBNN(..., ties=...)`` on its own copy of the prior)."""
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def _check_centring(self, centered: Centring) -> Centring:
        if not isinstance(centered, bool | str):
            raise TypeError(f"centered must be True, False or 'learned', got {centered!r}")
        if isinstance(centered, str) and centered != "learned":
            raise ValueError(f"centered must be True, False or 'learned', got {centered!r}")
        if centered == "learned" and not self.learns_centring:
            raise ValueError(f"{type(self).__name__} has no latent scale to learn a centring for")
        return centered

    def centring_of(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """The learned centring ``c`` in (0, 1) of each weight of site ``name`` (a parameter made
        at ``c = 1/2`` on first use, on the prior's device and dtype)."""
        key = name.replace(".", "__")
        if "centring" not in self._modules:
            self.centring = nn.ParameterDict()  # logit c per weight site
        if key not in self.centring:
            zeros = torch.zeros(shape, dtype=self._zero.dtype, device=self._zero.device)
            self.centring[key] = nn.Parameter(zeros)
        return torch.sigmoid(self.centring[key])

    def _group_axis(self) -> tuple[int, int]:
        """The weight dim that holds the groups' units, and how many units a group has."""
        side, block = self.groups if isinstance(self.groups, tuple) else (self.groups, 1)
        return (1 if side == "in" else 0), block

    def group_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the mixing variables for a weight of ``shape`` (broadcastable to it, after
        :meth:`weight_scale` repeats a block group over its units).

        >>> Prior(groups=("in", 4)).group_shape((3, 8))
        (1, 2)
        """
        if self.groups is None or len(shape) < 2:
            return shape
        dim, block = self._group_axis()
        if shape[dim] % block:
            raise ValueError(f"groups {self.groups!r}: blocks of {block} must divide the "
                             f"{shape[dim]} units of a weight of shape {shape}")  # fmt: skip
        return tuple(n // block if i == dim else 1 for i, n in enumerate(shape))

    def weight_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """:meth:`mixing_scale`, each block group's value repeated over its units."""
        scale = self.mixing_scale(name, shape)
        if not isinstance(self.groups, tuple) or len(shape) < 2:
            return scale
        dim, block = self._group_axis()
        return scale.repeat_interleave(block, dim=dim - len(shape))

    def group_site(self, name: str, kind: str) -> str:
        """Name of the ``kind`` mixing site (``"local_scale"``, ``"variance"``, ...) of weight
        ``name``: its own, or the one it shares with the weights tied to it."""
        return f"{self.tied.get(name, name)}_{kind}"

    def group_site_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of that site: :meth:`group_shape`, or one flat vector of groups if shared."""
        group = self.group_shape(shape)
        return (math.prod(group),) if name in self.tied else group

    def _group_site(
        self, name: str, kind: str, law: dist.TorchDistribution, shape: tuple[int, ...]
    ) -> Tensor:
        """Emit the ``kind`` mixing site of weight ``name`` (shape :meth:`group_shape`)."""
        value = _mixing_site(self.group_site(name, kind), law, self.group_site_shape(name, shape))
        if name not in self.tied:
            return value
        group = self.group_shape(shape)
        return value.reshape(*value.shape[:-1], *group)

    def _const(self, value: float | Tensor) -> Tensor:
        return torch.as_tensor(value, dtype=self._zero.dtype, device=self._zero.device)

    def mixing_scale(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """Emit the mixing sites of weight ``name`` and return its prior standard deviation."""
        raise NotImplementedError

    def sample(self, name: str, shape: Sequence[int]) -> Tensor:
        """Emit the hierarchy for a weight tensor ``name`` of ``shape`` and return the weight.

        >>> import pyro
        >>> from pyro_sparse_bnn.priors import Laplace
        >>> w = pyro.poutine.trace(lambda: Laplace(0.5).sample("w", (4,))).get_trace()
        >>> sorted(w.stochastic_nodes)  # non-centred: w = w_decentered * sqrt(w_variance)
        ['w_decentered', 'w_variance']
        """
        shape = _check_shape(shape)
        scale = self.weight_scale(name, shape)
        event = len(shape)
        batch_shape = torch.broadcast_shapes(scale.shape, shape)
        if self.centered == "learned":
            c = self.centring_of(name, shape)
            law = dist.Normal(self._zero, scale**c).expand(batch_shape).to_event(event)
            z = pyro.sample(f"{name}_decentered", law)
            return weight_deterministic(name, z * scale ** (1 - c), event)
        if self.centered:
            normal = dist.Normal(self._zero, scale).expand(batch_shape).to_event(event)
            return pyro.sample(name, normal, infer={WEIGHT_TAG: True})
        std = dist.Normal(self._zero, self._zero + 1).expand(shape).to_event(event)
        z = pyro.sample(f"{name}_decentered", std)
        return weight_deterministic(name, z * scale, event)

    def init_values(self, name: str, weight: Tensor) -> dict[str, Tensor]:
        """Site values that start a guide at ``weight``: the weight itself when centred, else the
        decentred draw ``weight / s`` (clipped to [-1, 1]; times ``s^c`` for a learned centring)
        with the mixing scale ``s`` at its prior median. The clip keeps the start inside the
        prior's bulk: a weight that starts far out with the wrong sign can get trapped at zero
        by a strongly shrinking prior.

        >>> from pyro_sparse_bnn.priors import Horseshoe, Normal
        >>> w = torch.ones(2)
        >>> list(Horseshoe().init_values("w", w)), list(Normal().init_values("w", w))
        (['w_decentered'], ['w'])
        """
        if self.centered is True:
            return {name: weight}
        with poutine.block(), InitMessenger(init_to_median(num_samples=31)):
            scale = self.weight_scale(name, tuple(weight.shape))
        z = (weight / scale).clamp(-1.0, 1.0)
        if self.centered == "learned":
            z = z * scale ** self.centring_of(name, tuple(weight.shape)).detach()
        return {f"{name}_decentered": z}

    def extra_repr(self) -> str:
        return f"groups={self.groups!r}, centered={self.centered}"


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ValueError(f"shape must contain positive ints, got {shape!r}")
    return shape


def _mixing_site(name: str, d: dist.TorchDistribution, shape: tuple[int, ...]) -> Tensor:
    return pyro.sample(name, d.expand(shape).to_event(len(shape)))


def set_centring(model: Any, centered: Centring) -> None:
    """Set ``centered`` on every prior of ``model`` (an ``nn.Module``) that can take it:
    ``"learned"`` skips priors without a latent scale (``Normal``, the improper ones). A
    ValueError where no prior would change.

    >>> from pyro_sparse_bnn import SparseBNN, mlp, priors, likelihoods
    >>> bnn = SparseBNN(mlp([4, 3]), priors.Horseshoe(), likelihoods.Categorical(),
    ...                 bias_prior=priors.Normal())
    >>> set_centring(bnn, "learned")
    >>> bnn.priors["0"].centered, bnn.bias_prior.centered
    ('learned', True)
    """
    modules = model.modules() if isinstance(model, nn.Module) else ()
    priors = [m for m in modules if isinstance(m, Prior) and type(m).learns_centring]
    if not priors:
        raise ValueError(
            f"centered={centered!r} sets the scale-mixture priors of an nn.Module model (a "
            "SparseBNN); this model holds none"
        )
    for prior in priors:
        prior.centered = prior._check_centring(centered)
