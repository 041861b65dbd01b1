"""IVON in a Lightning loop: two DDP processes (gloo, CPU) follow a one-process run with the same
global batch and seed.

Run as a script (``python tests/test_ivon_lightning.py OUT``), this file is the DDP job itself:
Lightning starts the second process by running the same command again.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.ivon import IVON

pytest.importorskip("lightning", reason="PyTorch Lightning is not installed (extra 'scale')")

SEED, GLOBAL_BATCH, EPOCHS, PROCESSES = 3, 20, 2, 2
OPTIONS = {"lr": 0.1, "ess": 80, "beta2": 0.99}


def problem() -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """80 iris rows and a 4-5-3 network with fixed initial weights (the same in every process)."""
    X, y = psb.datasets.load("iris")
    torch.manual_seed(0)
    return X[:80], y[:80], psb.mlp([4, 5, 3])


def ivon_step(opt: IVON, net: nn.Module, x: torch.Tensor, y: torch.Tensor, backward) -> float:
    with opt.sampled_params(train=True):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        backward(loss)
    opt.step()
    return loss.item()


def ddp_job(out: str) -> None:
    """Each process gets ``GLOBAL_BATCH / PROCESSES`` rows a step; rank 0 saves the weights."""
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.automatic_optimization = False  # IVON samples weights around each backward

        def training_step(self, batch: tuple, batch_idx: int) -> None:
            opt = self.optimizers().optimizer
            ivon_step(opt, self.net, *batch, self.manual_backward)

        def configure_optimizers(self) -> IVON:
            return IVON(self.net.parameters(), **OPTIONS)

    torch.set_num_threads(1)
    X, y, net = problem()
    pl.seed_everything(SEED, verbose=False)  # the same weight noise in every process
    loader = DataLoader(TensorDataset(X, y), batch_size=GLOBAL_BATCH // PROCESSES, shuffle=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=PROCESSES,
        strategy="ddp",
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(net), loader)
    if trainer.global_rank == 0:
        torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, out)


@pytest.mark.slow
def test_two_ddp_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """DDP averages the two halves' gradients of each global batch during ``manual_backward``,
    inside IVON's sampled block, and both processes draw the same weight noise: the result is the
    one-process IVON run on the whole batch. Weights after 8 steps agree within 1e-5."""
    out = tmp_path / "ddp.pt"
    job = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)

    X, y, net = problem()
    dataset = TensorDataset(X, y)
    order = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=SEED)
    opt = IVON(net.parameters(), **OPTIONS)
    torch.manual_seed(SEED)
    for epoch in range(EPOCHS):
        order.set_epoch(epoch)
        for x, yb in DataLoader(dataset, batch_size=GLOBAL_BATCH, sampler=order):
            ivon_step(opt, net, x, yb, lambda loss: loss.backward())
    for name, value in net.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=0, atol=1e-5)
    assert not torch.equal(ddp["0.weight"], problem()[2].state_dict()["0.weight"])  # it moved


if __name__ == "__main__":
    ddp_job(sys.argv[1])
