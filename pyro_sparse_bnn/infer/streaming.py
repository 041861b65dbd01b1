"""SVI from a ``DataLoader``: the data stream through memory one minibatch at a time.

:func:`fit_svi_loader` is :func:`~pyro_sparse_bnn.infer.svi.fit_svi` for data that do not fit in
memory (or live on disk, or are generated on the fly). Each minibatch of ``M`` rows counts
``N / M`` times in the ELBO, where ``N = num_data`` is the size of the whole data set (by default
``len(loader.dataset)``), so the objective is the full-data ELBO whatever the loader's batch size.
Batches move to the model's device as they arrive (``pin_memory=True`` in the loader makes the copy
asynchronous on a GPU).

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> import pyro_sparse_bnn as psb
>>> X, y = psb.datasets.load("iris")
>>> loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)
>>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
>>> result = fit_svi_loader(bnn, loader, epochs=3, progress=False)
>>> result.info["num_data"], len(result.info["history"]), tuple(result.x.shape)
(112, 3, (32, 4))
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..dtypes import float_dtype
from ..guides import draw, make_guide
from ..handlers import ScaleSites
from ..isolation import check_seed, isolated
from ..priors import Centring, set_centring
from ..validation import check_positive_int, check_xy
from .loop import LoopOptions, kl_weight, lr_scheduler
from .result import FitResult
from .svi import ELBOS, _parameters, check_svi_options

__all__ = ["fit_svi_loader", "prepare_svi", "svi_loss"]


def svi_loss(
    loss_fn: Callable[..., Tensor],
    model: Callable,
    guide: Callable,
    x: Tensor,
    y: Tensor,
    *,
    num_data: int,
    beta: float = 1.0,
) -> Tensor:
    """Negative ELBO per data row from one minibatch: likelihood scaled by ``num_data / len(x)``,
    latent sites by the KL weight ``beta``, the total divided by ``num_data`` (as in ``fit_svi``).

    Under data parallelism each process passes its own share of the global batch; the average of
    the processes' gradients is then the gradient of the global batch's loss.
    """
    scale = ScaleSites(observed=num_data / x.shape[0], latent=beta)
    return loss_fn(scale(model), scale(guide), x, y) / num_data


def _check_loader(loader: Any) -> Iterable:
    """``loader`` itself if it can be iterated over once per epoch."""
    if isinstance(loader, DataLoader):  # iter() would start its workers
        return loader
    try:
        batches = iter(loader)
    except TypeError:
        raise TypeError(f"loader must be a DataLoader, got {type(loader).__name__}") from None
    if batches is loader:
        raise TypeError("loader must be re-iterable (a DataLoader), not a one-shot iterator")
    return loader


def _num_data(loader: Iterable, num_data: int | None) -> int:
    _check_loader(loader)
    if num_data is not None:
        return check_positive_int(num_data, "num_data")
    try:
        return check_positive_int(len(loader.dataset), "len(loader.dataset)")  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        raise ValueError(
            "num_data is required when the loader has no sized dataset (an IterableDataset or a "
            "plain iterable): pass the number of rows in the whole data set"
        ) from None


def _pair(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, list | tuple) or len(batch) != 2:
        raise TypeError(f"each batch must be a pair (x, y), got {type(batch).__name__}")
    return batch[0], batch[1]


def first_batch(loader: Iterable, model: Any = None) -> tuple[Tensor, Tensor]:
    """The loader's first batch ``(x, y)``, validated against ``model``."""
    try:
        batch = next(iter(_check_loader(loader)))
    except StopIteration:
        raise ValueError("loader is empty: it yielded no batch") from None
    x, y = check_xy(*_pair(batch), model=model)
    if y is None:
        raise ValueError("y is required for fitting")
    return x, y


def prepare_svi(
    model: Callable,
    loader: Iterable,
    *,
    guide: str | Callable,
    guide_options: dict[str, Any] | None,
    seed: int,
    device: torch.device | str | None = None,
    centered: Centring | None = None,
) -> tuple[Callable, Callable, Tensor, Tensor]:
    """Seed, fetch and validate the first batch, copy the model to ``device`` (default: the first
    batch's) and the data's dtype, and build the guide's parameters on that batch.

    Returns ``(model, guide, x, y)`` with the first batch on the device. The RNG is seeded again
    after the fetch, so the draws that follow do not depend on how the loader shuffles.
    """
    pyro.set_rng_seed(check_seed(seed))
    x, y = first_batch(loader, model)
    pyro.set_rng_seed(seed)
    device = x.device if device is None else torch.device(device)
    x, y = x.to(device), y.to(device)
    if isinstance(model, nn.Module):
        model = copy.deepcopy(model).to(device=device, dtype=float_dtype(x))
    if centered is not None:
        set_centring(model, centered)
    guide = make_guide(guide, model, **(guide_options or {}))
    guide(x, y)
    return model, guide, x, y


def _set_epoch(loader: Iterable, epoch: int) -> None:
    """Tell a shuffling sampler (``DistributedSampler`` and alike) which epoch starts."""
    for owner in (loader, getattr(loader, "batch_sampler", None)):
        sampler = getattr(owner, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return


@isolated
def fit_svi_loader(
    model: Callable,
    loader: Iterable,
    *,
    num_data: int | None = None,
    guide: str | Callable = "mean_field",
    guide_options: dict[str, Any] | None = None,
    epochs: int = 100,
    lr: float = 1e-2,
    lr_schedule: str = "constant",
    num_particles: int = 1,
    elbo: str = "mean_field",
    kl_warmup: int | None = None,
    num_posterior_samples: int = 200,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    callback: Callable[[int, float], bool | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    resume: str | os.PathLike | None = None,
    centered: Centring | None = None,
) -> FitResult:
    """Fit ``model`` by SVI over the minibatches ``(x, y)`` of ``loader``, one pass per epoch.

    Args:
        loader: a ``DataLoader`` (or any re-iterable of ``(x, y)`` pairs) over the training data.
        num_data: rows in the whole data set (default ``len(loader.dataset)``); the likelihood of
            a minibatch of ``M`` rows is scaled by ``num_data / M``.
        device: where the model trains (default: the device of the loader's first batch); every
            batch is moved there.
        seed, checkpoint, resume, centered: as in ``fit_svi``. Shuffling belongs to the loader:
            seed it (``DataLoader(generator=...)``, or a ``DistributedSampler`` whose
            ``set_epoch`` is called here each epoch) or let it draw from the global RNG, which
            ``seed`` fixes and checkpoints save.

    The other options are those of ``fit_svi``. ``result.x`` and ``result.y`` are the loader's
    first batch (a sample of the data, so ``result.to_arviz()`` without data covers only that
    batch); ``result.info`` has ``history`` (mean loss per row seen, per epoch), ``num_data``,
    ``rows_per_epoch`` and ``seconds``.
    """
    num_data = _num_data(loader, num_data)
    kl_warmup = check_svi_options(
        epochs=epochs,
        lr=lr,
        lr_schedule=lr_schedule,
        num_particles=num_particles,
        elbo=elbo,
        kl_warmup=kl_warmup,
        num_posterior_samples=num_posterior_samples,
        guide=guide,
    )
    loop = LoopOptions(
        epochs,
        progress,
        callback,
        checkpoint,
        checkpoint_every,
        resume,
        desc="svi",
        loss_name="ELBO",
    )
    start = time.perf_counter()
    model, guide, x0, y0 = prepare_svi(
        model, loader, guide=guide, guide_options=guide_options, seed=seed, device=device,
        centered=centered,
    )  # fmt: skip
    params = list({id(p): p for m in (model, guide) for p in _parameters(m)}.values())
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = lr_scheduler(optimizer, lr_schedule, epochs)
    loss_fn = ELBOS[elbo](num_particles=num_particles).differentiable_loss
    order = getattr(loader, "generator", None)
    order = torch.Generator() if order is None else order
    rows = 0

    def epoch(e: int) -> float:
        nonlocal rows
        beta = kl_weight(e, kl_warmup)
        _set_epoch(loader, e)
        sums, rows = [], 0  # kept on the device: no synchronisation per step
        for batch in loader:
            x, y = (t.to(x0.device, non_blocking=True) for t in _pair(batch))
            optimizer.zero_grad()
            loss = svi_loss(loss_fn, model, guide, x, y, num_data=num_data, beta=beta)
            loss.backward()
            optimizer.step()
            sums.append(loss.detach() * x.shape[0])
            rows += x.shape[0]
        if rows == 0:
            raise ValueError(f"loader yielded no batch in epoch {e}")
        scheduler.step()
        return torch.stack(sums).cpu().double().sum().item() / rows

    parts = {"model": model, "guide": guide, "optimizer": optimizer, "scheduler": scheduler}
    info = loop.run(epoch, parts=parts, generators={"order": order})
    info |= {"seconds": time.perf_counter() - start, "num_data": num_data, "rows_per_epoch": rows}
    draws = draw(model, guide, x0[:1], num_posterior_samples)
    return FitResult(model, draws, method="svi", x=x0, y=y0, info=info, guide=guide)
