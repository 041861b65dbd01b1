"""Data-parallel SVI on several devices or nodes with PyTorch Lightning (``pip install lightning``).

:class:`SVIModule` is a ``LightningModule`` around a Pyro model, its guide and the ELBO, as in
Pyro's own Lightning example: the model and guide own their parameters (module-local mode during
each training step), so Lightning's optimiser and DDP see them like any torch module's. Each
training step computes :func:`~pyro_sparse_bnn.infer.streaming.svi_loss` on the process's share of
the global batch; DDP averages the gradients, which is the gradient of the global batch's loss.
Every process starts from the same seed, so all draw the same latent values at each step and a run
on ``k`` processes with local batch ``B / k`` follows a one-process run with batch ``B``.

:func:`fit_lightning` builds the module, runs a ``lightning.Trainer`` and converts the fit to the
shared :class:`~pyro_sparse_bnn.FitResult`:

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> import pyro_sparse_bnn as psb
>>> X, y = psb.datasets.load("iris")
>>> loader = DataLoader(TensorDataset(X, y), batch_size=28, shuffle=True)
>>> bnn = psb.SparseBNN(psb.mlp([4, 3]), psb.priors.Normal(), psb.likelihoods.Categorical())
>>> result = fit_lightning(bnn, loader, epochs=2, accelerator="cpu", devices=1, progress=False)
>>> result.info["world_size"], len(result.info["history"])
(1, 2)

On several GPUs: ``fit_lightning(..., accelerator="gpu", devices=4, strategy="ddp")`` in a script
(Lightning starts the other processes by running the script again; ``torchrun`` and SLURM work
too). Every process returns the same result; write files only where ``info["global_rank"] == 0``.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

try:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
except ImportError as err:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "pyro_sparse_bnn.lightning needs PyTorch Lightning: pip install 'pyro-sparse-bnn[scale]'"
    ) from err

from .guides import draw
from .infer.loop import LR_SCHEDULES, kl_weight
from .infer.result import FitResult
from .infer.streaming import _num_data, prepare_svi, svi_loss
from .infer.svi import ELBOS, check_svi_options
from .isolation import isolated, local_params
from .priors import Centring
from .validation import check_positive_int

__all__ = ["SVIModule", "fit_lightning"]


def _no_buffer_sync() -> dict[str, bool]:
    """DDP option that skips re-sending buffers each step: the network's buffers are constants
    (its weights are sampled). Recent torch renamed ``broadcast_buffers`` to this name."""
    name = "forward_sync_buffers"
    if name not in inspect.signature(DistributedDataParallel).parameters:
        name = "broadcast_buffers"
    return {name: False}


class SVIModule(pl.LightningModule):
    """SVI of ``model`` with ``guide`` as a ``LightningModule`` (Adam, per-epoch LR schedule).

    Args:
        model, guide: a Pyro model ``model(x, y)`` and a guide whose parameters exist already
            (run the guide once on a batch, as :func:`fit_lightning` does).
        num_data: rows in the whole data set (the likelihood scale is ``num_data / M``).
        epochs: length of the LR schedule and of the KL warm-up bookkeeping.
        lr, lr_schedule, num_particles, elbo, kl_warmup: as in ``fit_svi``.
        rng_state: a ``pyro.util.get_rng_state()`` to restore when training starts (Lightning's
            DDP set-up re-seeds the RNG; restoring makes one and many processes draw alike).

    ``history`` collects the mean loss per row of each epoch, summed over all processes.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        *,
        num_data: int,
        epochs: int,
        lr: float = 1e-2,
        lr_schedule: str = "constant",
        num_particles: int = 1,
        elbo: str = "mean_field",
        kl_warmup: int | None = None,
        rng_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int(num_data, "num_data")
        kl_warmup = check_svi_options(
            epochs=epochs,
            lr=lr,
            lr_schedule=lr_schedule,
            num_particles=num_particles,
            elbo=elbo,
            kl_warmup=kl_warmup,
            guide=guide,
        )
        self.model = model
        self.guide = guide
        self.num_data = num_data
        self.epochs = epochs
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.kl_warmup = kl_warmup
        self.loss_fn = ELBOS[elbo](num_particles=num_particles).differentiable_loss
        self.history: list[float] = []
        self._sums: list[Tensor] = []
        self._rng_state = rng_state

    def on_fit_start(self) -> None:
        if self._rng_state is not None:
            pyro.util.set_rng_state(self._rng_state)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        beta = kl_weight(self.current_epoch, self.kl_warmup)
        with local_params():  # the model and guide own their parameters, in any loop
            loss = svi_loss(
                self.loss_fn, self.model, self.guide, x, y, num_data=self.num_data, beta=beta
            )
        self._sums.append(torch.stack([loss.detach() * x.shape[0], loss.new_tensor(x.shape[0])]))
        return loss

    def on_train_epoch_end(self) -> None:
        local = torch.stack(self._sums).sum(0) if self._sums else torch.zeros(2, device=self.device)
        self._sums.clear()
        total, rows = self.trainer.strategy.reduce(local, reduce_op="sum").tolist()
        mean = total / rows if rows else float("nan")
        if not math.isfinite(mean):
            raise FloatingPointError(
                f"the ELBO became {mean} in epoch {self.current_epoch}: lower lr or check the data"
            )
        self.history.append(mean)
        self.log("loss", mean, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        schedule = LR_SCHEDULES[self.lr_schedule](self.epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


@isolated
def fit_lightning(
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
    progress: bool = True,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str | Any = "auto",
    num_nodes: int = 1,
    trainer_options: dict[str, Any] | None = None,
    centered: Centring | None = None,
) -> FitResult:
    """Fit ``model`` by SVI with a Lightning ``Trainer``; return the shared ``FitResult``.

    Args:
        loader: a ``DataLoader`` of ``(x, y)`` batches; under DDP Lightning gives each process
            its share of every epoch (a ``DistributedSampler`` seeded with ``seed``), so the
            global batch is ``devices * num_nodes * loader.batch_size``.
        accelerator, devices, strategy, num_nodes: passed to ``lightning.Trainer``;
            ``strategy="ddp"`` runs DDP without re-broadcasting the network's constant buffers.
        trainer_options: further ``Trainer`` arguments (callbacks, precision, ...).

    The other arguments are those of :func:`~pyro_sparse_bnn.infer.streaming.fit_svi_loader`.
    The result lives on the CPU (Lightning moves the module back after training); ``result.x``
    and ``result.y`` are the loader's first batch. ``result.info`` adds ``world_size`` and
    ``global_rank`` to the history, ``num_data`` and ``seconds``.
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
    if trainer_options is not None and not isinstance(trainer_options, dict):
        raise TypeError(f"trainer_options must be a dict, got {type(trainer_options).__name__}")
    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)  # also seeds Lightning's distributed sampler
    model, guide, x, y = prepare_svi(
        model, loader, guide=guide, guide_options=guide_options, seed=seed, centered=centered
    )
    module = SVIModule(
        model,
        guide,
        num_data=num_data,
        epochs=epochs,
        lr=lr,
        lr_schedule=lr_schedule,
        num_particles=num_particles,
        elbo=elbo,
        kl_warmup=kl_warmup,
        rng_state=pyro.util.get_rng_state(),
    )
    if strategy == "ddp":
        strategy = DDPStrategy(**_no_buffer_sync())
    options = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": progress,
        **(trainer_options or {}),
    }
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        **options,
    )
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    model, guide = module.model, module.guide
    x, y = x.cpu(), y.cpu()
    draws = draw(model, guide, x[:1], num_posterior_samples)
    info = {
        "history": list(module.history),
        "seconds": seconds,
        "epochs_run": len(module.history),
        "num_data": num_data,
        "world_size": trainer.world_size,
        "global_rank": trainer.global_rank,
    }
    return FitResult(model, draws, method="svi", x=x, y=y, info=info, guide=guide)
