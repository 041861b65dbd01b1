"""The one training loop and the samplers' checkpoints: every method, interrupted and resumed
from its checkpoint, ends with exactly the numbers of an uninterrupted run, and only the work
after the checkpoint runs again."""

import pytest
import torch

import pyro_sparse_bnn as psb

X, Y = psb.datasets.load("iris", split="train")


def bnn():
    torch.manual_seed(0)
    return psb.SparseBNN(psb.mlp([4, 5, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())


RESUMABLE = {
    "svi": {"num_posterior_samples": 5},
    "svi_learned_centring": {"method": "svi", "centered": "learned", "num_posterior_samples": 5},
    "vadam": {"num_posterior_samples": 5},
    "vadam_ard": {"method": "vadam", "ard": True, "num_posterior_samples": 5},
    "vadam_minibatch_mean": {"method": "vadam", "per_example_grads": False, "num_particles": 2},
    "vadam_linear_decay": {"method": "vadam", "lr_schedule": "linear_decay"},
    "ivon": {"num_posterior_samples": 5},
    "ivon_ard": {"method": "ivon", "ard": True, "num_particles": 2},
    "l1": {},
    "l0": {"num_posterior_samples": 5},
}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resume_after_interruption_equals_uninterrupted_run(name, tmp_path):
    """Every epoch-based method shares one loop: interrupted after epoch 7 of 12 and resumed from
    its epoch-5 checkpoint, it ends with exactly the numbers of an uninterrupted run."""
    options = {"method": name, "epochs": 12, "batch_size": 32, "progress": False}
    options |= RESUMABLE[name]  # a "method" there names the fit behind a variant
    straight = psb.fit(bnn(), X, Y, **options)

    def interrupt(epoch, loss):
        if epoch == 7:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        psb.fit(bnn(), X, Y, checkpoint=ckpt, checkpoint_every=5, callback=interrupt, **options)
    epochs_run = []
    resumed = psb.fit(
        bnn(), X, Y, resume=ckpt, callback=lambda e, loss: epochs_run.append(e), **options
    )
    assert epochs_run == list(range(5, 12))  # only the epochs after the checkpoint ran
    assert resumed.info["history"] == straight.info["history"]
    assert len(straight.info["history"]) == 12
    assert straight.samples.keys() == resumed.samples.keys()
    for site, value in straight.samples.items():
        assert torch.equal(value, resumed.samples[site]), site
    if straight.guide is not None:
        for (key, a), (_, b) in zip(
            straight.guide.named_parameters(), resumed.guide.named_parameters(), strict=True
        ):
            assert torch.equal(a, b), key


def test_checkpoints_load_without_running_code(tmp_path):
    """A checkpoint holds tensors and plain values only: ``torch.load(weights_only=True)``."""
    ckpt = tmp_path / "c.pt"
    psb.fit(bnn(), X, Y, method="vadam", epochs=1, progress=False, checkpoint=ckpt,
            checkpoint_every=1)  # fmt: skip
    state = torch.load(ckpt, weights_only=True)["state"]
    assert state["epoch"] == 0 and set(state["generators"]) == {"order", "noise"}


def test_bad_checkpoint_arguments(tmp_path):
    with pytest.raises(ValueError, match="resume"):
        psb.fit(bnn(), X, Y, epochs=2, progress=False, resume=tmp_path / "none.pt")
    with pytest.raises(ValueError, match="checkpoint"):
        psb.fit(bnn(), X, Y, epochs=2, progress=False, checkpoint=tmp_path / "no" / "c.pt")
    with pytest.raises(ValueError, match="checkpoint_every"):
        psb.fit(bnn(), X, Y, epochs=2, progress=False, checkpoint_every=0)
    ckpt = tmp_path / "c.pt"
    psb.fit(bnn(), X, Y, epochs=2, progress=False, checkpoint=ckpt, checkpoint_every=1)
    other = psb.SparseBNN(psb.mlp([4, 9, 3]), psb.priors.Horseshoe(), psb.likelihoods.Categorical())
    with pytest.raises(ValueError, match="does not match"):
        psb.fit(other, X, Y, epochs=2, progress=False, resume=ckpt)
    with pytest.raises(ValueError, match="another run"):  # a 2-epoch fit's state, 4 asked
        psb.fit(bnn(), X, Y, epochs=4, progress=False, resume=ckpt)


def test_alrao_resumes_exactly(tmp_path):
    """fit_alrao runs on the same loop: an interrupted and resumed fit equals a straight one."""
    options = {"epochs": 6, "batch_size": 32, "progress": False}
    net = psb.mlp([4, 8, 3])
    straight = psb.alrao.fit_alrao(net, X, Y, **options)

    def interrupt(epoch, loss):
        if epoch == 4:
            raise KeyboardInterrupt

    ckpt = tmp_path / "alrao.pt"
    with pytest.raises(KeyboardInterrupt):
        psb.alrao.fit_alrao(net, X, Y, checkpoint=ckpt, checkpoint_every=3, callback=interrupt,
                            **options)  # fmt: skip
    epochs_run = []
    resumed = psb.alrao.fit_alrao(
        net, X, Y, resume=ckpt, callback=lambda e, loss: epochs_run.append(e), **options
    )
    assert epochs_run == [3, 4, 5]
    assert resumed.history == straight.history and not resumed.diverged
    for (key, a), (_, b) in zip(
        straight.network.state_dict().items(), resumed.network.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key


def test_nuts_resumes_from_its_checkpoint_to_the_same_draws(tmp_path, monkeypatch):
    """NUTS saves its state (positions, adaptation, draws so far, generators) every 10
    iterations; stopped at iteration 25 of 30 warm-up + 20 draws and resumed from iteration 20,
    it ends with exactly the draws of an uninterrupted run."""
    from pyro_sparse_bnn.infer.mcmc import Sampler

    options = {"method": "nuts", "num_chains": 2, "warmup": 30, "num_samples": 20}
    options |= {"progress": False, "checkpoint_every": 10, "max_tree_depth": 4}
    straight = psb.fit(bnn(), X, Y, **options)
    transition, calls = Sampler.transition, {"n": 0}

    def stop_at_25(self, *args):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return transition(self, *args)

    def count(self, *args):
        calls["n"] += 1
        return transition(self, *args)

    ckpt = tmp_path / "nuts.pt"
    with monkeypatch.context() as patch:
        patch.setattr(Sampler, "transition", stop_at_25)
        with pytest.raises(KeyboardInterrupt):
            psb.fit(bnn(), X, Y, checkpoint=ckpt, **options)
    assert torch.load(ckpt, weights_only=True)["state"]["t"] == 20
    calls["n"] = 0
    with monkeypatch.context() as patch:
        patch.setattr(Sampler, "transition", count)
        resumed = psb.fit(bnn(), X, Y, resume=ckpt, **options)
    assert calls["n"] == 30  # only the iterations after the checkpoint ran
    for site, value in straight.samples.items():
        assert torch.equal(value, resumed.samples[site]), site
    assert torch.equal(straight.info["step_size"], resumed.info["step_size"])
    with pytest.raises(ValueError, match="another run"):
        psb.fit(bnn(), X, Y, resume=ckpt, **(options | {"num_samples": 21}))


SGMCMC_RUNS = {
    "sgld_point_biases": ("sgld", {}),
    "sghmc_sa_magnitude": ("sghmc_sa", {"pruning": "magnitude"}),
    "sgld_sa_inclusion": ("sgld_sa", {"pruning": "inclusion"}),
}


@pytest.mark.parametrize("name", list(SGMCMC_RUNS))
def test_sgmcmc_resumes_from_its_checkpoint_to_the_same_draws(name, tmp_path):
    """SG-MCMC saves chains, SSGL state, fitted biases and their Adam state, masks, the generator
    and the draws so far; stopped after iteration 65 and resumed from iteration 60, it ends with
    exactly the draws of an uninterrupted run."""
    from pyro_sparse_bnn.infer.sgmcmc import InclusionPruning, MagnitudePruning

    method, extra = SGMCMC_RUNS[name]
    pruning = {"magnitude": MagnitudePruning(0.5, every=5), "inclusion": InclusionPruning()}
    options = {"method": method, "num_chains": 2, "warmup": 40, "num_samples": 20, "thin": 2}
    options |= {"batch_size": 32, "step_size": 1e-4, "progress": False, "checkpoint_every": 20}
    options |= {k: pruning[v] for k, v in extra.items()}
    straight = psb.fit(bnn(), X, Y, **options)

    def stop_after_65(k, lp):
        if k == 65:
            raise KeyboardInterrupt

    ckpt = tmp_path / "sg.pt"
    with pytest.raises(KeyboardInterrupt):
        psb.fit(bnn(), X, Y, checkpoint=ckpt, callback=stop_after_65, **options)
    iterations = []
    resumed = psb.fit(
        bnn(), X, Y, resume=ckpt, callback=lambda k, lp: iterations.append(k), **options
    )
    assert iterations == list(range(61, 81))  # only the iterations after the checkpoint ran
    for site, value in straight.samples.items():
        assert torch.equal(value, resumed.samples[site]), site
    for key, value in straight.sample_stats.items():
        assert torch.equal(value, resumed.sample_stats[key]), key
