"""Natural-gradient variational inference by weight perturbation: Vadam, VOGN and Vadam with ARD.

Each optimised tensor ``mu`` gets a mean-field Gaussian posterior ``N(mu, 1 / (N s + lambda))``,
where ``s`` is a running average of squared gradients of the per-example negative log-likelihood
(NLL), ``N`` the number of training points and ``lambda`` the precision of the Gaussian prior on the
weights (Khan et al., 2018, "Fast and Scalable Bayesian Deep Learning by Weight-Perturbation in
Adam"). Each step draws ``K`` weight samples from that posterior, evaluates the NLL gradient at each
and moves ``mu`` with an Adam-like natural-gradient step.

Which optimiser to use:

* :class:`Vadam` builds ``s`` from squared *minibatch-mean* gradients. That is correct for batch
  size 1; with a minibatch of size ``M > 1`` the square of a mean of ``M`` roughly independent
  gradients is about ``1/M`` of the mean of their squares, so the posterior precision is
  underestimated by about the batch size (the variances come out too wide). Use it with batch size
  1, or when a cheap, over-dispersed posterior is acceptable.
* :class:`VOGN` (or ``Vadam(..., per_example_grads=True)``) builds ``s`` from the mean of
  *per-example* squared gradients, which is correct at any batch size. Give it a closure that
  returns the ``M`` per-example losses: the squares of Linear and Conv weights then come in closed
  form from each layer's input and output gradient
  (:mod:`~pyro_sparse_bnn.infer.vadam.per_example`), at about the cost of one more matrix product
  per layer. Other tensors get per-example gradients from a batched backward pass, and a closure
  over one example is vmapped (see below). Use it whenever the posterior variances matter.
* :class:`VadamARD` learns one prior precision per weight (automatic relevance determination) and
  prunes by signal-to-noise ratio; it takes either gradient mode.

Closure contract (see :meth:`Vadam.step`), NLL meaning the negative log-likelihood without the
prior term and without the ``N`` factor:

* ``per_example_grads=False``: ``opt.step(closure)``. ``closure()`` evaluates the **mean** NLL of
  the current minibatch at the parameters' current values, calls ``backward()`` on it and returns
  it as a scalar tensor. The optimiser clears its parameters' gradients before each call.
* ``per_example_grads=True``, the fast form: ``opt.step(closure)``. ``closure()`` evaluates the
  minibatch at the parameters' current values and returns the vector of ``M`` per-example NLLs
  (shape ``(M,)``) without calling ``backward()``; example ``i`` may depend on row ``i`` only (no
  batch statistics). The optimiser calls ``backward()`` on their mean, so other leaves of the
  graph (biases kept as point estimates, say) get that mean's gradient in ``.grad``:

  >>> import torch
  >>> from pyro_sparse_bnn.infer.vadam import VOGN
  >>> net = torch.nn.Linear(3, 1)
  >>> x, y = torch.randn(10, 3), torch.randn(10)
  >>> opt = VOGN([net.weight], num_data=100, lr=0.01)
  >>> loss = opt.step(lambda: 0.5 * (net(x).squeeze(1) - y) ** 2)

* ``per_example_grads=True``, the vmapped form: ``opt.step(closure, batch)``. ``batch`` is a
  tuple of tensors whose leading dimension indexes the ``M`` examples;
  ``closure(params, *example)`` returns the NLL of **one** example as a scalar, where ``params``
  is a tuple of tensors in the order of the optimiser's parameters (``param_groups``) and
  ``example`` holds one row of each ``batch`` tensor
  (leading dimension removed). It is vmapped: no ``backward()``, no ``.item()``, no in-place
  changes to its inputs, no batch statistics. For an ``nn.Module`` use
  ``torch.func.functional_call``:

  >>> from torch.func import functional_call
  >>> net = torch.nn.Linear(3, 1)
  >>> names = [name for name, _ in net.named_parameters()]
  >>> def nll(params, x, y):
  ...     out = functional_call(net, dict(zip(names, params)), (x.unsqueeze(0),))
  ...     return 0.5 * (out.squeeze() - y) ** 2
  >>> opt = VOGN(net.parameters(), num_data=100, lr=0.01)
  >>> loss = opt.step(nll, (torch.randn(10, 3), torch.randn(10)))

Squared gradients are the empirical Fisher, so ``N s`` estimates the NLL curvature well only near a
good fit (for a Gaussian likelihood, when squared residuals are close to the noise variance).

To fit a :class:`~pyro_sparse_bnn.SparseBNN` or a hand-written Pyro model with these optimisers,
use ``fit(model, X, y, method="vadam")`` (:mod:`pyro_sparse_bnn.infer.vadam`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ...validation import (
    check_nonnegative,
    check_positive,
    check_positive_int,
)
from .per_example import moments, recorded_calls


def _check_batch(batch: Any) -> tuple[Tensor, ...]:
    if not isinstance(batch, tuple | list) or not batch:
        raise ValueError(
            f"batch must be a non-empty tuple of tensors with per_example_grads=True, got {batch!r}"
        )
    sizes = {t.shape[0] if isinstance(t, Tensor) and t.dim() > 0 else None for t in batch}
    if None in sizes or len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            "batch must hold tensors with one shared, non-zero leading (example) dimension"
        )
    return tuple(batch)


def _check_betas(betas: Any) -> None:
    ok = isinstance(betas, tuple | list) and len(betas) == 2
    if ok:
        ok = all(
            isinstance(b, int | float) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in betas
        )
    if not ok:
        raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")


def _takes_no_arguments(closure: Callable) -> bool:
    try:
        inspect.signature(closure).bind()
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): let the call decide
        return True
    return True


def _average(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.stack(tensors).mean(0)


_SCRATCH = ("draw", "scratch")


"""Per-parameter work buffers kept in the optimiser state but left out of ``state_dict()``."""


def _buffer(state: dict[str, Any], key: str, like: Tensor) -> Tensor:
    buffer = state.get(key)
    if buffer is None or buffer.shape != like.shape:
        buffer = state[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
    return buffer


def _drop_scratch(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict["state"] = {
        k: {name: v for name, v in entry.items() if name not in _SCRATCH}
        for k, entry in state_dict["state"].items()
    }
    return state_dict


class Vadam(torch.optim.Optimizer):
    """Variational Adam: mean-field Gaussian VI by weight perturbation (Khan et al., 2018).

    Each step, for ``k = 1..K`` (``K = num_particles``): ``theta_k = mu + eps_k / sqrt(N s + lam)``
    with ``eps_k ~ N(0, I)``; ``g_k`` is the NLL gradient at ``theta_k``. Then, with ``t`` the
    step count::

        m  <- b1 m + (1 - b1) (mean_k g_k + (lam / N) mu)
        s  <- b2 s + (1 - b2) mean_k g_k**2
        mu <- mu - lr (m / (1 - b1**t)) / (sqrt(s / (1 - b2**t)) + lam / N + eps)

    The perturbation uses the raw ``s``; only the step is bias-corrected, as in the reference
    implementation. The posterior is ``N(mu, 1 / (N s + lam))`` per entry; ``s`` starts at
    ``(prec_init - lam) / N`` so that the precision starts at ``prec_init``.

    Args:
        params: tensors or parameter groups; ``lr``, ``betas``, ``prior_precision``,
            ``prec_init`` and ``eps`` may be set per group.
        num_data: ``N``, the number of training examples (scales the data term); ``N / beta``
            tempers the likelihood (``beta`` times the KL term, as ``fit(kl_weight=beta)``).
        lr: step size.
        betas: decay rates of the first and second moments, each in ``[0, 1)``.
        prior_precision: ``lam``, the precision of the zero-mean Gaussian prior on each weight.
        num_particles: ``K``, weight samples (closure calls) per step.
        prec_init: initial posterior precision, at least ``prior_precision`` (default: equal).
        eps: added to the step's denominator for numerical safety.
        per_example_grads: build ``s`` from per-example squared gradients (VOGN); changes the
            closure contract, see the module docstring.
        generator: source of the weight noise (default: torch's global generator); it must live
            on the parameters' device.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(32, 2, generator=g)
        >>> y = x @ torch.tensor([1.0, -1.0]) + 0.1 * torch.randn(32, generator=g)
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = Vadam([w], num_data=32, lr=0.05, generator=g)
        >>> def closure(i):  # batch size 1: example i
        ...     loss = (y[i] - x[i] @ w) ** 2 / (2 * 0.1**2)
        ...     loss.backward()
        ...     return loss
        >>> for epoch in range(20):
        ...     for i in torch.randperm(32, generator=g).tolist():
        ...         loss = opt.step(lambda: closure(i))
        >>> torch.allclose(w, torch.tensor([1.0, -1.0]), atol=0.1)
        True
        >>> opt.posterior_scale()[0].shape
        torch.Size([2])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        num_data: float,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        prior_precision: float = 1.0,
        num_particles: int = 1,
        prec_init: float | None = None,
        eps: float = 1e-8,
        per_example_grads: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        check_positive(num_data, "num_data")
        check_positive_int(num_particles, "num_particles")
        self.num_data = num_data
        self.num_particles = num_particles
        self.per_example_grads = bool(per_example_grads)
        self.generator = generator
        defaults = {
            "lr": lr,
            "betas": betas,
            "prior_precision": prior_precision,
            "prec_init": prec_init,
            "eps": eps,
        }
        super().__init__(params, defaults)
        self._closed_form_checked: set[int] = set()
        self.register_state_dict_post_hook(_drop_scratch)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_positive(group["lr"], "lr")
        _check_betas(group["betas"])
        check_positive(group["prior_precision"], "prior_precision")
        check_nonnegative(group["eps"], "eps")
        if group["prec_init"] is not None:
            check_positive(group["prec_init"], "prec_init")
            if group["prec_init"] < group["prior_precision"]:
                raise ValueError(
                    f"prec_init must be at least prior_precision ({group['prior_precision']}), "
                    f"got {group['prec_init']!r}"
                )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (see :class:`torch.optim.Optimizer`), validating its options."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        for p in group["params"]:
            if not p.dtype.is_floating_point:
                raise ValueError(f"params must be floating-point tensors, got dtype {p.dtype}")

    # -- state and posterior ------------------------------------------------------------------

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        lam = group["prior_precision"]
        prec0 = lam if group["prec_init"] is None else group["prec_init"]
        return {
            "step": 0,
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.full_like(p, (prec0 - lam) / self.num_data),
        }

    def _state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state.update(self._init_state(p, group))
        return state

    def _prior_precision(self, group: dict[str, Any], state: dict[str, Any]) -> float | Tensor:
        return group["prior_precision"]

    def _posterior_precision(self, group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        """``N s + lam`` in a buffer of ``state``: fresh on each call, overwritten by the next."""
        buffer = _buffer(state, "scratch", state["exp_avg_sq"])
        torch.mul(state["exp_avg_sq"], self.num_data, out=buffer)
        return buffer.add_(self._prior_precision(group, state))

    def _preconditioner_shift(self, group: dict[str, Any], state: dict[str, Any]) -> float | Tensor:
        return self._prior_precision(group, state) / self.num_data

    def _pairs(self) -> Iterator[tuple[Tensor, dict[str, Any]]]:
        for group in self.param_groups:
            for p in group["params"]:
                yield p, group

    @torch.no_grad()
    def posterior_scale(self) -> list[Tensor]:
        """Posterior standard deviations ``1 / sqrt(N s + lam)``, one tensor per parameter.

        The order is that of the parameters in ``param_groups``.

        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> Vadam([w], num_data=10, prec_init=4.0).posterior_scale()[0]
        tensor([0.5000, 0.5000, 0.5000])
        """
        return [
            self._posterior_precision(group, self._state(p, group)).rsqrt()
            for p, group in self._pairs()
        ]

    @torch.no_grad()
    def relevance(self) -> list[Tensor]:
        """Signal-to-noise ratios ``|mu| / sigma``, one tensor per parameter.

        A common pruning rule keeps the weights with ``relevance > 3``.

        >>> w = torch.nn.Parameter(torch.tensor([0.1, 2.0]))
        >>> Vadam([w], num_data=10, prec_init=4.0).relevance()[0]
        tensor([0.2000, 4.0000])
        """
        return [
            p.abs() / scale
            for (p, _), scale in zip(self._pairs(), self.posterior_scale(), strict=True)
        ]

    def _draw(self, p: Tensor) -> Tensor:
        return torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)

    def _draw_into(self, state: dict[str, Any], p: Tensor) -> Tensor:
        """Standard normal noise shaped like ``p`` in a buffer kept in ``state``.

        Reusing one buffer per parameter avoids allocating (and first touching) a fresh
        parameter-sized tensor every step, which costs as much as drawing the noise on a CPU.
        """
        return _buffer(state, "draw", p).normal_(generator=self.generator)

    @contextmanager
    def sampled_params(self) -> Iterator[None]:
        """Within the block, every parameter holds one posterior draw; the means return after.

        Average a model's predictions over several blocks for a Bayesian prediction.

        >>> w = torch.nn.Parameter(torch.zeros(4))
        >>> opt = Vadam([w], num_data=10)
        >>> with opt.sampled_params():
        ...     drawn = w.detach().clone()
        >>> bool((drawn != 0).all()), bool((w == 0).all())
        (True, True)
        """
        pairs = list(self._pairs())
        scales = self.posterior_scale()
        with torch.no_grad():
            means = [p.detach().clone() for p, _ in pairs]
            for (p, _), scale in zip(pairs, scales, strict=True):
                p.add_(self._draw(p) * scale)
        try:
            yield
        finally:
            with torch.no_grad():
                for (p, _), mu in zip(pairs, means, strict=True):
                    p.copy_(mu)

    # -- the step -----------------------------------------------------------------------------

    @staticmethod
    def _mean_gradients(
        closure: Callable[[], Tensor], params: list[Tensor]
    ) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError(
                "closure must return the mean minibatch NLL as a scalar tensor "
                "(with per_example_grads=False)"
            )
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
        return loss.detach(), grads, None  # the squares are g * g: the update fuses them

    @staticmethod
    def _per_example_gradients(
        closure: Callable[..., Tensor], batch: tuple[Tensor, ...], params: list[Tensor]
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        per_example = torch.func.vmap(
            torch.func.grad_and_value(closure), in_dims=(None, *(0,) * len(batch))
        )
        grads, losses = per_example(tuple(p.detach() for p in params), *batch)
        return losses.mean(), [g.mean(0) for g in grads], [(g * g).mean(0) for g in grads]

    def _closed_form_gradients(
        self, closure: Callable[[], Tensor], params: list[Tensor]
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        with torch.enable_grad(), recorded_calls() as calls:
            losses = closure()
            if not isinstance(losses, Tensor) or losses.dim() != 1 or not len(losses):
                raise ValueError(
                    "closure must return the vector of per-example NLLs, shape (M,), with "
                    "per_example_grads=True and no batch"
                )
            return moments(losses, params, calls, checked=self._closed_form_checked)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[..., Tensor], batch: Sequence[Tensor] | None = None
    ) -> Tensor:
        """One update from ``num_particles`` closure calls at sampled weights; the mean loss.

        With ``per_example_grads=False``, ``closure()`` returns the mean minibatch NLL and calls
        ``backward()``; ``batch`` stays ``None``. With ``per_example_grads=True``, either
        ``closure()`` returns the ``M`` per-example NLLs (``batch`` stays ``None``; closed-form
        squares for Linear and Conv layers), or ``closure(params, *example)`` returns one
        example's NLL and ``batch`` holds the minibatch tensors (leading dimension ``M``;
        vmapped). See the module docstring. Afterwards each
        parameter's ``.grad`` holds the NLL gradient averaged over the samples.
        """
        if not callable(closure):
            raise TypeError(f"closure must be callable, got {closure!r}")
        if self.per_example_grads and batch is None:
            if not _takes_no_arguments(closure):
                raise ValueError(
                    "closure takes arguments: pass the minibatch as batch for a closure over one "
                    "example, or give a closure() that returns the per-example NLLs"
                )
            evaluate = partial(self._closed_form_gradients, closure)
        elif self.per_example_grads:
            batch = _check_batch(batch)
            evaluate = partial(self._per_example_gradients, closure, batch)
        elif batch is not None:
            raise ValueError("batch is only used with per_example_grads=True")
        else:
            evaluate = partial(self._mean_gradients, closure)
        pairs = list(self._pairs())
        params = [p for p, _ in pairs]
        states = [self._state(p, group) for p, group in pairs]
        # The means stay where they are: each parameter's storage is swapped for a draw and
        # swapped back, which saves two copies per sample.
        means = [p.data for p in params]
        scales = [
            self._posterior_precision(group, state).rsqrt_()
            for (_, group), state in zip(pairs, states, strict=True)
        ]
        losses, grads, squares = [], [], []
        try:
            for _ in range(self.num_particles):
                for p, mu, scale, state in zip(params, means, scales, states, strict=True):
                    p.data = self._draw_into(state, p).mul_(scale).add_(mu)
                loss, g, g2 = evaluate(params)
                losses.append(loss)
                grads.append(g)
                squares.append(g2)
        finally:
            for p, mu in zip(params, means, strict=True):
                p.data = mu
        for i, ((p, group), state) in enumerate(zip(pairs, states, strict=True)):
            g = _average([sample[i] for sample in grads])
            g2 = None if squares[0] is None else _average([sample[i] for sample in squares])
            if g2 is None and len(grads) > 1:
                g2 = _average([sample[i] * sample[i] for sample in grads])
            self._update(p, group, state, g, g2)
            p.grad = g
        return _average(losses)

    def _update(
        self, p: Tensor, group: dict[str, Any], state: dict[str, Any], g: Tensor, g2: Tensor | None
    ) -> None:
        """One step of the means; ``g2 = None`` stands for ``g * g`` (a single sample)."""
        b1, b2 = group["betas"]
        state["step"] += 1
        t = state["step"]
        m, s = state["exp_avg"], state["exp_avg_sq"]
        prior = self._prior_precision(group, state)
        m.mul_(b1).add_(g, alpha=1 - b1)
        if isinstance(prior, Tensor):
            m.addcmul_(p, prior, value=(1 - b1) / self.num_data)
        else:
            m.add_(p, alpha=(1 - b1) * prior / self.num_data)
        s.mul_(b2)
        if g2 is None:
            s.addcmul_(g, g, value=1 - b2)
        else:
            s.add_(g2, alpha=1 - b2)
        denom = torch.sqrt(s, out=_buffer(state, "scratch", s)).div_((1 - b2**t) ** 0.5)
        denom.add_(self._preconditioner_shift(group, state))
        p.addcdiv_(m, denom.add_(group["eps"]), value=-group["lr"] / (1 - b1**t))
