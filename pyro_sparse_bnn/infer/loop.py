"""The one training loop of every epoch-based fit (SVI in memory and from a loader, VADAM, L1, L0).

A fit validates its :class:`LoopOptions` with everything else before any work starts, builds its
parts (model, guide, optimisers, schedulers: anything with ``state_dict``) and private
generators, and hands :meth:`LoopOptions.run` a function that trains one epoch and returns its
mean loss. The loop owns what the fits share: the progress bar, the history, the finite check,
checkpoints (written atomically) with exact resume, the callback and early stop, timing, and the
number of torch threads (one for a small model, see :func:`~pyro_sparse_bnn.isolation.loop_threads`;
the caller's count is restored afterwards).
The learning-rate schedules and the KL warm-up live here too.

>>> import torch
>>> w = torch.nn.Parameter(torch.zeros(()))
>>> opt = torch.optim.SGD([w], lr=0.5)
>>> def epoch(e):
...     opt.zero_grad(); loss = (w - 1) ** 2; loss.backward(); opt.step()
...     return loss.item()
>>> run = LoopOptions(epochs=3, progress=False).run(epoch, parts={"w": opt})
>>> run["history"], run["epochs_run"]
([1.0, 0.0, 0.0], 3)
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..io import atomic_path, check_writable, read_tagged
from ..isolation import loop_threads, requested_threads, trainable_elements
from ..progress import progress_bar
from ..validation import check_bool, check_positive_int

__all__ = [
    "LR_SCHEDULES",
    "LoopOptions",
    "TensorState",
    "check_step",
    "kl_weight",
    "load_run",
    "lr_scheduler",
    "run_state",
    "save_run",
]

Callback = Callable[[int, float], bool | None]


def _linear_decay(epochs: int) -> Callable[[int], float]:
    half = epochs / 2
    return lambda epoch: min(1.0, max(0.0, (epochs - epoch) / half))


LR_SCHEDULES: dict[str, Callable[[int], Callable[[int], float]]] = {
    "constant": lambda epochs: lambda epoch: 1.0,
    "linear_decay": _linear_decay,
}
"""Learning-rate factor per epoch: constant, or constant for the first half of the epochs and then
linearly to 0 (the sparse variational dropout recipe)."""


def lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The epoch-wise scheduler of ``LR_SCHEDULES[schedule]`` (step it once per epoch).

    >>> [LR_SCHEDULES["linear_decay"](4)(epoch) for epoch in range(4)]
    [1.0, 1.0, 1.0, 0.5]
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LR_SCHEDULES[schedule](epochs))


def kl_weight(epoch: int, kl_warmup: int) -> float:
    """KL weight of (0-based) ``epoch``: rises linearly from ``1 / kl_warmup`` to 1.

    >>> [kl_weight(e, 4) for e in range(5)]
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return min(1.0, (epoch + 1) / kl_warmup) if kl_warmup else 1.0


def check_step(
    loss: torch.Tensor, params: Iterable[torch.Tensor], epoch: int, loss_name: str = "loss"
) -> None:
    """Stop before an optimiser step that would leave non-finite parameters: a FloatingPointError
    when ``loss`` or a gradient of ``params`` is NaN or infinite.

    >>> check_step(torch.tensor(float("nan")), [], 3, "ELBO")
    Traceback (most recent call last):
    FloatingPointError: the ELBO became nan at epoch 3: lower lr or check the data
    """
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"the {loss_name} became {loss.item()} at epoch {epoch}: lower lr or check the data"
        )
    grads = [p.grad for p in params if p.grad is not None]
    if grads and not _all_finite(grads):
        raise FloatingPointError(
            f"the {loss_name} became nan at epoch {epoch}: its gradient is not finite; "
            "lower lr or check the data"
        )


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element is finite: one sum per tensor, added up across dtypes (a non-finite
    element makes the total non-finite; a total that only overflows is told apart by the
    elementwise check).

    >>> big = torch.full((2,), 3e38)  # its sum overflows, its elements are finite
    >>> _all_finite([torch.ones(2), big]), _all_finite([torch.tensor([1.0, -torch.inf])])
    (True, False)
    """
    if bool(sum(t.sum() for t in tensors).isfinite()):
        return True
    return all(bool(t.isfinite().all()) for t in tensors)


class TensorState:
    """``state_dict`` / ``load_state_dict`` for a dict of tensors (loaded in place).

    >>> w = {"a": torch.zeros(2)}
    >>> TensorState(w).load_state_dict({"a": torch.ones(2)}); w["a"]
    tensor([1., 1.])
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.tensors.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self.tensors):
            raise KeyError(f"expected tensors {sorted(self.tensors)}, got {sorted(state)}")
        with torch.no_grad():
            for k, v in self.tensors.items():
                v.copy_(state[k])


@dataclass
class LoopOptions:
    """The loop's options, validated on construction (before a fit does any work).

    Args:
        epochs: passes over the data.
        progress: show a tqdm bar (``desc`` names it).
        callback: called as ``callback(epoch, loss)`` after each epoch; returning ``True`` stops.
        checkpoint: file written atomically every ``checkpoint_every`` epochs with the parts, the
            private generators, the global RNG states and the history.
        resume: a checkpoint of the same call to continue from; with the same seed and data the
            resumed fit ends with exactly the numbers of an uninterrupted one.
        stop_when_nonfinite: a non-finite epoch loss ends the run (recorded, ``diverged``)
            instead of raising FloatingPointError.
        num_threads: torch's intra-op threads while the loop runs; ``None``: ``$PSBNN_NUM_THREADS``
            if set, else one for a model with fewer trainable values than
            :data:`~pyro_sparse_bnn.isolation.SINGLE_THREAD_BELOW`, else the caller's setting.
            The caller's count is restored afterwards.
    """

    epochs: int
    progress: bool = True
    callback: Callback | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 10
    resume: str | os.PathLike | None = None
    desc: str = "train"
    loss_name: str = "loss"
    stop_when_nonfinite: bool = False
    num_threads: int | None = None
    _resumed: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_bool(self.progress, "progress")
        if self.callback is not None and not callable(self.callback):
            raise TypeError(f"callback must be callable, got {type(self.callback).__name__}")
        check_positive_int(self.checkpoint_every, "checkpoint_every")
        requested_threads(self.num_threads)
        if self.checkpoint is not None:
            check_writable(self.checkpoint, "checkpoint")
        if self.resume is not None:
            self._resumed = load_run(self.resume, "epochs")

    def run(
        self,
        epoch: Callable[[int], float],
        *,
        parts: Mapping[str, Any],
        generators: Mapping[str, torch.Generator] | None = None,
    ) -> dict[str, Any]:
        """Run ``epoch(e)`` for the epochs left; return ``history``, ``seconds``, ``epochs_run``
        (and ``diverged`` with ``stop_when_nonfinite``).

        ``parts`` (objects with ``state_dict``) and ``generators`` are what a checkpoint saves
        and a resume restores, with the global torch / NumPy / ``random`` states. The epochs run
        with :func:`~pyro_sparse_bnn.isolation.loop_threads` threads for the trainable values of
        ``parts``.
        """
        with loop_threads(trainable_elements(parts.values()), self.num_threads):
            return self._run(epoch, parts, dict(generators or {}))

    def _run(
        self,
        epoch: Callable[[int], float],
        parts: Mapping[str, Any],
        generators: dict[str, torch.Generator],
    ) -> dict[str, Any]:
        history: list[float] = []
        first = 0
        if self._resumed is not None:
            state = run_state(self._resumed, {"epochs": self.epochs})
            first = _restore(state, parts, generators, history)
        start = time.perf_counter()
        bar = progress_bar(
            range(first, self.epochs), disable=not self.progress, desc=self.desc, leave=False
        )
        diverged = False
        for e in bar:
            loss = float(epoch(e))
            if not math.isfinite(loss) and not self.stop_when_nonfinite:
                raise FloatingPointError(
                    f"the {self.loss_name} became {loss} at epoch {e}: lower lr or check the data"
                )
            history.append(loss)
            if not math.isfinite(loss):
                diverged = True
                break
            bar.set_postfix({self.loss_name: f"{loss:.4g}"}, refresh=False)
            if self.checkpoint is not None and (e + 1) % self.checkpoint_every == 0:
                state = _state(parts, generators, history, e)
                save_run(self.checkpoint, "epochs", {"epochs": self.epochs}, state)
            if self.callback is not None and self.callback(e, loss):
                break
        seconds = time.perf_counter() - start
        run = {"history": history, "seconds": seconds, "epochs_run": len(history)}
        return run | ({"diverged": diverged} if self.stop_when_nonfinite else {})


def _state(
    parts: Mapping[str, Any],
    generators: Mapping[str, torch.Generator],
    history: list[float],
    epoch: int,
) -> dict[str, Any]:
    return {
        "parts": {k: v.state_dict() for k, v in parts.items()},
        "generators": {k: g.get_state() for k, g in generators.items()},
        "epoch": epoch,
        "history": list(history),
        "rng": _global_rng_state(),
    }


def _global_rng_state() -> dict[str, Any]:
    """torch's, NumPy's and ``random``'s global states, as tensors and plain Python values (so
    that the checkpoint loads with ``weights_only=True``)."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
    }


def _set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    key = saved["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, saved["pos"], saved["has_gauss"], saved["gauss"]))


def _restore(
    state: dict,
    parts: Mapping[str, Any],
    generators: Mapping[str, torch.Generator],
    history: list[float],
) -> int:
    """Load a checkpoint into freshly built parts; return the first epoch still to run."""
    if set(state["parts"]) != set(parts) or set(state["generators"]) != set(generators):
        raise ValueError(
            f"resume: the checkpoint holds {sorted(state['parts'])}; this fit has {sorted(parts)}"
        )
    try:
        for name, part in parts.items():
            part.load_state_dict(state["parts"][name])
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"resume: the checkpoint does not match this model and guide ({err})"
        ) from None
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    _set_global_rng_state(state["rng"])
    history.extend(state["history"])
    return state["epoch"] + 1


def save_run(path: str | os.PathLike, kind: str, signature: dict, state: dict) -> None:
    """Write a sampler's ``state`` atomically, tagged with its ``kind`` and the ``signature`` of
    the call (what must match to resume)."""
    with atomic_path(path) as tmp:
        torch.save({"format": kind, "signature": signature, "state": state}, tmp)


def load_run(path: str | os.PathLike, kind: str) -> dict:
    """What :func:`save_run` wrote (tensors and plain values only: loading runs no code); a
    ValueError for a missing or foreign file. Check it with :func:`run_state` before use."""
    return read_tagged(path, kind, "resume: checkpoint")


def run_state(saved: dict, signature: dict) -> dict:
    """The saved state, if the run that saved it had this call's ``signature``."""
    if saved["signature"] != signature:
        raise ValueError(
            f"resume: the checkpoint is of another run ({saved['signature']}); this call is "
            f"{signature}"
        )
    return saved["state"]
